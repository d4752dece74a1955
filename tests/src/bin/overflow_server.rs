//! `overflow_server <PROTOCOL> <MAX_MESSAGE_BYTES>`: a Courier server for
//! the payload-of-any-size process tests (`tests/tests/overflow_process.rs`).
//!
//! It registers `len` (raw): the arguments arrive by the bulk path when
//! they are over the largest message, and the handler answers, postcard
//! encoded, `(length, sample, peak_rss_bytes, pull_mib_per_s)`: the
//! payload's length; the wrapping sum of its bytes at every MiB boundary
//! (a check that costs nothing on 4 GiB); this process's peak resident set
//! (`VmHWM` of `/proc/self/status`) once the payload is in memory; and the
//! MiB/s of the pulls this engine made. It prints `ADDRESS <address>`,
//! serves until a remote shutdown, and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::{Bytes, Engine, Handle, RpcOptions};

/// `VmHWM` (the peak resident set) of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(protocol), Some(max)) = (args.next(), args.next()) else {
        eprintln!("usage: overflow_server <PROTOCOL> <MAX_MESSAGE_BYTES>");
        std::process::exit(2);
    };
    let max: usize = max.parse().expect("MAX_MESSAGE_BYTES: a number of bytes");
    let engine = Engine::builder(&protocol)
        .max_message_size(max)
        .build()
        .await
        .unwrap();
    engine.enable_remote_shutdown();
    let e = engine.clone();
    engine
        .register_raw("len", RpcOptions::default(), move |h: Handle, p: Bytes| {
            let e = e.clone();
            async move {
                let sample = p
                    .iter()
                    .step_by(1 << 20)
                    .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
                let answer = (p.len() as u64, sample, peak_rss(), e.stats().bulk.mib_per_s);
                drop(p);
                h.respond(&answer).await
            }
        })
        .unwrap();
    println!("ADDRESS {}", engine.address());
    engine.wait_for_finalize().await;
}
