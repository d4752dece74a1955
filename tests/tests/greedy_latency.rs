//! A benchmark, not a pass/fail test (it is `#[ignore]`d, and asserts only
//! that calls succeed): the latency a well-behaved client sees while greedy
//! peers are active, against the same client alone. The figures go in
//! `docs/reliability.md`.
//!
//! ```sh
//! cargo test --release -p courier-conformance --test greedy_latency -- --ignored --nocapture
//! ```
//!
//! For each stream protocol, 3,000 sequential echo calls of 64 bytes from one
//! client, with:
//!
//! * `alone`: nothing else;
//! * `flood`: a raw peer that wrote 100,000 requests to a handler that never
//!   answers and reads nothing (held at `max_in_flight_per_connection`);
//! * `silent`: 500 connections that never send a byte (and a Hello timeout
//!   long enough that they stay);
//! * `one-way`: a raw peer streaming one-way requests as fast as it can.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::frame::{rpc_id, Header, Kind, FLAG_NO_RESPONSE};
use courier::{Engine, Handle, RpcOptions};
use courier_conformance::{self as cc, length_prefixed, preamble_and_hello, raw_connect};
use tokio::io::AsyncWriteExt;

const CALLS: usize = 3_000;

fn request(name: &str, seq: u64, flags: u8) -> Vec<u8> {
    let mut h = Header::new(Kind::Request);
    h.rpc = rpc_id(name);
    h.seq = seq;
    h.flags = flags;
    length_prefixed(&h.encode(), b"x")
}

async fn measure(client: &Engine, address: &courier::Address) -> (Duration, Duration) {
    let echo = client.remote_raw("echo");
    let payload = vec![1u8; 64];
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        echo.on(address).call(&payload).await.unwrap();
        samples.push(t.elapsed());
    }
    samples.sort();
    (samples[CALLS / 2], samples[CALLS * 99 / 100])
}

async fn scenario(proto: &str, name: &str) {
    let server = Engine::builder(proto)
        .config_json(r#"{"timeouts": {"hello_ms": 600000}, "max_connections": 2048}"#)
        .build()
        .await
        .unwrap();
    server
        .register_raw(
            "echo",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move { h.respond_raw(&p).await },
        )
        .unwrap();
    server
        .register_raw("never", RpcOptions::default(), |h: Handle, _p| async move {
            std::future::pending::<()>().await;
            drop(h);
        })
        .unwrap();
    server
        .register_raw(
            "sink",
            RpcOptions::default().disable_response(),
            |_h: Handle, _p| async move {},
        )
        .unwrap();
    let addr = server.address().to_string();
    let mut keep = Vec::new();
    let mut streamer = None;
    match name {
        "flood" => {
            let mut raw = raw_connect(&addr).await.unwrap();
            let mut bytes = preamble_and_hello();
            for seq in 1..=100_000 {
                bytes.extend_from_slice(&request("never", seq, 0));
            }
            streamer = Some(tokio::spawn(async move {
                let _ = raw.write_all(&bytes).await;
                std::future::pending::<()>().await;
            }));
        }
        "silent" => {
            for _ in 0..500 {
                keep.push(raw_connect(&addr).await.unwrap());
            }
        }
        "one-way" => {
            let mut raw = raw_connect(&addr).await.unwrap();
            streamer = Some(tokio::spawn(async move {
                raw.write_all(&preamble_and_hello()).await.unwrap();
                let mut seq = 1;
                loop {
                    let mut chunk = Vec::new();
                    for _ in 0..1000 {
                        chunk.extend_from_slice(&request("sink", seq, FLAG_NO_RESPONSE));
                        seq += 1;
                    }
                    if raw.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }));
        }
        _ => {}
    }
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    let (p50, p99) = measure(&client, &address).await;
    println!(
        "LATENCY {proto} {name:8} p50 {:>7.1} us  p99 {:>7.1} us",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    if let Some(s) = streamer {
        s.abort();
    }
    drop(keep);
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture, figures in docs/reliability.md"]
async fn latency_of_others_under_greedy_peers() {
    for proto in ["tcp", "unix"] {
        for name in ["alone", "flood", "silent", "one-way"] {
            scenario(proto, name).await;
        }
    }
}
