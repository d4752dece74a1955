//! A client process killed (SIGKILL) in the middle of a call: the server
//! frees the connection (its file descriptors and, for shm, its shared
//! mapping) and goes on serving other clients.
//!
//! One test runs the protocols one after another, alone in its process, so
//! that counting this process's file descriptors means something.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use courier::{Engine, Handle};
use courier_conformance::{self as cc, guard, until, Process, PROTOCOLS};
use tokio::sync::{mpsc, Notify};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn shm_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}

fn client_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_conformance_server"))
}

/// Starts a client process that calls `hang` at `address`; returns once the
/// server's handler has the request.
async fn client_mid_call(address: &str, arrived: &mut mpsc::UnboundedReceiver<()>) -> Process {
    let mut client = Process::spawn(client_binary(), &["--client", address]);
    assert_eq!(client.expect_line("CALLING").await, "");
    guard("the request reaching the handler", arrived.recv())
        .await
        .unwrap();
    client
}

async fn kill(mut client: Process) {
    client.child.kill().await.unwrap();
    client.wait().await;
}

async fn client_killed_mid_call(proto: &str) {
    // A quic server notices a vanished client by its idle timeout.
    let json = if proto == "quic" {
        r#"{"transport": {"idle_timeout_ms": 300}}"#
    } else {
        "{}"
    };
    let server = Engine::builder(proto)
        .config_json(json)
        .build()
        .await
        .unwrap();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let never = Arc::new(Notify::new());
    let n = never.clone();
    server
        .register("hang", move |h: Handle, _: String| {
            let arrived_tx = arrived_tx.clone();
            let never = n.clone();
            async move {
                let _ = arrived_tx.send(());
                never.notified().await;
                drop(h);
            }
        })
        .unwrap();
    server
        .register(
            "echo",
            |h: Handle, s: String| async move { h.respond(&s).await },
        )
        .unwrap();
    let address = server.address().to_string();

    // What exists once per process (tokio's child-process signal pipe) is
    // created by a first child before the baseline is taken.
    tokio::process::Command::new("true").status().await.unwrap();
    let fds = open_fds();
    let maps = shm_mappings();

    let client = client_mid_call(&address, &mut arrived).await;
    if proto != "quic" {
        // (quic connections share the endpoint's one socket)
        assert!(
            open_fds() > fds,
            "{proto}: no descriptor for the client's connection"
        );
    }
    if proto == "shm" {
        assert!(
            shm_mappings() > maps,
            "shm: no mapping for the client's segment"
        );
    }
    kill(client).await;
    until(
        &format!("{proto}: the killed client's connection to be freed"),
        || open_fds() <= fds && shm_mappings() <= maps,
    )
    .await;

    // Other clients are served as before.
    let other = cc::client(proto).await;
    let a = guard("lookup", other.lookup(&address)).await.unwrap();
    let echo = other.remote::<String, String>("echo");
    assert_eq!(
        guard("echo", echo.on(&a).call(&"still here".to_owned()))
            .await
            .unwrap(),
        "still here"
    );
    never.notify_waiters();
    drop(other);
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_killed_mid_call_on_every_protocol() {
    for proto in PROTOCOLS {
        client_killed_mid_call(proto).await;
    }
}
