//! Per-message cost of the dyn-compatible transport twin (boxed futures)
//! against static dispatch, on an in-memory pipe so that no socket or
//! thread wake-up hides it; plus the frame codec.
//!
//! `cargo bench -p courier-benches --bench dispatch`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use courier::frame::{self, Header, Kind};
use courier_benches::iterations;
use courier_transport::stream::{StreamReceiver, StreamSender};
use courier_transport::{Address, DynReceiver, DynSender, MessageReceiver, MessageSender};

fn pipe() -> (
    StreamSender<tokio::io::DuplexStream>,
    StreamReceiver<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let peer: Address = "mem://bench".parse().unwrap();
    (
        StreamSender::new(a, peer.clone(), 1 << 20),
        StreamReceiver::new(b, peer, 1 << 20),
    )
}

fn main() {
    let iters = iterations(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let msg = [7u8; 64];
    rt.block_on(async {
        for round in 0..2 {
            let (mut s, mut r) = pipe();
            let t = Instant::now();
            for _ in 0..iters {
                s.send(&[&msg]).await.unwrap();
                black_box(r.recv().await.unwrap());
            }
            let stat = t.elapsed().as_nanos() as f64 / iters as f64;

            let (s, r) = pipe();
            let mut s: Box<dyn DynSender> = Box::new(s);
            let mut r: Box<dyn DynReceiver> = Box::new(r);
            let t = Instant::now();
            for _ in 0..iters {
                s.send_dyn(&[&msg]).await.unwrap();
                black_box(r.recv_dyn().await.unwrap());
            }
            let dyn_ns = t.elapsed().as_nanos() as f64 / iters as f64;
            if round == 1 {
                println!("send+recv of a 64 B message over an in-memory pipe, {iters} iterations:");
                println!("  static dispatch        {stat:>8.1} ns");
                println!(
                    "  dyn (2 boxed futures)  {dyn_ns:>8.1} ns   (+{:.1} ns per message pair)",
                    dyn_ns - stat
                );
            }
        }
    });

    let h = Header {
        kind: Kind::Request,
        flags: 0,
        status: frame::Status::Ok,
        provider: 1,
        rpc: frame::rpc_id("hello"),
        seq: 42,
    };
    let t = Instant::now();
    for i in 0..iters as u64 {
        let mut h2 = h;
        h2.seq = i;
        let b = black_box(h2.encode());
        black_box(Header::decode(&b).unwrap());
    }
    println!(
        "frame header encode+decode: {:.1} ns",
        t.elapsed().as_nanos() as f64 / iters as f64
    );
}
