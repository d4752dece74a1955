//! A stream whose peer process is killed (SIGKILL) mid-stream, on every
//! protocol, both ways: the side that stays releases the stream's buffers,
//! its flow, and its tasks — counted, before and after — and goes on
//! serving.
//!
//! * The caller dies: the server's handler, reading the request stream,
//!   ends; the server holds no stream, no buffered byte, no request in
//!   flight, and its runtime runs as many tasks as before the caller came.
//! * The server dies: the caller's read fails with `ConnectionLost`; once
//!   it drops its call it holds no stream and no buffered byte.
//!
//! One test runs the protocols one after another, alone in its process,
//! so that counting this runtime's tasks means something.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use courier::{Bytes, Engine, Error, Handle, RpcOptions};
use courier_conformance::{guard, remove_stale_socket, until, Process, PROTOCOLS};
use courier_testkit::streams::clean;
use tokio::sync::mpsc;

fn peer_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_conformance_server"))
}

/// The engines' settings: a quic side notices a vanished peer by its idle
/// timeout, made short here.
fn config(proto: &str) -> &'static str {
    if proto == "quic" {
        r#"{"transport": {"idle_timeout_ms": 300}}"#
    } else {
        "{}"
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn caller_killed_mid_stream(proto: &str) {
    let server = Engine::builder(proto)
        .config_json(config(proto))
        .build()
        .await
        .unwrap();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<String>();
    server
        .register_raw("sink", RpcOptions::default(), move |h: Handle, _: Bytes| {
            let ended_tx = ended_tx.clone();
            async move {
                let why = loop {
                    match h.recv_item_raw().await {
                        Ok(Some(item)) => assert_eq!(item.len(), 4096),
                        Ok(None) => break "a clean end".to_owned(),
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = ended_tx.send(why);
                Ok::<(), Error>(())
            }
        })
        .unwrap();
    let address = server.address().to_string();
    // What exists once per process (tokio's child-process machinery) is
    // created by a first child before the baseline is taken.
    tokio::process::Command::new("true").status().await.unwrap();
    let tasks = alive_tasks();

    let mut client = Process::spawn(peer_binary(), &["--stream-client", &address]);
    assert_eq!(client.expect_line("STREAMING").await, "");
    assert!(server.stats().streams.open >= 1, "{proto}: no stream open");
    client.child.kill().await.unwrap();
    client.wait().await;

    // The handler, waiting for the next item, sees the caller go (or is
    // cancelled with its connection: then it never reports).
    until(&format!("{proto}: the stream's buffers released"), || {
        clean(&server.stats())
    })
    .await;
    if let Ok(why) = ended.try_recv() {
        assert_ne!(
            why, "a clean end",
            "{proto}: a killed caller is not a clean end"
        );
    }
    until(&format!("{proto}: the stream's tasks ended"), || {
        alive_tasks() <= tasks
    })
    .await;
    server.finalize().await;
}

async fn server_killed_mid_stream(proto: &str) {
    let mut server = Process::spawn(peer_binary(), &[proto]);
    let address = server.expect_line("ADDRESS ").await;
    let client = Engine::builder(proto)
        .client()
        .config_json(config(proto))
        .build()
        .await
        .unwrap();
    let a = guard("lookup", client.lookup(&address)).await.unwrap();
    // `drip` takes `()`: its postcard encoding is no bytes at all.
    let mut raw = guard("open", client.remote_raw("drip").on(&a).stream(&[]))
        .await
        .unwrap();
    for _ in 0..10 {
        let item = guard("an item", raw.recv()).await.unwrap().unwrap();
        assert_eq!(item.len(), 4096);
    }
    server.child.kill().await.unwrap();
    server.wait().await;
    // A killed unix server leaves its socket behind: the test removes it.
    remove_stale_socket(&address);
    let err = guard("the read fails", async {
        loop {
            match raw.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("{proto}: a killed server ended its stream cleanly"),
                Err(e) => return e,
            }
        }
    })
    .await;
    assert!(
        matches!(err, Error::ConnectionLost { .. }),
        "{proto}: expected ConnectionLost, got {err:?}"
    );
    drop(raw);
    until(&format!("{proto}: the caller's streams released"), || {
        let s = client.stats();
        s.streams.open == 0 && s.streams.buffered_bytes == 0
    })
    .await;
    client.finalize().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_peer_killed_on_every_protocol() {
    for proto in PROTOCOLS {
        caller_killed_mid_stream(proto).await;
        server_killed_mid_stream(proto).await;
    }
}
