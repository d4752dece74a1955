//! Slow and greedy peers against the limits of `limits.rs` (JSON keys
//! `max_connections`, `timeouts.hello_ms`, `max_in_flight_per_connection`,
//! `max_queued_response_bytes`), on every framed-stream protocol, with raw
//! sockets playing the hostile peer.
//!
//! Each test asserts what the limit promises (the extra connection is
//! closed; the silent one is closed; no more than N handlers of one
//! connection run at once; every request is still answered once the peer
//! reads) and that a well-behaved client is served *while* the greedy peer
//! is active. None asserts a duration: how much latency the others keep is a
//! benchmark figure (`docs/reliability.md`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use courier::frame::{rpc_id, Header, Kind, FLAG_NO_RESPONSE, HEADER_LEN};
use courier::transport::framing::PREAMBLE;
use courier::{Engine, Error, Handle, RpcOptions};
use courier_conformance::{
    self as cc, assert_hello, guard, length_prefixed, preamble_and_hello, raw_connect,
    read_message, register_hello, wait_for_close,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

async fn server_with(proto: &str, limits: &str) -> Engine {
    let server = Engine::builder(proto)
        .config_json(limits)
        .build()
        .await
        .unwrap();
    register_hello(&server);
    server
}

/// A request frame for `name` at sequence `seq`, length-prefixed.
fn request(name: &str, seq: u64, one_way: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = Header::new(Kind::Request);
    h.rpc = rpc_id(name);
    h.seq = seq;
    if one_way {
        h.flags = FLAG_NO_RESPONSE;
    }
    length_prefixed(&h.encode(), payload)
}

/// Counts handlers running at once and the most seen; each waits for a
/// permit of `gate` before it answers.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    most: AtomicUsize,
    done: AtomicUsize,
    /// The number done, for a test to wait on.
    finished: watch::Sender<usize>,
}

/// Registers `gated` (answers its payload once a permit of `gate` is free)
/// and `gated_one_way`, counting concurrency in `stats` and publishing the
/// number running on `running`.
fn register_gated(
    server: &Engine,
    gate: &Arc<Semaphore>,
    stats: &Arc<Concurrency>,
    running: &Arc<watch::Sender<usize>>,
) {
    for (name, one_way) in [("gated", false), ("gated_one_way", true)] {
        let (gate, stats, running) = (gate.clone(), stats.clone(), running.clone());
        let options = if one_way {
            RpcOptions::default().disable_response()
        } else {
            RpcOptions::default()
        };
        server
            .register_raw(name, options, move |h: Handle, payload| {
                let (gate, stats, running) = (gate.clone(), stats.clone(), running.clone());
                async move {
                    let now = stats.now.fetch_add(1, Ordering::AcqRel) + 1;
                    stats.most.fetch_max(now, Ordering::AcqRel);
                    running.send_replace(now);
                    gate.acquire().await.unwrap().forget();
                    stats.now.fetch_sub(1, Ordering::AcqRel);
                    let done = stats.done.fetch_add(1, Ordering::AcqRel) + 1;
                    stats.finished.send_replace(done);
                    h.respond_raw(&payload).await
                }
            })
            .unwrap();
    }
}

/// `max_connections`: with every slot taken by connections that send
/// nothing, one more is closed by the server at once; a client that got a
/// slot before is still served; and once a silent one goes, its slot is free
/// again.
async fn extra_connection_is_closed(proto: &str) {
    let server = server_with(proto, r#"{"max_connections": 3}"#).await;
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await; // slot 1, in use

    let addr = server.address().to_string();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(raw_connect(&addr).await.unwrap()); // slots 2 and 3
    }
    let mut extra = raw_connect(&addr).await.unwrap();
    let _ = extra.write_all(&preamble_and_hello()).await;
    wait_for_close(
        &mut extra,
        "the server closing a connection over max_connections",
    )
    .await;
    assert_hello(&client, &address).await;

    // Give one slot back; a new client gets in (the server may see the
    // silent peer go a little after we drop it: retry the lookup, never
    // more than the hang guard allows).
    drop(silent.pop());
    let other = cc::client(proto).await;
    guard("a new client once a slot is free", async {
        loop {
            if let Ok(a) = other.lookup(&addr).await {
                if cc::call_hello(&other, &a).await.is_ok() {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// `timeouts.hello_ms`: a connection that sends nothing, and one that sends
/// the preamble and half a Hello frame and stalls (slowloris), are both
/// closed by the server; meanwhile a client is served.
async fn silent_and_slowloris_are_closed(proto: &str) {
    let server = server_with(proto, r#"{"timeouts": {"hello_ms": 200}}"#).await;
    let addr = server.address().to_string();
    let mut silent = raw_connect(&addr).await.unwrap();
    let mut slow = raw_connect(&addr).await.unwrap();
    let mut half = PREAMBLE.to_vec();
    half.extend_from_slice(&preamble_and_hello()[4..4 + 4 + HEADER_LEN / 2]);
    slow.write_all(&half).await.unwrap();

    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;

    assert_eq!(
        wait_for_close(&mut silent, "the server closing a silent connection").await,
        cc::Closed::Eof(0)
    );
    wait_for_close(&mut slow, "the server closing a slowloris connection").await;
    // The well-behaved client's connection outlived the Hello timeout.
    assert_hello(&client, &address).await;
}

/// `max_in_flight_per_connection`: a peer writes 500 requests without
/// waiting; no more than 4 of its handlers ever run at once (the reader stops
/// reading, so the rest wait in socket buffers), another client is served
/// while those 4 are stuck, and when the handlers may go on, all 500 are
/// answered.
async fn flood_is_held_to_in_flight_limit(proto: &str) {
    const LIMIT: usize = 4;
    const N: u64 = 500;
    let server = server_with(
        proto,
        &format!(r#"{{"max_in_flight_per_connection": {LIMIT}}}"#),
    )
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let stats = Arc::new(Concurrency::default());
    let (running_tx, mut running) = watch::channel(0usize);
    let running_tx = Arc::new(running_tx);
    register_gated(&server, &gate, &stats, &running_tx);

    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    for seq in 1..=N {
        bytes.extend_from_slice(&request("gated", seq, false, &seq.to_le_bytes()));
    }
    let (mut rd, mut wr) = tokio::io::split(raw);
    let writer = tokio::spawn(async move {
        wr.write_all(&bytes).await.unwrap();
        wr
    });
    guard(
        "the first handlers to start",
        running.wait_for(|n| *n == LIMIT),
    )
    .await
    .unwrap();

    // The flood is stuck at its limit; another client is not.
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    assert_eq!(stats.most.load(Ordering::Acquire), LIMIT);

    gate.add_permits(N as usize);
    let mut preamble = [0u8; 4];
    guard("the preamble", rd.read_exact(&mut preamble))
        .await
        .unwrap();
    raw = rd.unsplit(guard("the writer", writer).await.unwrap());
    let mut seen = vec![false; N as usize + 1];
    for _ in 0..N {
        let msg = read_message(&mut raw).await;
        let h = Header::decode(&msg).unwrap();
        assert_eq!(h.kind, Kind::Response);
        assert_eq!(&msg[HEADER_LEN..], &h.seq.to_le_bytes());
        assert!(!std::mem::replace(&mut seen[h.seq as usize], true), "twice");
    }
    assert_eq!(stats.done.load(Ordering::Acquire), N as usize);
    assert!(
        stats.most.load(Ordering::Acquire) <= LIMIT,
        "{} handlers of one connection ran at once, over the limit of {LIMIT}",
        stats.most.load(Ordering::Acquire)
    );
}

/// A flood of one-way RPCs (no response ever) is held to the same limit and
/// every one of them runs.
async fn one_way_flood_is_held_to_in_flight_limit(proto: &str) {
    const LIMIT: usize = 8;
    const N: u64 = 20_000;
    let server = server_with(
        proto,
        &format!(r#"{{"max_in_flight_per_connection": {LIMIT}}}"#),
    )
    .await;
    let gate = Arc::new(Semaphore::new(0));
    let stats = Arc::new(Concurrency::default());
    let (running_tx, mut running) = watch::channel(0usize);
    let running_tx = Arc::new(running_tx);
    register_gated(&server, &gate, &stats, &running_tx);

    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    for seq in 1..=N {
        bytes.extend_from_slice(&request("gated_one_way", seq, true, b"x"));
    }
    let writer = tokio::spawn(async move {
        raw.write_all(&bytes).await.unwrap();
        raw
    });
    guard(
        "the first handlers to start",
        running.wait_for(|n| *n == LIMIT),
    )
    .await
    .unwrap();
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;

    gate.add_permits(N as usize);
    let _raw = guard("the writer", writer).await.unwrap();
    let mut finished = stats.finished.subscribe();
    guard(
        "every one-way handler to run",
        finished.wait_for(|n| *n == N as usize),
    )
    .await
    .unwrap();
    assert!(stats.most.load(Ordering::Acquire) <= LIMIT);
}

/// A peer that sends requests for large responses and never reads (50 MiB
/// of them, against a `max_queued_response_bytes` of 1 MiB): the server
/// serves another client meanwhile, and once the peer does read, every
/// response arrives, none lost to the budget.
async fn reader_that_never_reads(proto: &str) {
    const N: u64 = 200;
    const SIZE: usize = 256 * 1024; // 50 MiB of responses in all
    let server = server_with(proto, r#"{"max_queued_response_bytes": 1048576}"#).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h2 = handled.clone();
    server
        .register_raw("big", RpcOptions::default(), move |h: Handle, _p| {
            let handled = h2.clone();
            async move {
                handled.fetch_add(1, Ordering::AcqRel);
                h.respond_raw(&vec![7u8; SIZE]).await
            }
        })
        .unwrap();
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    for seq in 1..=N {
        bytes.extend_from_slice(&request("big", seq, false, b""));
    }
    raw.write_all(&bytes).await.unwrap();

    // While the greedy peer's responses are stuck, others are served.
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    for _ in 0..10 {
        assert_hello(&client, &address).await;
    }
    // How many responses were produced by now is not asserted: it depends
    // on the kernel's socket buffers and on scheduling. That the reader
    // stops over the budget is pinned by the unit tests of `limits.rs`.

    let mut preamble = [0u8; 4];
    guard("the preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    for _ in 0..N {
        let msg = read_message(&mut raw).await;
        assert_eq!(msg.len(), HEADER_LEN + SIZE);
    }
    assert_eq!(handled.load(Ordering::Acquire), N as usize);
    drop(raw);
    assert_hello(&client, &address).await;
}

/// Remote shutdown is refused unless enabled: a raw peer's Shutdown frame
/// gets an error frame, and the server keeps serving.
async fn raw_shutdown_is_refused(proto: &str) {
    let server = server_with(proto, "{}").await;
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    let mut h = Header::new(Kind::Shutdown);
    h.seq = 3;
    bytes.extend_from_slice(&length_prefixed(&h.encode(), b""));
    raw.write_all(&bytes).await.unwrap();
    let mut preamble = [0u8; 4];
    guard("the preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    let msg = read_message(&mut raw).await;
    let answer = Header::decode(&msg).unwrap();
    assert_eq!((answer.kind, answer.seq), (Kind::Error, 3));
    assert_eq!(answer.status, courier::frame::Status::ShutdownRefused);
    assert!(!server.is_finalized());
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    assert!(matches!(
        address.shutdown().await,
        Err(Error::ShutdownRefused { .. })
    ));
}

/// `max_connections` with engines only, for every protocol (quic and shm
/// included, whose connections a raw socket cannot open): with the slots
/// taken by two clients, a third one's call fails with a clear error (its
/// connection is closed by the server) while the first two are served;
/// once one of them finalizes, the third gets in.
async fn extra_client_is_refused(proto: &str) {
    let server = server_with(proto, r#"{"max_connections": 2}"#).await;
    let a = cc::client(proto).await;
    let b = cc::client(proto).await;
    let to_a = cc::lookup(&a, &server).await;
    let to_b = cc::lookup(&b, &server).await;
    assert_hello(&a, &to_a).await;
    assert_hello(&b, &to_b).await;

    let c = cc::client(proto).await;
    let addr = server.address().to_string();
    // The connection is refused when the server accepts it: the lookup may
    // still succeed (the transport connected), the call may not.
    let refused = match guard("lookup over the limit", c.lookup(&addr)).await {
        Err(e) => e,
        Ok(to_c) => cc::call_hello(&c, &to_c).await.unwrap_err(),
    };
    assert!(
        matches!(refused, Error::ConnectionLost { .. } | Error::Transport(_)),
        "{refused:?}"
    );
    assert_hello(&a, &to_a).await;
    assert_hello(&b, &to_b).await;

    guard("finalize a", a.finalize()).await;
    guard("a new client once a slot is free", async {
        loop {
            if let Ok(to_c) = c.lookup(&addr).await {
                if cc::call_hello(&c, &to_c).await.is_ok() {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}

macro_rules! every_protocol_tests {
    ($($proto:ident),* $(,)?) => {
        mod every_protocol {$(
            mod $proto {
                #[tokio::test(flavor = "multi_thread")]
                async fn extra_client_is_refused() {
                    super::super::extra_client_is_refused(stringify!($proto)).await;
                }
            }
        )*}
    };
}

courier_conformance::for_each_protocol!(every_protocol_tests);

macro_rules! greedy_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread")]
            async fn extra_connection_is_closed() {
                super::extra_connection_is_closed(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn silent_and_slowloris_are_closed() {
                super::silent_and_slowloris_are_closed(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn flood_is_held_to_in_flight_limit() {
                super::flood_is_held_to_in_flight_limit(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn one_way_flood_is_held_to_in_flight_limit() {
                super::one_way_flood_is_held_to_in_flight_limit(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn reader_that_never_reads() {
                super::reader_that_never_reads(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn raw_shutdown_is_refused() {
                super::raw_shutdown_is_refused(PROTO).await;
            }
        }
    )*};
}

courier_conformance::for_each_stream_protocol!(greedy_tests);
