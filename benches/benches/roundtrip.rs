//! Small-RPC round trip: raw sockets, the transport trait (static and dyn),
//! and the engine, over tcp and unix, measured in one run.
//!
//! The server side of every layer runs on its own thread with a
//! current-thread runtime, the client on the main thread: both sides pay the
//! same thread wake-ups, so the ratios show what each layer adds.
//!
//! `cargo bench -p courier-benches --bench roundtrip` (COURIER_BENCH_ITERS to
//! change the iteration count).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;
use courier::{Engine, Handle, RpcOptions};
use courier_benches::{header, iterations, row, Recorder, Stats};
use courier_tcp::TcpTransport;
use courier_transport::{
    Address, Connection, DynTransport, Listener, MessageReceiver, MessageSender, Transport,
};
use courier_unix::UnixTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: usize = 64;
const MAX: usize = 1 << 20;

fn server_thread<F, Fut>(f: F) -> String
where
    F: FnOnce(mpsc::Sender<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f(tx));
    });
    rx.recv().unwrap()
}

/// Plain sockets, 4-byte length prefix, no Courier code at all.
/// Keeps the current runtime polling (never parking) while the bench runs:
/// the raw floor of the "poll before parking" policy.
fn keep_polling() {
    tokio::spawn(async {
        loop {
            tokio::task::yield_now().await;
        }
    });
}

async fn raw_socket(proto: &str, iters: usize, poll: bool) -> Stats {
    if poll {
        keep_polling();
    }
    async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) {
        let mut buf = vec![0u8; 4 + PAYLOAD];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    }
    async fn client<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        iters: usize,
    ) -> Stats {
        let mut msg = (PAYLOAD as u32).to_le_bytes().to_vec();
        msg.extend_from_slice(&[7u8; PAYLOAD]);
        let mut back = vec![0u8; msg.len()];
        let mut rec = Recorder::new();
        for i in 0..iters + iters / 10 {
            if i == iters / 10 {
                rec = Recorder::new();
            }
            let t = Instant::now();
            s.write_all(&msg).await.unwrap();
            s.read_exact(&mut back).await.unwrap();
            rec.record(t.elapsed());
        }
        rec.stats()
    }
    if proto == "tcp" {
        let addr = server_thread(move |tx| async move {
            if poll {
                keep_polling();
            }
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().to_string()).unwrap();
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            echo(s).await;
        });
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        client(s, iters).await
    } else {
        let dir = std::env::temp_dir().join(format!("courier-bench-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("raw.sock");
        let _ = std::fs::remove_file(&path);
        let p2 = path.clone();
        server_thread(move |tx| async move {
            if poll {
                keep_polling();
            }
            let l = tokio::net::UnixListener::bind(&p2).unwrap();
            tx.send(String::new()).unwrap();
            let (s, _) = l.accept().await.unwrap();
            echo(s).await;
        });
        let s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let stats = client(s, iters).await;
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        stats
    }
}

async fn transport_echo<T: Transport>(t: T) -> (Address, impl FnOnce()) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut l = t
                .listen(&Address::new(t.protocol(), "").unwrap())
                .await
                .unwrap();
            tx.send(l.local_addr().clone()).unwrap();
            let (mut s, mut r) = l.accept().await.unwrap().split();
            while let Ok(Some(m)) = r.recv().await {
                if s.send(&[&m]).await.is_err() {
                    break;
                }
            }
        });
    });
    (rx.recv().unwrap(), || ())
}

/// The transport trait with static dispatch.
async fn transport_static<T: Transport + Clone>(t: T, iters: usize) -> Stats {
    let (addr, _) = transport_echo(t.clone()).await;
    let (mut s, mut r) = t.connect(&addr).await.unwrap().split();
    let msg = [7u8; PAYLOAD];
    let mut rec = Recorder::new();
    for i in 0..iters + iters / 10 {
        if i == iters / 10 {
            rec = Recorder::new();
        }
        let t0 = Instant::now();
        s.send(&[&msg]).await.unwrap();
        r.recv().await.unwrap().unwrap();
        rec.record(t0.elapsed());
    }
    rec.stats()
}

/// The transport trait through the boxed dyn twin, as the engine uses it.
async fn transport_dyn<T: Transport + Clone>(t: T, iters: usize) -> Stats {
    let (addr, _) = transport_echo(t.clone()).await;
    let t: Box<dyn DynTransport> = Box::new(t);
    let (mut s, mut r) = t.connect_dyn(&addr).await.unwrap().split_dyn();
    let msg = [7u8; PAYLOAD];
    let mut rec = Recorder::new();
    for i in 0..iters + iters / 10 {
        if i == iters / 10 {
            rec = Recorder::new();
        }
        let t0 = Instant::now();
        s.send_dyn(&[&msg]).await.unwrap();
        r.recv_dyn().await.unwrap().unwrap();
        rec.record(t0.elapsed());
    }
    rec.stats()
}

/// A full engine round trip: raw-bytes echo RPC, and the typed hello.
async fn engine(proto: &'static str, iters: usize, typed: bool, spin_us: u64) -> Stats {
    let spin = std::time::Duration::from_micros(spin_us);
    let addr = server_thread(move |tx| async move {
        let e = Engine::builder(proto)
            .progress_spin(spin)
            .build()
            .await
            .unwrap();
        e.register_raw(
            "echo",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move { h.respond_raw(&p).await },
        )
        .unwrap();
        e.register(
            "hello",
            |h: Handle, (first, _last): (String, String)| async move {
                h.respond(&format!("Good bye {first}")).await
            },
        )
        .unwrap();
        e.enable_remote_shutdown();
        tx.send(e.address().to_string()).unwrap();
        e.wait_for_finalize().await;
    });
    let client = Engine::builder(proto)
        .client()
        .progress_spin(spin)
        .build()
        .await
        .unwrap();
    let server = client.lookup(&addr).await.unwrap();
    let echo = client.remote_raw("echo").on(&server);
    let hello = client.remote::<(&str, &str), String>("hello").on(&server);
    let msg = [7u8; PAYLOAD];
    let mut rec = Recorder::new();
    for i in 0..iters + iters / 10 {
        if i == iters / 10 {
            rec = Recorder::new();
        }
        let t0 = Instant::now();
        if typed {
            hello.call(&("Matthieu", "Dorier")).await.unwrap();
        } else {
            echo.call(&msg).await.unwrap();
        }
        rec.record(t0.elapsed());
    }
    server.shutdown().await.unwrap();
    rec.stats()
}

fn main() {
    let iters = iterations(20_000);
    for proto in ["tcp", "unix"] {
        // A fresh runtime per measurement: a polling task must not outlive it.
        let run = |f: std::pin::Pin<Box<dyn std::future::Future<Output = Stats>>>| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f)
        };
        header(&format!(
            "{proto}: 64-byte round trip, {iters} iterations, server on another thread"
        ));
        let raw = run(Box::pin(raw_socket(proto, iters, false)));
        row(&format!("{proto} raw socket ping-pong"), &raw, Some(&raw));
        let (st, dy) = if proto == "tcp" {
            (
                run(Box::pin(transport_static(TcpTransport::new(MAX), iters))),
                run(Box::pin(transport_dyn(TcpTransport::new(MAX), iters))),
            )
        } else {
            (
                run(Box::pin(transport_static(UnixTransport::new(MAX), iters))),
                run(Box::pin(transport_dyn(UnixTransport::new(MAX), iters))),
            )
        };
        row(
            &format!("{proto} Transport trait, static dispatch"),
            &st,
            Some(&raw),
        );
        row(
            &format!("{proto} Transport trait, dyn (boxed futures)"),
            &dy,
            Some(&raw),
        );
        let p: &'static str = if proto == "tcp" { "tcp" } else { "unix" };
        let e = run(Box::pin(engine(p, iters, false, 0)));
        row(
            &format!("{proto} engine RPC, raw 64 B echo"),
            &e,
            Some(&raw),
        );
        let e = run(Box::pin(engine(p, iters, true, 0)));
        row(&format!("{proto} engine RPC, typed hello"), &e, Some(&raw));

        header(&format!("{proto}: the same, polling before parking"));
        let polled = run(Box::pin(raw_socket(proto, iters, true)));
        row(
            &format!("{proto} raw socket ping-pong, always polling"),
            &polled,
            Some(&polled),
        );
        for spin in [20, 50, 200] {
            let e = run(Box::pin(engine(p, iters, false, spin)));
            row(
                &format!("{proto} engine raw echo, progress_spin_us={spin}"),
                &e,
                Some(&polled),
            );
        }
        let e = run(Box::pin(engine(p, iters, true, 50)));
        row(
            &format!("{proto} engine typed hello, progress_spin_us=50"),
            &e,
            Some(&polled),
        );
    }
}
