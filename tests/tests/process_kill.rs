//! A server process killed (SIGKILL) in the middle of calls: the calls end
//! with `ConnectionLost`, never hang, and the next call fails to connect.
//!
//! The server is this crate's `conformance_server` binary, one child process
//! per test, killed only by the test that started it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;

use courier::{Engine, Error, TransportError};
use courier_conformance::{self as cc, guard, remove_stale_socket, Process, HANG_GUARD};
use tokio::task::JoinSet;

fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_conformance_server"))
}

/// Starts `conformance_server <proto>`; returns it and its address.
async fn start_server(proto: &str) -> (Process, String) {
    let mut server = Process::spawn(server_binary(), &[proto]);
    let address = server.expect_line("ADDRESS ").await;
    assert!(address.starts_with(&format!("{proto}://")), "{address}");
    (server, address)
}

async fn echo(client: &Engine, address: &courier::Address, text: &str) -> courier::Result<String> {
    let f = client.remote::<String, String>("echo");
    guard("echo", f.on(address).call(&text.to_owned())).await
}

/// Three calls blocked in `hang` when the server is killed: each ends with
/// `ConnectionLost` (within its generous timeout: not a `Timeout`); a later
/// call cannot connect.
async fn server_killed_mid_call(proto: &str) {
    const N: usize = 3;
    let (mut server, server_address) = start_server(proto).await;
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    assert_eq!(echo(&client, &address, "before").await.unwrap(), "before");

    let hang = client.remote::<String, String>("hang").timeout(HANG_GUARD);
    let mut calls = JoinSet::new();
    for i in 0..N {
        let c = hang.on(&address);
        calls.spawn(async move { c.call(&format!("call {i}")).await });
    }
    for _ in 0..N {
        assert_eq!(server.expect_line("GOT hang").await, "");
    }
    server.child.kill().await.unwrap();
    let status = server.wait().await;
    assert_eq!(status.signal(), Some(9), "{status:?}");

    while let Some(joined) = guard("calls to a killed server", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        match &err {
            Error::ConnectionLost { address, .. } => assert_eq!(address, &server_address),
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    }
    let err = echo(&client, &address, "after").await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Connect { .. })),
        "{err:?}"
    );
    remove_stale_socket(&server_address);
}

/// A server killed while no call is in flight: the next call fails (the
/// connection is lost, or reconnecting is refused), it does not hang.
async fn server_killed_while_idle(proto: &str) {
    let (mut server, server_address) = start_server(proto).await;
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    assert_eq!(echo(&client, &address, "before").await.unwrap(), "before");
    server.child.kill().await.unwrap();
    server.wait().await;
    let err = echo(&client, &address, "after").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost { .. } | Error::Transport(TransportError::Connect { .. })
        ),
        "{err:?}"
    );
    remove_stale_socket(&server_address);
}

/// Control: the same server shut down remotely exits 0 on its own.
async fn server_shut_down_exits_cleanly(proto: &str) {
    let (mut server, server_address) = start_server(proto).await;
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    assert_eq!(echo(&client, &address, "hi").await.unwrap(), "hi");
    guard("shutdown", address.shutdown()).await.unwrap();
    let status = server.wait().await;
    let stderr = server.take_stderr().await;
    assert!(status.success(), "{status:?}; stderr: {stderr}");
}

macro_rules! process_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread")]
            async fn server_killed_mid_call() {
                super::server_killed_mid_call(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn server_killed_while_idle() {
                super::server_killed_while_idle(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn server_shut_down_exits_cleanly() {
                super::server_shut_down_exits_cleanly(PROTO).await;
            }
        }
    )*};
}

courier_conformance::for_each_protocol!(process_tests);
