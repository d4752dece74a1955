//! Arguments far over the largest message, between two processes
//! (`docs/bulk.md`, "Payloads of any size"): this test is the client, the
//! crate's `overflow_server` binary the server (one child per test, shut
//! down remotely at the end). The client sends one raw argument by the
//! bulk path, without a copy (`call_bytes`); the server pulls it straight
//! into its final buffer and answers its length, a sample of its bytes,
//! and its own peak resident set (`VmHWM`), which must stay within the
//! payload + 64 MiB: no second copy of the payload anywhere on the
//! receiving side.
//!
//! The 96 MiB variant (1 MiB messages) runs always, over shm and tcp. The
//! 4 GiB one moves 4 GiB each way of memory on both sides and is ignored
//! by `cargo test`; `.ci/run` runs it, in release mode, and prints its
//! figures (time, MiB/s, the server's peak RSS) on a line starting with
//! `OVERFLOW`, as `docs/benchmarks.md` quotes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use courier::{Bytes, Engine};
use courier_conformance::{self as cc, guard, Process};

const MIB: usize = 1 << 20;

/// What the server may hold beyond the payload itself.
const RSS_ALLOWANCE: u64 = 64 << 20;

/// Runs one big call: a `size`-byte raw argument from this process to an
/// `overflow_server` of `proto` whose largest message is `max_message`,
/// over messages of that size on this side too, bounded by `bound` (a
/// hang guard, not a timing assertion).
async fn big_argument(proto: &str, size: usize, max_message: usize, bound: Duration) {
    let mut server = Process::spawn(
        Path::new(env!("CARGO_BIN_EXE_overflow_server")),
        &[proto, &max_message.to_string()],
    );
    let server_address = server.expect_line("ADDRESS ").await;
    let client = Engine::builder(proto)
        .client()
        .max_message_size(max_message)
        .build()
        .await
        .unwrap();
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    // A payload the server checks cheaply: one byte per MiB says which.
    let mut payload = vec![0x5a_u8; size];
    let mut expected = 0u64;
    for (i, at) in (0..size).step_by(MIB).enumerate() {
        payload[at] = i as u8;
        expected = expected.wrapping_add(u64::from(i as u8));
    }
    let payload = Bytes::from(payload);
    let len = client.remote_raw("len");
    let started = Instant::now();
    let answer = match tokio::time::timeout(bound, len.on(&address).call_bytes(payload)).await {
        Ok(answer) => answer.unwrap(),
        Err(_) => panic!("hang guard: {size} bytes over {proto} did not arrive within {bound:?}"),
    };
    let took = started.elapsed();
    let (got, sample, peak_rss, pull_mib_per_s): (u64, u64, u64, f64) =
        postcard::from_bytes(&answer).unwrap();
    assert_eq!(got, size as u64);
    assert_eq!(sample, expected, "the bytes arrived altered");
    let mib = size as f64 / MIB as f64;
    println!(
        "OVERFLOW {proto}: {size} bytes ({mib:.0} MiB) in {:.2} s, {:.0} MiB/s end to end \
         ({pull_mib_per_s:.0} MiB/s the pull itself); server peak RSS {} MiB \
         ({:.1} MiB over the payload)",
        took.as_secs_f64(),
        mib / took.as_secs_f64(),
        peak_rss >> 20,
        (peak_rss as f64 - size as f64) / MIB as f64,
    );
    assert!(
        peak_rss <= size as u64 + RSS_ALLOWANCE,
        "the server's peak RSS is {peak_rss} bytes for a payload of {size}: more than the \
         payload + {} MiB",
        RSS_ALLOWANCE >> 20
    );
    let bulk = client.stats().bulk;
    assert_eq!((bulk.payloads_sent, bulk.regions), (1, 0));
    guard("remote shutdown", address.shutdown()).await.unwrap();
    let status = server.wait().await;
    let stderr = server.take_stderr().await;
    assert!(
        status.success(),
        "overflow_server: {status:?}; stderr: {stderr}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_of_96_mib_shm() {
    big_argument("shm", 96 * MIB, MIB, cc::HANG_GUARD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_of_96_mib_tcp() {
    big_argument("tcp", 96 * MIB, MIB, cc::HANG_GUARD).await;
}

/// 4 GiB over shm, then over tcp (one after the other: each holds 4 GiB
/// in both processes), with the default 64 MiB messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves 4 GiB; run by .ci/run"]
async fn argument_of_4_gib_shm_and_tcp() {
    let bound = Duration::from_secs(600);
    #[cfg(target_os = "linux")]
    big_argument("shm", 4 << 30, courier::DEFAULT_MAX_MESSAGE_SIZE, bound).await;
    big_argument("tcp", 4 << 30, courier::DEFAULT_MAX_MESSAGE_SIZE, bound).await;
}
