//! A bounded soak: many RPCs on every protocol, mixed sizes, 16 in flight,
//! with the process's resident memory and open file descriptors read before
//! and after.
//!
//! One test, alone in its binary, so the descriptor count is this test's.
//! Every protocol first runs a warm-up round (engines built, calls made,
//! engines finalized and dropped), so what exists once per process
//! (runtimes' epoll and eventfds, quic's crypto provider, allocator arenas)
//! is there before the baseline is taken. Then the soak proper builds fresh
//! engines per protocol, makes the calls, finalizes them. Asserted:
//!
//! * open file descriptors return to the baseline (every socket, eventfd,
//!   memfd and listener the soak made is closed). The check is "not above
//!   the baseline" rather than "equal": a few descriptors of the warm-up's
//!   last engines may still be closing when the baseline is read (they
//!   close as the runtime gets to their tasks), so the count can end a
//!   little below it; a leak of even one descriptor per connection ends
//!   above;
//! * resident memory after the soak is within [`RSS_SLACK`] of the
//!   baseline. That bound is a leak detector, not a speed limit: it holds
//!   however fast or slow the machine is. The allocator keeps some freed
//!   pages, and the largest payload (1 MiB) times the calls in flight, both
//!   ways, is about 32 MiB of buffers that may stay mapped; a leak of a few
//!   hundred bytes per call crosses the bound in the long run.
//!
//! Calls per protocol: `COURIER_SOAK_CALLS` (default 2,000: seconds, what CI
//! runs). The long form is 250,000 per protocol, a million in all:
//!
//! ```sh
//! COURIER_SOAK_CALLS=250000 cargo test --release -p courier-conformance --test soak -- --nocapture
//! ```
//!
//! The figures are printed (`SOAK ...` lines) for `docs/reliability.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use courier::{Engine, Handle, RpcOptions};
use courier_conformance::{self as cc, guard, until, PROTOCOLS};
use tokio::task::JoinSet;

const IN_FLIGHT: usize = 16;
const RSS_SLACK_MIB: u64 = 128;
/// The documented bound on memory growth (see the module documentation).
const RSS_SLACK: u64 = RSS_SLACK_MIB << 20;

/// Payload sizes, cycled; every 997th call instead carries 1 MiB.
const SIZES: &[usize] = &[0, 64, 1024, 16 << 10, 64 << 10, 200 << 10];

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib << 10
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn size_of_call(i: usize) -> usize {
    if i % 997 == 996 {
        1 << 20
    } else {
        SIZES[i % SIZES.len()]
    }
}

/// Builds a server and a client for `proto`, makes `calls` echo calls with
/// mixed sizes (IN_FLIGHT at a time, each answer checked), finalizes both.
async fn round(proto: &str, calls: usize) {
    let server = Engine::builder(proto)
        .config_json(r#"{"max_message_size": 4194304}"#)
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
    let client = Engine::builder(proto)
        .client()
        .config_json(r#"{"max_message_size": 4194304}"#)
        .build()
        .await
        .unwrap();
    let address = cc::lookup(&client, &server).await;
    let echo = Arc::new(client.remote_raw("echo"));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (echo, address, next) = (echo.clone(), address.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let payload = cc::pattern(size_of_call(i), i as u8);
                let answer = guard("a soak call", echo.on(&address).call(&payload))
                    .await
                    .unwrap();
                assert_eq!(&answer[..], &payload[..], "call {i}");
            }
        });
    }
    // Each call has its own hang guard; the whole round takes as long as
    // the number of calls asks for.
    while let Some(w) = workers.join_next().await {
        w.unwrap();
    }
    drop(address);
    guard("client finalize", client.finalize()).await;
    guard("server finalize", server.finalize()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_every_protocol() {
    let calls: usize = std::env::var("COURIER_SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    for proto in PROTOCOLS {
        round(proto, 200).await;
    }
    let fds = open_fds();
    let rss = rss_bytes();
    println!(
        "SOAK baseline after warm-up: rss {} MiB, open fds {fds}",
        rss >> 20
    );
    let start = Instant::now();
    for proto in PROTOCOLS {
        let t = Instant::now();
        round(proto, calls).await;
        println!(
            "SOAK {proto}: {calls} calls in {:.1} s, rss now {} MiB, open fds now {}",
            t.elapsed().as_secs_f64(),
            rss_bytes() >> 20,
            open_fds()
        );
    }
    until("every descriptor of the soak to be closed", || {
        open_fds() <= fds
    })
    .await;
    let after = rss_bytes();
    println!(
        "SOAK total: {} calls over {} protocols in {:.1} s; rss {} -> {} MiB; open fds {fds} -> {}",
        calls * PROTOCOLS.len(),
        PROTOCOLS.len(),
        start.elapsed().as_secs_f64(),
        rss >> 20,
        after >> 20,
        open_fds()
    );
    assert!(open_fds() <= fds, "descriptors left open by the soak");
    assert!(
        after <= rss + RSS_SLACK,
        "resident memory grew from {} MiB to {} MiB, over the {RSS_SLACK_MIB} MiB allowed",
        rss >> 20,
        after >> 20
    );
}
