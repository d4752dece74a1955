//! Bulk transfers in one process: a server and a client engine on one
//! two-worker runtime, pulling and pushing 64 KiB, 1 MiB and 16 MiB per
//! protocol, on the default path (direct copies on shm) and on messages,
//! from immutable `Bytes` and from a `BulkBuffer`.
//!
//! Without child processes, this shows what the bulk code itself costs,
//! apart from cross-process scheduling (`courier bench --mode bulk` is the
//! cross-process measurement).
//!
//! `cargo bench -p courier-benches --bench bulk` (COURIER_BENCH_ITERS caps
//! the transfers per figure; each figure moves at most 1 GiB).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use bytes::Bytes;
use courier::{Bulk, BulkBuffer, BulkMemory, BulkMode, BulkOp, BulkOptions, Engine};
use courier_benches::iterations;

const SIZES: [usize; 3] = [64 << 10, 1 << 20, 16 << 20];

fn mib_s(bytes: usize, n: usize, secs: f64) -> f64 {
    (bytes * n) as f64 / f64::from(1u32 << 20) / secs.max(1e-9)
}

async fn figure(
    client: &Engine,
    address: &courier::Address,
    op: BulkOp,
    remote: &Bulk,
    local: &Bulk,
    size: usize,
) -> f64 {
    let n = ((1usize << 30) / size).clamp(4, iterations(5000));
    let (remote, local) = (
        &remote.slice(..size).unwrap(),
        &local.slice(..size).unwrap(),
    );
    for _ in 0..4 {
        client.transfer(op, address, remote, local).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        client.transfer(op, address, remote, local).await.unwrap();
    }
    mib_s(size, n, start.elapsed().as_secs_f64())
}

fn expose(engine: &Engine, memory: impl BulkMemory, mode: BulkMode) -> Bulk {
    engine.expose([memory], mode).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "{:<6} {:<8} {:<9} {:<11} {:>11} {:>11}",
        "proto", "size", "path", "source", "pull MiB/s", "push MiB/s"
    );
    // shm is built on Linux only.
    let protocols: &[&str] = if cfg!(target_os = "linux") {
        &["shm", "tcp", "unix"]
    } else {
        &["tcp", "unix"]
    };
    for &proto in protocols {
        let server = Engine::new(proto).await.unwrap();
        let client = Engine::builder(proto).client().build().await.unwrap();
        let address = client.lookup(&server.address().to_string()).await.unwrap();
        let paths: &[bool] = if proto == "shm" {
            &[true, false]
        } else {
            &[false]
        };
        for &direct in paths {
            client.set_bulk_options(BulkOptions {
                direct,
                ..BulkOptions::default()
            });
            for size in SIZES {
                for immutable in [true, false] {
                    // Pull: server source -> client buffer; push: client
                    // source -> server buffer.
                    let (server_src, client_src) = if immutable {
                        (
                            expose(&server, Bytes::from(vec![1u8; size]), BulkMode::ReadOnly),
                            expose(&client, Bytes::from(vec![2u8; size]), BulkMode::ReadOnly),
                        )
                    } else {
                        (
                            expose(
                                &server,
                                BulkBuffer::from(vec![1u8; size]),
                                BulkMode::ReadOnly,
                            ),
                            expose(
                                &client,
                                BulkBuffer::from(vec![2u8; size]),
                                BulkMode::ReadOnly,
                            ),
                        )
                    };
                    let server_dst = expose(
                        &server,
                        BulkBuffer::from(vec![3u8; size]),
                        BulkMode::WriteOnly,
                    );
                    let client_dst = expose(
                        &client,
                        BulkBuffer::from(vec![4u8; size]),
                        BulkMode::WriteOnly,
                    );
                    let pull = figure(
                        &client,
                        &address,
                        BulkOp::Pull,
                        &server_src,
                        &client_dst,
                        size,
                    )
                    .await;
                    let push = figure(
                        &client,
                        &address,
                        BulkOp::Push,
                        &server_dst,
                        &client_src,
                        size,
                    )
                    .await;
                    println!(
                        "{:<6} {:<8} {:<9} {:<11} {:>11.0} {:>11.0}",
                        proto,
                        format!("{} KiB", size >> 10),
                        if direct { "direct" } else { "messages" },
                        if immutable { "Bytes" } else { "BulkBuffer" },
                        pull,
                        push
                    );
                }
            }
        }
        client.finalize().await;
        server.finalize().await;
    }
}
