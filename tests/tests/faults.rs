//! Faults at scale and connection resets (the process kills are in
//! `process_kill.rs` and `process_client_kill.rs`; handler panics, missing
//! responses and timeouts in `conformance.rs`):
//!
//! * finalize with 1000 calls in flight, the client's engine and then the
//!   server's: every call ends with an error, none hangs;
//! * a TCP reset (RST, not an orderly close) from the server in the middle
//!   of a call: the call ends with `ConnectionLost`, and the next call
//!   reconnects;
//! * a TCP reset from a client in the middle of its call: the server's
//!   handler finishes without harm and the server goes on serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use courier::frame::{rpc_id, Header, Kind};
use courier::transport::framing::PREAMBLE;
use courier::{Engine, Error, Handle};
use courier_conformance::{
    self as cc, assert_hello, guard, length_prefixed, preamble_and_hello, register_hello,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

const CALLS: u32 = 1000;

/// `stall`: reports on `started` (the number started so far), then waits
/// for `release` before answering.
fn register_stall(engine: &Engine, release: Arc<Notify>) -> watch::Receiver<u32> {
    let (started_tx, started_rx) = watch::channel(0u32);
    let started_tx = Arc::new(started_tx);
    engine
        .register("stall", move |h: Handle, n: u32| {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            async move {
                let released = release.notified();
                started_tx.send_modify(|s| *s += 1);
                released.await;
                h.respond(&n).await
            }
        })
        .unwrap();
    started_rx
}

/// Starts `CALLS` calls to `stall` and waits until every handler runs.
async fn calls_in_flight(
    client: &Engine,
    address: &courier::Address,
    started: &mut watch::Receiver<u32>,
) -> JoinSet<courier::Result<u32>> {
    let stall = client.remote::<u32, u32>("stall");
    let mut calls = JoinSet::new();
    for n in 0..CALLS {
        let c = stall.on(address);
        calls.spawn(async move { c.call(&n).await });
    }
    guard(
        "1000 handlers to be running",
        started.wait_for(|s| *s == CALLS),
    )
    .await
    .unwrap();
    calls
}

/// Finalize with 1000 calls in flight, on each side in turn.
async fn finalize_with_1000_in_flight(proto: &str) {
    let server = cc::server(proto).await;
    let release = Arc::new(Notify::new());
    let mut started = register_stall(&server, release.clone());

    // The client's engine is finalized: every call ends with Finalized.
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    let mut calls = calls_in_flight(&client, &address, &mut started).await;
    guard("client finalize", client.finalize()).await;
    let mut ended = 0;
    while let Some(joined) = guard("calls in flight", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, Error::Finalized), "{err:?}");
        ended += 1;
    }
    assert_eq!(ended, CALLS);
    release.notify_waiters();

    // The server is finalized: every call ends with ConnectionLost.
    let before = *started.borrow();
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    let stall = client.remote::<u32, u32>("stall");
    let mut calls = JoinSet::new();
    for n in 0..CALLS {
        let c = stall.on(&address);
        calls.spawn(async move { c.call(&n).await });
    }
    guard(
        "1000 more handlers to be running",
        started.wait_for(|s| *s == before + CALLS),
    )
    .await
    .unwrap();
    guard("server finalize", server.finalize()).await;
    let mut ended = 0;
    while let Some(joined) = guard("calls in flight", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
        ended += 1;
    }
    assert_eq!(ended, CALLS);
    release.notify_waiters();
}

/// Resets `stream` (SO_LINGER 0, then close: the peer gets an RST).
// tokio deprecates set_linger because a *positive* linger blocks the thread
// on close; a zero linger resets at once and never blocks.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

/// Reads the client's preamble, Hello and first request; returns the
/// request's header.
async fn read_request(s: &mut TcpStream) -> Header {
    let mut preamble = [0u8; 4];
    s.read_exact(&mut preamble).await.unwrap();
    assert_eq!(preamble, PREAMBLE);
    loop {
        let msg = cc::read_message(s).await;
        let h = Header::decode(&msg).unwrap();
        if h.kind == Kind::Request {
            return h;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_reset_by_the_server_mid_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let client = cc::client("tcp").await;
    let server = guard("lookup", client.lookup(&address)).await.unwrap();
    let (mut first, _) = guard("accept", listener.accept()).await.unwrap();
    let call = {
        let f = client.remote::<u32, u32>("stall");
        let a = server.clone();
        tokio::spawn(async move { f.on(&a).call(&1).await })
    };
    let h = guard("the request", read_request(&mut first)).await;
    assert_eq!(h.rpc, rpc_id("stall"));
    reset(first);
    let err = guard("the call after a reset", call)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");

    // The next call dials again: answer it properly this time.
    let again = {
        let f = client.remote::<u32, u32>("stall");
        let a = server.clone();
        tokio::spawn(async move { f.on(&a).call(&2).await })
    };
    let (mut second, _) = guard("a new connection", listener.accept()).await.unwrap();
    let h = guard("the request again", read_request(&mut second)).await;
    let response = Header {
        kind: Kind::Response,
        ..h
    };
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&response.encode(), &[2]));
    second.write_all(&bytes).await.unwrap();
    assert_eq!(guard("the second call", again).await.unwrap().unwrap(), 2);
}

/// Sends on its channel when dropped: the engine drops the future of a
/// handler whose request it cancels.
struct ReportDrop(mpsc::UnboundedSender<&'static str>);

impl Drop for ReportDrop {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// A client that resets its connection while its request's handler waits:
/// nobody can receive the answer any more, so the handler is cancelled
/// (its future dropped), and the server goes on serving others.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_reset_by_a_client_mid_call() {
    let server = cc::server("tcp").await;
    register_hello(&server);
    let (outcome_tx, mut outcome) = mpsc::unbounded_channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    server
        .register("stall", move |h: Handle, n: u32| {
            let (outcome_tx, started_tx) = (outcome_tx.clone(), started_tx.clone());
            async move {
                let _report = ReportDrop(outcome_tx.clone());
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                let _ = h.respond(&n).await;
                let _ = outcome_tx.send("answered");
            }
        })
        .unwrap();
    let addr = server.address().to_string();
    let mut raw = TcpStream::connect(addr.trim_start_matches("tcp://"))
        .await
        .unwrap();
    let mut h = Header::new(Kind::Request);
    h.rpc = rpc_id("stall");
    h.seq = 1;
    let mut bytes = preamble_and_hello();
    bytes.extend_from_slice(&length_prefixed(&h.encode(), &[5]));
    raw.write_all(&bytes).await.unwrap();
    guard("the handler to start", started.recv()).await.unwrap();
    reset(raw);

    assert_eq!(
        guard("the handler to be cancelled", outcome.recv()).await,
        Some("dropped")
    );
    // Others are served after it.
    let client = cc::client("tcp").await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
}

macro_rules! fault_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            #[tokio::test(flavor = "multi_thread")]
            async fn finalize_with_1000_in_flight() {
                super::finalize_with_1000_in_flight(stringify!($proto)).await;
            }
        }
    )*};
}

courier_conformance::for_each_protocol!(fault_tests);
