//! Measures the two ways of mapping messages onto QUIC streams. Run by
//! hand; it prints figures and asserts nothing about time:
//!
//! ```sh
//! cargo test -p courier-quic --release --lib -- --ignored --nocapture stream_mapping
//! ```
//!
//! (a) one long-lived bidirectional stream per connection with the framing
//!     of `courier_transport::stream` — what the plugin does;
//! (b) one unidirectional stream per message (`open_uni`, write, `finish`;
//!     the receiver `accept_uni`s and reads to the end).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::Endpoint;

use crate::tls::{self, Identity, ServerCheck};
use crate::{transport_config, QuicConfig, QuicTransport};

const MAX: usize = 4 << 20;
const PING_WARMUP: usize = 200;
const PINGS: usize = 2000;
/// (message size, count) for one-way throughput.
const BULK: [(usize, usize); 3] = [(64, 20_000), (4096, 5_000), (1 << 20, 64)];
const IN_FLIGHT: usize = 1000;
const IN_FLIGHT_SIZE: usize = 1024;

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().map(|d| us(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{what:<44} p50 {:>8.1} µs  p99 {:>8.1} µs  mean {:>8.1} µs",
        us(samples[samples.len() / 2]),
        us(samples[samples.len() * 99 / 100]),
        mean
    );
}

fn rate(what: &str, count: usize, size: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "{what:<44} {:>9.0} msg/s  {:>8.1} MiB/s  ({count} x {size} B in {:.1} ms)",
        count as f64 / secs,
        (count * size) as f64 / secs / (1 << 20) as f64,
        secs * 1e3
    );
}

// ---------------------------------------------------------------- (a)

async fn framed_pair() -> (
    impl MessageSender,
    impl MessageReceiver,
    impl MessageSender,
    impl MessageReceiver,
) {
    let t = QuicTransport::new(MAX);
    let mut l = t.listen(&"quic://".parse().unwrap()).await.unwrap();
    let addr = l.local_addr().clone();
    let (c, s) = tokio::join!(t.connect(&addr), l.accept());
    let (ctx, crx) = c.unwrap().split();
    let (stx, srx) = s.unwrap().split();
    (ctx, crx, stx, srx)
}

async fn framed_ping() {
    let (mut ctx, mut crx, mut stx, mut srx) = framed_pair().await;
    let echo = tokio::spawn(async move {
        while let Ok(Some(m)) = srx.recv().await {
            stx.send(&[&m]).await.unwrap();
        }
    });
    let msg = [7u8; 64];
    let mut samples = Vec::with_capacity(PINGS);
    for i in 0..PING_WARMUP + PINGS {
        let t0 = Instant::now();
        ctx.send(&[&msg]).await.unwrap();
        crx.recv().await.unwrap().unwrap();
        if i >= PING_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    report("(a) one bidi stream: 64 B round trip", &mut samples);
    ctx.close().await.unwrap();
    echo.await.unwrap();
}

async fn framed_bulk(size: usize, count: usize) {
    let (mut ctx, _crx, _stx, mut srx) = framed_pair().await;
    let msg = vec![1u8; size];
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..count as u32 {
            ctx.send(&[&i.to_le_bytes(), &msg[4..]]).await.unwrap();
        }
        ctx
    });
    for i in 0..count as u32 {
        let m = srx.recv().await.unwrap().unwrap();
        assert_eq!(m[..4], i.to_le_bytes());
    }
    let took = t0.elapsed();
    writer.await.unwrap();
    rate("(a) one bidi stream: one-way, in order", count, size, took);
}

async fn framed_in_flight() {
    let (ctx, _crx, _stx, mut srx) = framed_pair().await;
    let ctx = Arc::new(tokio::sync::Mutex::new(ctx));
    let t0 = Instant::now();
    for _ in 0..IN_FLIGHT {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let msg = [2u8; IN_FLIGHT_SIZE];
            ctx.lock().await.send(&[&msg]).await.unwrap();
        });
    }
    for _ in 0..IN_FLIGHT {
        srx.recv().await.unwrap().unwrap();
    }
    rate(
        "(a) one bidi stream: 1000 tasks in flight",
        IN_FLIGHT,
        IN_FLIGHT_SIZE,
        t0.elapsed(),
    );
}

// ---------------------------------------------------------------- (b)

async fn raw_pair() -> (quinn::Connection, quinn::Connection) {
    let provider = tls::provider();
    let id = Identity::self_signed().unwrap();
    let transport = Arc::new(transport_config(&QuicConfig::default()));
    let crypto = QuicServerConfig::try_from(tls::server_crypto(&provider, &id).unwrap()).unwrap();
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server_config.transport_config(transport.clone());
    let server = Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let slot = Arc::new(Mutex::new(None));
    let check = ServerCheck::Pinned(id.fingerprint.clone());
    let crypto =
        QuicClientConfig::try_from(tls::client_crypto(&provider, &check, &slot).unwrap()).unwrap();
    let mut client_config = quinn::ClientConfig::new(Arc::new(crypto));
    client_config.transport_config(transport);
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::join!(
        async {
            client
                .connect_with(client_config, addr, "localhost")
                .unwrap()
                .await
                .unwrap()
        },
        async { server.accept().await.unwrap().await.unwrap() }
    )
}

async fn uni_send(conn: &quinn::Connection, parts: &[&[u8]]) {
    let mut s = conn.open_uni().await.unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
    }
    s.finish().unwrap();
}

async fn uni_recv(conn: &quinn::Connection) -> Vec<u8> {
    let mut r = conn.accept_uni().await.unwrap();
    r.read_to_end(MAX).await.unwrap()
}

async fn uni_ping() {
    let (client, server) = raw_pair().await;
    let echo = tokio::spawn(async move {
        loop {
            let Ok(mut r) = server.accept_uni().await else {
                break;
            };
            let m = r.read_to_end(MAX).await.unwrap();
            uni_send(&server, &[&m]).await;
        }
    });
    let msg = [7u8; 64];
    let mut samples = Vec::with_capacity(PINGS);
    for i in 0..PING_WARMUP + PINGS {
        let t0 = Instant::now();
        uni_send(&client, &[&msg]).await;
        uni_recv(&client).await;
        if i >= PING_WARMUP {
            samples.push(t0.elapsed());
        }
    }
    report("(b) uni stream per message: 64 B round trip", &mut samples);
    client.close(0u32.into(), b"done");
    let _ = echo.await;
}

/// One-way, the receiver reading streams one after the other (in the order
/// they were opened: ordered, head-of-line blocked).
async fn uni_bulk(size: usize, count: usize) {
    let (client, server) = raw_pair().await;
    let msg = vec![1u8; size];
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..count as u32 {
            uni_send(&client, &[&i.to_le_bytes(), &msg[4..]]).await;
        }
        client
    });
    for i in 0..count as u32 {
        let m = uni_recv(&server).await;
        assert_eq!(m[..4], i.to_le_bytes());
    }
    let took = t0.elapsed();
    let _client = writer.await.unwrap();
    rate(
        "(b) uni per message: one-way, read in turn",
        count,
        size,
        took,
    );
}

/// One-way, the receiver reading each stream in its own task (what per-
/// message streams are for): counts messages that complete out of order.
async fn uni_bulk_concurrent(size: usize, count: usize) {
    let (client, server) = raw_pair().await;
    let msg = vec![1u8; size];
    let t0 = Instant::now();
    let writer = tokio::spawn(async move {
        for i in 0..count as u32 {
            uni_send(&client, &[&i.to_le_bytes(), &msg[4..]]).await;
        }
        client
    });
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..count {
        let mut r = server.accept_uni().await.unwrap();
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            let m = r.read_to_end(MAX).await.unwrap();
            let _ = done_tx.send(u32::from_le_bytes(m[..4].try_into().unwrap()));
        });
    }
    let mut highest = None;
    let mut out_of_order = 0;
    for _ in 0..count {
        let i = done_rx.recv().await.unwrap();
        match highest {
            Some(h) if i < h => out_of_order += 1,
            _ => highest = Some(i),
        }
    }
    let took = t0.elapsed();
    let _client = writer.await.unwrap();
    rate(
        "(b) uni per message: one-way, concurrent reads",
        count,
        size,
        took,
    );
    println!(
        "{:<44} {out_of_order} of {count} completed out of order",
        ""
    );
}

async fn uni_in_flight() {
    let (client, server) = raw_pair().await;
    let t0 = Instant::now();
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        tokio::spawn(async move {
            let msg = [2u8; IN_FLIGHT_SIZE];
            uni_send(&client, &[&msg]).await;
        });
    }
    for _ in 0..IN_FLIGHT {
        uni_recv(&server).await;
    }
    rate(
        "(b) uni per message: 1000 tasks in flight",
        IN_FLIGHT,
        IN_FLIGHT_SIZE,
        t0.elapsed(),
    );
}

async fn all() {
    framed_ping().await;
    uni_ping().await;
    for (size, count) in BULK {
        framed_bulk(size, count).await;
        uni_bulk(size, count).await;
        uni_bulk_concurrent(size, count).await;
    }
    framed_in_flight().await;
    uni_in_flight().await;
}

#[test]
#[ignore = "a measurement, run by hand with --release --nocapture"]
fn stream_mapping() {
    // Both ends on one thread: the CPU cost of each mapping, no wake-ups
    // across cores.
    println!("-- current-thread runtime (both ends on one thread)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(all());
    // As a server would run: a multi-thread runtime on the 2 cores.
    println!("-- multi-thread runtime, 2 workers");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(all());
}
