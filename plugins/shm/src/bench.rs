//! Timings, as ignored tests that print (timing never decides a test):
//!
//! ```sh
//! cargo test -p courier-shm --release --lib -- --ignored --nocapture --test-threads 1 bench
//! ```
//!
//! Two threads, each with its own current-thread runtime (as two processes
//! would have), connected through a real segment:
//!
//! * **raw floor**: 64-byte ping-pong straight on the rings and the
//!   spin-then-park wait, no framing, no allocation, no trait;
//! * **trait**: the same through `MessageSender::send` /
//!   `MessageReceiver::recv` (static dispatch), and through the boxed
//!   futures of `DynSender` / `DynReceiver`;
//! * **throughput**: 1 MiB messages one way, beside the single-core memcpy
//!   bandwidth of 1 MiB buffers (`bench_throughput_1mib`);
//! * what a spin shorter than the server's work per request costs
//!   (`bench_think_time`), the cost of a second cache line per message
//!   (`bench_raw_sizes`), and the CPU cost of a send and a receive with no
//!   waiting (`bench_cpu_per_message`).
//!
//! `SHM_BENCH_ITERS` sets the number of round trips (default 20 000, after
//! 10% of warm-up). The cross-process figures are in
//! `tests/cross_process.rs` (`bench_cross_process_round_trip`).

use std::future::Future;
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use courier_transport::{
    Address, Connection, DynReceiver, DynSender, Listener, MessageReceiver, MessageSender,
    Transport,
};

use crate::{ShmReceiver, ShmSender, ShmTransport};

const PAYLOAD: usize = 64;
const MIB: usize = 1 << 20;

fn iterations() -> usize {
    std::env::var("SHM_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `server` on a thread of its own (with its own runtime) on the server
/// half of a connection, and `client` on this thread on the client half.
fn run<S, SF, C, CF, R>(t: &ShmTransport, server: S, client: C) -> R
where
    S: FnOnce(ShmSender, ShmReceiver) -> SF + Send + 'static,
    SF: Future<Output = ()>,
    C: FnOnce(ShmSender, ShmReceiver) -> CF,
    CF: Future<Output = R>,
{
    let (addr_tx, addr_rx) = mpsc::channel::<Address>();
    let st = t.clone();
    let server_thread = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut l = st.listen(&"shm://".parse().unwrap()).await.unwrap();
            addr_tx.send(l.local_addr().clone()).unwrap();
            let (tx, rx) = l.accept().await.unwrap().split();
            server(tx, rx).await;
        });
    });
    let addr = addr_rx.recv().unwrap();
    let r = runtime().block_on(async {
        let (tx, rx) = t.connect(&addr).await.unwrap().split();
        client(tx, rx).await
    });
    server_thread.join().unwrap();
    r
}

fn raw_send(tx: &mut ShmSender, msg: &[u8]) {
    let n = tx.producer_mut().write(msg).unwrap();
    assert_eq!(n, msg.len(), "the raw bench needs room for a whole message");
    tx.publish();
}

async fn raw_recv(rx: &mut ShmReceiver, buf: &mut [u8]) {
    loop {
        if rx.consumer_mut().available().unwrap() as usize >= buf.len() {
            rx.consumer_mut().read(buf);
            rx.release();
            return;
        }
        rx.wait_for_data().await.unwrap();
    }
}

/// p50, p99 and mean of round-trip times, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn stats(mut d: Vec<Duration>) -> Stats {
    d.sort();
    let us = |x: Duration| x.as_secs_f64() * 1e6;
    Stats {
        p50: us(d[d.len() / 2]),
        p99: us(d[d.len() * 99 / 100]),
        mean: d.iter().map(|x| us(*x)).sum::<f64>() / d.len() as f64,
    }
}

fn ping_pong_raw(t: &ShmTransport) -> Stats {
    ping_pong_raw_sized::<PAYLOAD>(t)
}

fn ping_pong_raw_sized<const SIZE: usize>(t: &ShmTransport) -> Stats {
    let n = iterations();
    let warm = n / 10;
    run(
        t,
        move |mut tx, mut rx| async move {
            let mut buf = [0u8; SIZE];
            for _ in 0..n + warm {
                raw_recv(&mut rx, &mut buf).await;
                raw_send(&mut tx, &buf);
            }
        },
        move |mut tx, mut rx| async move {
            let msg = [7u8; SIZE];
            let mut buf = [0u8; SIZE];
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + warm {
                let t0 = Instant::now();
                raw_send(&mut tx, &msg);
                raw_recv(&mut rx, &mut buf).await;
                if i >= warm {
                    samples.push(t0.elapsed());
                }
            }
            stats(samples)
        },
    )
}

fn ping_pong_trait(t: &ShmTransport) -> Stats {
    let n = iterations();
    let warm = n / 10;
    run(
        t,
        move |mut tx, mut rx| async move {
            while let Some(m) = rx.recv().await.unwrap() {
                tx.send(&[&m]).await.unwrap();
            }
        },
        move |mut tx, mut rx| async move {
            let msg = [7u8; PAYLOAD];
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + warm {
                let t0 = Instant::now();
                tx.send(&[&msg]).await.unwrap();
                let m = rx.recv().await.unwrap().unwrap();
                if i >= warm {
                    samples.push(t0.elapsed());
                }
                black_box(m);
            }
            tx.close().await.unwrap();
            stats(samples)
        },
    )
}

fn ping_pong_dyn(t: &ShmTransport) -> Stats {
    let n = iterations();
    let warm = n / 10;
    run(
        t,
        move |tx, rx| async move {
            let (mut tx, mut rx): (Box<dyn DynSender>, Box<dyn DynReceiver>) =
                (Box::new(tx), Box::new(rx));
            while let Some(m) = rx.recv_dyn().await.unwrap() {
                tx.send_dyn(&[&m]).await.unwrap();
            }
        },
        move |tx, rx| async move {
            let (mut tx, mut rx): (Box<dyn DynSender>, Box<dyn DynReceiver>) =
                (Box::new(tx), Box::new(rx));
            let msg = [7u8; PAYLOAD];
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + warm {
                let t0 = Instant::now();
                tx.send_dyn(&[&msg]).await.unwrap();
                let m = rx.recv_dyn().await.unwrap().unwrap();
                if i >= warm {
                    samples.push(t0.elapsed());
                }
                black_box(m);
            }
            tx.close_dyn().await.unwrap();
            stats(samples)
        },
    )
}

/// MiB/s of `count` messages of `size` bytes, client to server, timed on
/// the receiving side from the first byte to the last.
fn throughput(t: &ShmTransport, size: usize, count: usize) -> f64 {
    let (done_tx, done_rx) = mpsc::channel::<f64>();
    run(
        t,
        move |_tx, mut rx| async move {
            let first = rx.recv().await.unwrap().unwrap();
            assert_eq!(first.len(), size);
            let t0 = Instant::now();
            for _ in 1..count {
                black_box(rx.recv().await.unwrap().unwrap());
            }
            let secs = t0.elapsed().as_secs_f64();
            done_tx
                .send((size * (count - 1)) as f64 / MIB as f64 / secs)
                .unwrap();
        },
        move |mut tx, _rx| async move {
            let msg = vec![0x42u8; size];
            for _ in 0..count {
                tx.send(&[&msg]).await.unwrap();
            }
        },
    );
    done_rx.recv().unwrap()
}

/// Single-core memcpy bandwidth of `size`-byte buffers, in MiB/s.
fn memcpy_bandwidth(size: usize, count: usize) -> f64 {
    let src = vec![0x42u8; size];
    let mut dst = vec![0u8; size];
    for _ in 0..count / 10 {
        dst.copy_from_slice(black_box(&src));
    }
    let t0 = Instant::now();
    for _ in 0..count {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }
    (size * count) as f64 / MIB as f64 / t0.elapsed().as_secs_f64()
}

/// The same, into a fresh allocation each time (what a receiver does).
fn memcpy_fresh_bandwidth(size: usize, count: usize) -> f64 {
    let src = vec![0x42u8; size];
    let t0 = Instant::now();
    for _ in 0..count {
        black_box(black_box(&src[..]).to_vec());
    }
    (size * count) as f64 / MIB as f64 / t0.elapsed().as_secs_f64()
}

fn row(name: &str, s: Stats, floor: Option<Stats>) {
    let ratio = floor.map_or(String::new(), |f| format!("{:>6.2}", s.p50 / f.p50));
    println!(
        "| {name:<44} | {:>8.2} | {:>8.2} | {:>8.2} | {ratio:>6} |",
        s.p50, s.p99, s.mean
    );
}

#[test]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
fn bench_round_trip_64b() {
    println!();
    println!(
        "64 B round trips, two threads with a current-thread runtime each, {} iterations",
        iterations()
    );
    println!(
        "| {:<44} | {:>8} | {:>8} | {:>8} | {:>6} |",
        "layer", "p50 µs", "p99 µs", "mean µs", "ratio"
    );
    println!(
        "|{:-<46}|{:-<10}|{:-<10}|{:-<10}|{:-<8}|",
        "", "", "", "", ""
    );
    for spin_us in [50, 20, 0] {
        let t = ShmTransport::new(MIB).with_spin(Duration::from_micros(spin_us));
        let raw = ping_pong_raw(&t);
        row(
            &format!("raw ring floor, spin_us = {spin_us}"),
            raw,
            Some(raw),
        );
        row(
            &format!("Transport trait, static, spin_us = {spin_us}"),
            ping_pong_trait(&t),
            Some(raw),
        );
        row(
            &format!("Transport trait, dyn, spin_us = {spin_us}"),
            ping_pong_dyn(&t),
            Some(raw),
        );
    }
}

#[test]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
fn bench_raw_sizes() {
    let t = ShmTransport::new(MIB);
    row("raw 64", ping_pong_raw_sized::<64>(&t), None);
    row("raw 68", ping_pong_raw_sized::<68>(&t), None);
    row("raw 92", ping_pong_raw_sized::<92>(&t), None);
    row("raw 128", ping_pong_raw_sized::<128>(&t), None);
    row("raw 132", ping_pong_raw_sized::<132>(&t), None);
}

#[test]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
fn bench_throughput_1mib() {
    let count = 2000;
    println!();
    let copy = memcpy_bandwidth(MIB, count);
    let fresh = memcpy_fresh_bandwidth(MIB, count);
    println!("single-core memcpy of 1 MiB buffers:            {copy:>8.0} MiB/s");
    println!("single-core copy of 1 MiB into a fresh Vec:     {fresh:>8.0} MiB/s");
    for ring in [256 << 10, MIB, 4 * MIB] {
        for spin_us in [50, 0] {
            let t = ShmTransport::new(4 * MIB)
                .with_ring_size(ring)
                .unwrap()
                .with_spin(Duration::from_micros(spin_us));
            let mibs = throughput(&t, MIB, count);
            println!(
                "1 MiB messages, ring {:>4} KiB, spin_us = {spin_us:>2}:  {mibs:>8.0} MiB/s ({:.2} x memcpy)",
                ring >> 10,
                mibs / copy
            );
        }
    }
    let t = ShmTransport::new(32 * MIB);
    let mibs = throughput(&t, 16 * MIB, 200);
    println!("16 MiB messages, ring 1024 KiB, spin_us = 50:  {mibs:>8.0} MiB/s");
}

/// CPU cost of one send and one receive with no waiting (one thread).
#[test]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
fn bench_cpu_per_message() {
    runtime().block_on(async {
        let t = ShmTransport::new(MIB);
        let mut l = t.listen(&"shm://".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().clone();
        let (c, s) = tokio::join!(t.connect(&addr), l.accept());
        let (mut tx, _crx) = c.unwrap().split();
        let (_stx, mut rx) = s.unwrap().split();
        let msg = [7u8; PAYLOAD];
        let n = 1_000_000;
        for _ in 0..n / 10 {
            tx.send(&[&msg]).await.unwrap();
            black_box(rx.recv().await.unwrap());
        }
        let t0 = Instant::now();
        for _ in 0..n {
            tx.send(&[&msg]).await.unwrap();
            black_box(rx.recv().await.unwrap());
        }
        let trait_ns = t0.elapsed().as_nanos() as f64 / n as f64;
        let mut buf = [0u8; PAYLOAD];
        let t0 = Instant::now();
        for _ in 0..n {
            raw_send(&mut tx, &msg);
            raw_recv(&mut rx, &mut buf).await;
        }
        let raw_ns = t0.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "\nper 64 B send + recv on one thread: trait {trait_ns:.1} ns, raw {raw_ns:.1} ns"
        );
    });
}

/// Round trips when the server works `think` before each reply (a handler):
/// a spin shorter than that parks, and pays the wake-up.
fn ping_pong_think(t: &ShmTransport, think: Duration) -> Stats {
    let n = iterations() / 4;
    let warm = n / 10;
    run(
        t,
        move |mut tx, mut rx| async move {
            while let Some(m) = rx.recv().await.unwrap() {
                let t0 = Instant::now();
                while t0.elapsed() < think {
                    std::hint::spin_loop();
                }
                tx.send(&[&m]).await.unwrap();
            }
        },
        move |mut tx, mut rx| async move {
            let msg = [7u8; PAYLOAD];
            let mut samples = Vec::with_capacity(n);
            for i in 0..n + warm {
                let t0 = Instant::now();
                tx.send(&[&msg]).await.unwrap();
                black_box(rx.recv().await.unwrap().unwrap());
                if i >= warm {
                    samples.push(t0.elapsed());
                }
            }
            tx.close().await.unwrap();
            stats(samples)
        },
    )
}

#[test]
#[ignore = "benchmark: run in release mode with --ignored --nocapture"]
fn bench_think_time() {
    println!();
    println!("| server work per request | spin_us | p50 µs | p99 µs | mean µs |");
    println!("|---:|---:|---:|---:|---:|");
    for think_us in [5u64, 15, 40] {
        for spin_us in [100u64, 50, 20, 0] {
            let t = ShmTransport::new(MIB).with_spin(Duration::from_micros(spin_us));
            let s = ping_pong_think(&t, Duration::from_micros(think_us));
            println!(
                "| {think_us} µs | {spin_us} | {:.2} | {:.2} | {:.2} |",
                s.p50, s.p99, s.mean
            );
        }
    }
}
