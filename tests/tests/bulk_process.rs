//! A peer process killed (SIGKILL) in the middle of a bulk transfer, on
//! every protocol: the transfer ends with `ConnectionLost`, never hangs.
//!
//! The peer is this crate's `bulk_server` binary, one child process per
//! test, killed only by the test that started it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use courier::{Bulk, BulkBuffer, BulkMode, BulkOp, Error};
use courier_conformance::{
    self as cc, example_path, guard, pattern, remove_stale_socket, run_to_end, Process,
};

async fn start_server(proto: &str) -> (Process, String) {
    let mut server = Process::spawn(Path::new(env!("CARGO_BIN_EXE_bulk_server")), &[proto]);
    let address = server.expect_line("ADDRESS ").await;
    assert!(address.starts_with(&format!("{proto}://")), "{address}");
    (server, address)
}

async fn kill(server: &mut Process) {
    server.child.kill().await.unwrap();
    let status = server.wait().await;
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

fn assert_lost(err: &Error, server_address: &str) {
    match err {
        Error::ConnectionLost { address, .. } => assert_eq!(address, server_address),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}

/// The exposing side dies while this side pulls from it: the pull (its
/// server is stuck serving the first chunk) ends with `ConnectionLost`.
async fn exposer_killed_mid_pull(proto: &str) {
    let (mut server, server_address) = start_server(proto).await;
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    let get = client.remote::<(), Bulk>("stuck_region");
    let remote = guard("stuck_region", get.on(&address).call(&()))
        .await
        .unwrap();
    let len = remote.len();
    let local = client
        .expose([BulkBuffer::new(len)], BulkMode::WriteOnly)
        .unwrap();
    let req = client
        .transfer(BulkOp::Pull, &address, &remote, &local)
        .start();
    assert_eq!(server.expect_line("SERVING").await, "");
    assert!(!req.test(), "the pull cannot have finished");
    kill(&mut server).await;
    let err = guard("pull from a killed peer", req.wait())
        .await
        .unwrap_err();
    assert_lost(&err, &server_address);
    remove_stale_socket(&server_address);
}

/// The pulling side dies while it pulls from this side's region: the RPC
/// that made it pull ends with `ConnectionLost`, and this side's region
/// is intact and still usable.
async fn puller_killed_mid_pull(proto: &str) {
    let (mut server, server_address) = start_server(proto).await;
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    let data = pattern(4 << 20, 5);
    let region = BulkBuffer::from(data.clone());
    let bulk = client.expose([region.clone()], BulkMode::ReadOnly).unwrap();
    let pull_loop = client
        .remote::<Bulk, ()>("pull_loop")
        .timeout(cc::HANG_GUARD);
    let call = pull_loop.on(&address);
    let handle = tokio::spawn(async move { call.call(&bulk).await });
    assert_eq!(server.expect_line("PULLED").await, "");
    kill(&mut server).await;
    let err = guard("call", handle).await.unwrap().unwrap_err();
    assert_lost(&err, &server_address);
    assert!(region.to_vec() == data);
    remove_stale_socket(&server_address);
}

/// The `blob_store` example as two processes: the client puts and gets
/// blobs of 0 B, 23 B, 1 MiB and 8 MiB (checking every byte), then shuts
/// the server down; both exit 0.
async fn blob_store_two_processes(proto: &str) {
    let mut server = Process::spawn(&example_path("blob_store"), &["server", proto]);
    let address = server.expect_line("blob_store serving at ").await;
    assert!(address.starts_with(&format!("{proto}://")), "{address}");
    let (status, stdout, stderr) = run_to_end(
        &example_path("blob_store"),
        &["client", &address, "0", "23", "1M", "8M"],
    )
    .await;
    assert!(
        status.success(),
        "blob_store client: {status:?}; stderr: {stderr}"
    );
    let sizes: Vec<&str> = stdout
        .lines()
        .map(|l| l.split(" bytes: put ").next().unwrap())
        .collect();
    assert_eq!(sizes, ["0", "23", "1048576", "8388608"], "{stdout}");
    let status = server.wait().await;
    let stderr = server.take_stderr().await;
    assert!(
        status.success(),
        "blob_store server: {status:?}; stderr: {stderr}"
    );
}

macro_rules! process_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exposer_killed_mid_pull() {
                super::exposer_killed_mid_pull(stringify!($proto)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn puller_killed_mid_pull() {
                super::puller_killed_mid_pull(stringify!($proto)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn blob_store_two_processes() {
                super::blob_store_two_processes(stringify!($proto)).await
            }
        }
    )*};
}

courier_conformance::for_each_protocol!(process_tests);
