//! Across processes: a child `shm_echo` serves, this process connects.

#![cfg(target_os = "linux")] // the shm transport is Linux-only
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use courier_shm::ShmTransport;
use courier_transport::{Address, Connection, MessageReceiver, MessageSender, Transport};

/// Kills (SIGKILL) and reaps the child when dropped, so a failing test
/// leaves no process behind.
struct Echo(Child);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `shm_echo` and returns it with the address it printed.
async fn start_echo(args: &[&str]) -> (Echo, Address) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shm_echo"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shm_echo");
    let stdout = child.stdout.take().expect("piped stdout");
    let echo = Echo(child);
    let line = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map(|_| line)
        }),
    )
    .await
    .expect("hang guard: shm_echo printed no address")
    .unwrap()
    .unwrap();
    let addr: Address = line.trim().parse().unwrap();
    (echo, addr)
}

async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_with_a_child_process_then_survives_its_death() {
    let (mut echo, addr) = start_echo(&[]).await;
    assert!(addr.to_string().starts_with("shm://courier-"), "{addr}");
    let t = ShmTransport::new(64 << 20);
    let (mut tx, mut rx) = guard("connect", t.connect(&addr)).await.unwrap().split();
    for i in 0..200u32 {
        let m = i.to_le_bytes().repeat(1 + (i as usize % 50));
        tx.send(&[&m]).await.unwrap();
        assert_eq!(guard("echo", rx.recv()).await.unwrap().unwrap()[..], m[..]);
    }
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    tx.send(&[&big]).await.unwrap();
    assert!(guard("echo 3 MiB", rx.recv()).await.unwrap().unwrap()[..] == big[..]);

    // A 16 MiB message through 1 MiB rings: when our send returns, the child
    // has taken all but the last ring-full and is receiving or already
    // echoing it (its send blocked, since we do not receive yet).
    let huge = vec![0x5au8; 16 << 20];
    guard("send 16 MiB", tx.send(&[&huge])).await.unwrap();
    echo.0.kill().unwrap();
    echo.0.wait().unwrap();
    // What it echoed is at most a partial message: recv must fail, not hang.
    let err = guard("recv after the child's death", rx.recv())
        .await
        .expect_err("a killed peer's partial message must not be delivered");
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(
        text.contains("hung up") || text.contains("bytes of a message"),
        "{text}"
    );
    let err = guard("send after the child's death", tx.send(&[b"anyone?"]))
        .await
        .unwrap_err();
    assert!(err.is_fatal_to_connection(), "{err}");
}

#[tokio::test]
async fn a_killed_server_fails_a_parked_receiver() {
    let (mut echo, addr) = start_echo(&["--spin-us", "0"]).await;
    let t = ShmTransport::new(1 << 20).with_spin(Duration::ZERO);
    let (_tx, mut rx) = guard("connect", t.connect(&addr)).await.unwrap().split();
    let recv = tokio::spawn(async move { guard("recv", rx.recv()).await });
    echo.0.kill().unwrap();
    echo.0.wait().unwrap();
    let err = recv.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("hung up"), "{err}");
}

/// Round trips of 64-byte messages with a child process, through the
/// `Transport` trait on both sides, spin on and off. Timing only:
/// `cargo test -p courier-shm --release --test cross_process -- --ignored --nocapture`.
#[tokio::test(flavor = "current_thread")]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
async fn bench_cross_process_round_trip() {
    let iters: usize = std::env::var("SHM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!();
    println!("| 64 B round trip, two processes, Transport trait | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|");
    for spin_us in [50u64, 20, 0] {
        let (_echo, addr) = start_echo(&["--spin-us", &spin_us.to_string()]).await;
        let t = ShmTransport::new(1 << 20).with_spin(Duration::from_micros(spin_us));
        let (mut tx, mut rx) = guard("connect", t.connect(&addr)).await.unwrap().split();
        let msg = [7u8; 64];
        let mut samples = Vec::with_capacity(iters);
        for i in 0..iters + iters / 10 {
            let t0 = std::time::Instant::now();
            tx.send(&[&msg]).await.unwrap();
            let m = rx.recv().await.unwrap().unwrap();
            if i >= iters / 10 {
                samples.push(t0.elapsed());
            }
            assert_eq!(m.len(), 64);
        }
        samples.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
        println!(
            "| spin_us = {spin_us} | {:.2} | {:.2} | {mean:.2} |",
            us(samples[samples.len() / 2]),
            us(samples[samples.len() * 99 / 100])
        );
    }
}
