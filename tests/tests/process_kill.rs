//! A server process killed (SIGKILL) in the middle of calls: the calls end
//! with `ConnectionLost`, never hang, and the next call fails to connect.
//!
//! The calls have no timeout: only the end of the connection ends them. On
//! tcp, unix and shm the kernel tells the client at once (a reset, the end
//! of the stream, the peer's death); QUIC runs over UDP, where the killed
//! server's host answers the client's next datagram with "port
//! unreachable", and where that signal is off (or the host is gone) the
//! client engine's keepalive (small here) ends the connection. Each test
//! prints how long the calls took to fail after the kill: a figure, not an
//! assertion.
//!
//! The server is this crate's `conformance_server` binary, one child process
//! per test, killed only by the test that started it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Instant;

use courier::{Engine, Error, TransportError};
use courier_conformance::{self as cc, guard, remove_stale_socket, Process};
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

/// The client's keepalive: probe after 200 ms of silence, give up 300 ms
/// later (no assertion compares a duration with it).
const SMALL_KEEPALIVE: &str = r#""keepalive": {"interval_ms": 200, "timeout_ms": 300}"#;

/// A client engine for `proto` with [`SMALL_KEEPALIVE`] and the transport
/// options `transport` (a JSON object).
async fn client(proto: &str, transport: &str) -> Engine {
    Engine::builder(proto)
        .client()
        .config_json(&format!(
            r#"{{{SMALL_KEEPALIVE}, "transport": {transport}}}"#
        ))
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} client engine: {e}"))
}

/// Three calls without a timeout blocked in `hang` when the server is
/// killed: each ends with `ConnectionLost`; a later call cannot connect.
/// Returns the reason the first call was given.
async fn server_killed_mid_call(proto: &str, transport: &str) -> String {
    const N: usize = 3;
    let (mut server, server_address) = start_server(proto).await;
    let client = client(proto, transport).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    assert_eq!(echo(&client, &address, "before").await.unwrap(), "before");

    let hang = client.remote::<String, String>("hang");
    let mut calls = JoinSet::new();
    for i in 0..N {
        let c = hang.on(&address);
        calls.spawn(async move { c.call(&format!("call {i}")).await });
    }
    for _ in 0..N {
        assert_eq!(server.expect_line("GOT hang").await, "");
    }
    server.child.kill().await.unwrap();
    let killed = Instant::now();
    let status = server.wait().await;
    assert_eq!(status.signal(), Some(9), "{status:?}");

    let mut reasons = Vec::new();
    // The hang guard (30 s) turns a call that never ends into a failure.
    while let Some(joined) = guard("calls to a killed server", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        match err {
            Error::ConnectionLost { address, reason } => {
                assert_eq!(address, server_address);
                reasons.push(reason);
            }
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    }
    println!(
        "{proto} {transport}: {N} calls without timeout failed {:?} after the kill: {}",
        killed.elapsed(),
        reasons[0]
    );
    let err = echo(&client, &address, "after").await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Connect { .. })),
        "{err:?}"
    );
    remove_stale_socket(&server_address);
    reasons.swap_remove(0)
}

/// QUIC with the "port unreachable" signal off: the killed server is found
/// out by the client's keepalive.
#[tokio::test(flavor = "multi_thread")]
async fn quic_server_killed_is_found_by_keepalive_without_port_unreachable() {
    let reason = server_killed_mid_call("quic", r#"{"port_unreachable": false}"#).await;
    assert!(
        reason.starts_with("no answer to a keepalive probe within 300 ms"),
        "{reason}"
    );
}

/// QUIC as configured by default: the killed server's host answers "port
/// unreachable", and the calls fail saying so.
#[tokio::test(flavor = "multi_thread")]
async fn quic_server_killed_is_found_by_port_unreachable() {
    let reason = server_killed_mid_call("quic", "{}").await;
    assert!(reason.contains("port unreachable"), "{reason}");
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
                super::server_killed_mid_call(PROTO, "{}").await;
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
