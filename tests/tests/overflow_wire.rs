//! Payloads by the bulk path, seen from a raw peer on the wire
//! (`docs/wire-format.md`, 2.3; `docs/bulk.md`, "Payloads of any size"),
//! on the stream protocols a test can speak byte by byte (tcp, unix):
//!
//! * a server pulling a request's arguments stops when the caller cancels
//!   the request, or when its deadline passes, and the handler never runs;
//!   a pull the caller refuses ends the request with `BulkRefused`;
//! * a caller's region of arguments is served while its call lasts, and
//!   withdrawn when the call is dropped or times out (a `Cancel` goes out);
//! * a server's response region is freed by `OverflowRelease`, by the
//!   connection's end, or after `timeouts.bulk_ms` without a release.
//!
//! The raw peer proves each step on the wire (the first `BulkPull` is
//! proof that a pull is under way), so nothing depends on timing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier::frame::{
    rpc_id, Extensions, Header, Kind, Overflow, Status, FLAG_EXTENSIONS, HEADER_LEN,
};
use courier::stats::Stats;
use courier::transport::framing::PREAMBLE;
use courier::{Bytes, Engine, Error, Handle, RpcOptions};
use courier_conformance::{
    self as cc, guard, length_prefixed, pattern, preamble_and_hello, raw_connect, read_message,
    RawListener, RawSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1 << 20;

/// Reads one message: its header and payload. Pings (an engine probes a
/// new connection) are answered and skipped.
async fn read_frame(raw: &mut Box<dyn RawSocket>) -> (Header, Vec<u8>) {
    loop {
        let message = read_message(raw).await;
        let header = Header::decode(&message).unwrap();
        if header.kind == Kind::Ping {
            let pong = Header {
                kind: Kind::Pong,
                ..header
            };
            raw.write_all(&length_prefixed(&pong.encode(), b""))
                .await
                .unwrap();
            continue;
        }
        return (header, message[HEADER_LEN..].to_vec());
    }
}

/// Reads frames until one satisfies `want` (frames before it are
/// returned too, for the test to look at).
async fn read_until(
    raw: &mut Box<dyn RawSocket>,
    want: impl Fn(&Header) -> bool,
) -> (Header, Vec<u8>) {
    loop {
        let (h, p) = read_frame(raw).await;
        if want(&h) {
            return (h, p);
        }
    }
}

/// The 40-byte access of a bulk frame.
fn access(region: u64, key: u128, offset: u64, len: u64) -> Vec<u8> {
    let mut b = region.to_le_bytes().to_vec();
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b
}

/// A request for `rpc` with sequence `seq` whose payload is by the bulk
/// path (`entry`), with a deadline if `budget`.
fn overflow_request(rpc: &str, seq: u64, entry: Overflow, budget: Option<Duration>) -> Vec<u8> {
    let header = Header {
        rpc: rpc_id(rpc),
        seq,
        flags: FLAG_EXTENSIONS,
        ..Header::new(Kind::Request)
    };
    let block = Extensions {
        deadline: budget,
        overflow: Some(entry),
        ..Extensions::default()
    }
    .block();
    length_prefixed(&header.encode(), &block)
}

/// Waits (under the hang guard) until `engine`'s statistics satisfy `cond`.
async fn settled(engine: &Engine, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    guard(what, async {
        loop {
            let stats = engine.stats();
            if cond(&stats) {
                return stats;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// A server with `never` (a raw handler that sets `ran`) and `produce`
/// (answers `n` bytes of the pattern), 1 MiB messages, and `json` config.
async fn server(proto: &str, json: &str) -> (Engine, Arc<AtomicBool>) {
    let server = Engine::builder(proto)
        .max_message_size(MIB)
        .config_json(json)
        .build()
        .await
        .unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    server
        .register_raw(
            "never",
            RpcOptions::default(),
            move |h: Handle, _p: Bytes| {
                flag.store(true, Ordering::SeqCst);
                async move { h.respond_raw(b"ran").await }
            },
        )
        .unwrap();
    server
        .register("produce", |h: Handle, n: usize| async move {
            h.respond_raw(&pattern(n, 9)).await
        })
        .unwrap();
    (server, ran)
}

/// A raw client connected to `server`, past both preambles and its
/// Hello (a ping's pong brings the server's preamble, which comes with the
/// server's first message).
async fn raw_client(server: &Engine) -> Box<dyn RawSocket> {
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let ping = Header {
        seq: 999_999,
        ..Header::new(Kind::Ping)
    };
    let mut hello = preamble_and_hello();
    hello.extend_from_slice(&length_prefixed(&ping.encode(), b""));
    raw.write_all(&hello).await.unwrap();
    let mut preamble = [0u8; 4];
    guard("the preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    assert_eq!(preamble, PREAMBLE);
    let (pong, _) = read_frame(&mut raw).await;
    assert_eq!((pong.kind, pong.seq), (Kind::Pong, 999_999));
    raw
}

const ENTRY: Overflow = Overflow {
    region: 7,
    key: 0x5eed,
    len: 3 * MIB as u64,
};

/// The caller cancels while the server pulls its arguments: the pull
/// stops, the handler never runs, nothing is answered, and the connection
/// serves on.
async fn pull_stops_when_the_caller_cancels(proto: &str) {
    let (server, ran) = server(proto, "{}").await;
    let mut raw = raw_client(&server).await;
    raw.write_all(&overflow_request("never", 1, ENTRY, None))
        .await
        .unwrap();
    // The pull is under way: the server asks for the first chunk of the
    // region the entry names.
    let (pull, payload) = read_frame(&mut raw).await;
    assert_eq!(pull.kind, Kind::BulkPull, "{pull:?}");
    assert_eq!(payload[..24], access(7, 0x5eed, 0, 0)[..24]);
    let cancel = Header {
        seq: 1,
        ..Header::new(Kind::Cancel)
    };
    raw.write_all(&length_prefixed(&cancel.encode(), b""))
        .await
        .unwrap();
    let stats = settled(&server, "the request ends cancelled", |s| {
        s.rpc("never", 0)
            .and_then(|r| r.served.as_ref())
            .is_some_and(|s| s.errors_of("cancelled") == 1 && s.in_flight == 0)
    })
    .await;
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
    assert_eq!(stats.bulk.payloads_received, 0);
    // The connection serves on; request 1 was never answered.
    let produce = Header {
        rpc: rpc_id("produce"),
        seq: 2,
        ..Header::new(Kind::Request)
    };
    raw.write_all(&length_prefixed(&produce.encode(), &[3]))
        .await
        .unwrap();
    let (h, p) = read_until(&mut raw, |h| h.kind != Kind::BulkPull).await;
    assert_eq!((h.kind, h.seq), (Kind::Response, 2), "{h:?}");
    assert_eq!(p, pattern(3, 9));
}

/// The request's deadline passes while the server pulls its arguments:
/// the pull stops, the handler never runs, nothing is answered.
async fn pull_stops_at_the_deadline(proto: &str) {
    let (server, ran) = server(proto, "{}").await;
    let mut raw = raw_client(&server).await;
    raw.write_all(&overflow_request(
        "never",
        1,
        ENTRY,
        Some(Duration::from_millis(200)),
    ))
    .await
    .unwrap();
    let (pull, _) = read_frame(&mut raw).await;
    assert_eq!(pull.kind, Kind::BulkPull, "{pull:?}");
    settled(&server, "the request ends at its deadline", |s| {
        s.rpc("never", 0)
            .and_then(|r| r.served.as_ref())
            .is_some_and(|s| s.errors_of("deadline") == 1 && s.in_flight == 0)
    })
    .await;
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
}

/// The caller refuses the pull (its region is gone): the request ends
/// with `BulkRefused` naming why, and the handler never runs.
async fn refused_pull_refuses_the_request(proto: &str) {
    let (server, ran) = server(proto, "{}").await;
    let mut raw = raw_client(&server).await;
    raw.write_all(&overflow_request("never", 1, ENTRY, None))
        .await
        .unwrap();
    let (pull, _) = read_frame(&mut raw).await;
    assert_eq!(pull.kind, Kind::BulkPull);
    let refusal = Header {
        kind: Kind::Error,
        status: Status::BulkRefused,
        ..pull
    };
    raw.write_all(&length_prefixed(&refusal.encode(), b"no region 7"))
        .await
        .unwrap();
    let (h, p) = read_until(&mut raw, |h| h.seq == 1).await;
    assert_eq!((h.kind, h.status), (Kind::Error, Status::BulkRefused));
    let why = String::from_utf8(p).unwrap();
    assert!(
        why.contains("cannot pull the arguments of RPC 'never'") && why.contains("no region 7"),
        "{why}"
    );
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
}

/// A raw server's side of a connection `client` opens to `address`: the
/// client's address for it, and the raw socket past both preambles.
async fn raw_server(
    client: &Engine,
    listener: &RawListener,
    address: &str,
) -> (courier::Address, Box<dyn RawSocket>) {
    let (peer, raw) = tokio::join!(guard("lookup", client.lookup(address)), async {
        let mut raw = listener.accept().await;
        let mut preamble = [0u8; 4];
        guard("the preamble", raw.read_exact(&mut preamble))
            .await
            .unwrap();
        raw.write_all(&PREAMBLE).await.unwrap();
        raw
    });
    (peer.unwrap(), raw)
}

/// Reads requests until one comes, which must carry an overflow entry
/// and no payload.
async fn overflowing_request(raw: &mut Box<dyn RawSocket>) -> (Header, Overflow) {
    let (request, block) = read_until(raw, |h| h.kind == Kind::Request).await;
    assert!(request.has_extensions());
    let (ext, rest) = Extensions::decode(&Bytes::from(block)).unwrap();
    assert!(rest.is_empty(), "a payload came with the entry");
    (request, ext.overflow.expect("an overflow entry"))
}

/// Pulls `len` bytes at `offset` of the caller's region with `seq`.
async fn pull_from(
    raw: &mut Box<dyn RawSocket>,
    entry: &Overflow,
    seq: u64,
    offset: u64,
    len: u64,
) -> (Header, Vec<u8>) {
    let pull = Header {
        seq,
        ..Header::new(Kind::BulkPull)
    };
    raw.write_all(&length_prefixed(
        &pull.encode(),
        &access(entry.region, entry.key, offset, len),
    ))
    .await
    .unwrap();
    read_until(raw, |h| h.seq == seq).await
}

/// A caller's region of arguments is served while the call lasts, and
/// withdrawn when the call is dropped: a `Cancel` goes out, and a later
/// pull is refused.
async fn callers_region_goes_with_a_dropped_call(proto: &str) {
    let (listener, address) = RawListener::bind(proto).await;
    let client = Engine::builder(proto)
        .client()
        .max_message_size(MIB)
        .build()
        .await
        .unwrap();
    let data = pattern(3 * MIB, 4);
    let (peer, mut raw) = raw_server(&client, &listener, &address).await;
    let call = client.remote_raw("put").on(&peer);
    let sent = data.clone();
    let task = tokio::spawn(async move { call.call(&sent).await });
    let (request, entry) = overflowing_request(&mut raw).await;
    assert_eq!(entry.len, data.len() as u64);
    assert_eq!(client.stats().bulk.regions, 1);
    // Served while the call lasts.
    let (h, bytes) = pull_from(&mut raw, &entry, 1_000, MIB as u64, 64).await;
    assert_eq!(h.kind, Kind::Response);
    assert_eq!(bytes, data[MIB..MIB + 64]);
    task.abort();
    let (cancel, _) = read_until(&mut raw, |h| h.kind == Kind::Cancel).await;
    assert_eq!(cancel.seq, request.seq);
    cc::until("the caller's region is withdrawn", || {
        client.stats().bulk.regions == 0
    })
    .await;
    let (h, why) = pull_from(&mut raw, &entry, 1_001, 0, 64).await;
    assert_eq!((h.kind, h.status), (Kind::Error, Status::BulkRefused));
    assert!(String::from_utf8(why).unwrap().contains("no region"));
}

/// A call whose timeout passes while the server has not pulled its
/// arguments: `Timeout`, and its region is withdrawn.
async fn callers_region_goes_at_the_timeout(proto: &str) {
    let (listener, address) = RawListener::bind(proto).await;
    let client = Engine::builder(proto)
        .client()
        .max_message_size(MIB)
        .build()
        .await
        .unwrap();
    let (peer, mut raw) = raw_server(&client, &listener, &address).await;
    let call = client
        .remote_raw("put")
        .timeout(Duration::from_millis(200))
        .on(&peer);
    let err = guard("a call nobody answers", call.call(&pattern(2 * MIB, 5)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(
        client.stats().bulk.regions,
        0,
        "the region outlived its call"
    );
    let (request, entry) = overflowing_request(&mut raw).await;
    let (cancel, _) = read_until(&mut raw, |h| h.kind == Kind::Cancel).await;
    assert_eq!(cancel.seq, request.seq);
    let (h, _) = pull_from(&mut raw, &entry, 77, 0, 8).await;
    assert_eq!((h.kind, h.status), (Kind::Error, Status::BulkRefused));
}

/// Asks `produce` for `n` bytes with `seq`: the answer is a `Response`
/// with an overflow entry and no payload; returns the entry.
async fn overflowing_response(raw: &mut Box<dyn RawSocket>, seq: u64, n: usize) -> Overflow {
    let produce = Header {
        rpc: rpc_id("produce"),
        seq,
        ..Header::new(Kind::Request)
    };
    let args = postcard::to_allocvec(&n).unwrap();
    raw.write_all(&length_prefixed(&produce.encode(), &args))
        .await
        .unwrap();
    let (h, block) = read_frame(raw).await;
    assert_eq!(
        (h.kind, h.seq, h.flags),
        (Kind::Response, seq, FLAG_EXTENSIONS)
    );
    let (ext, rest) = Extensions::decode(&Bytes::from(block)).unwrap();
    assert!(rest.is_empty());
    let entry = ext.overflow.expect("an overflow entry");
    assert_eq!(entry.len, n as u64);
    entry
}

fn held(server: &Engine) -> (u64, u64) {
    let b = server.stats().bulk;
    (b.held_responses, b.regions)
}

/// `OverflowRelease` frees a response's region: pulled before, refused
/// after.
async fn release_frees_the_response(proto: &str) {
    let (server, _) = server(proto, "{}").await;
    let mut raw = raw_client(&server).await;
    let entry = overflowing_response(&mut raw, 1, 2 * MIB).await;
    assert_eq!(held(&server), (1, 1));
    let (h, bytes) = pull_from(&mut raw, &entry, 2, MIB as u64, 100).await;
    assert_eq!(h.kind, Kind::Response);
    assert_eq!(bytes, pattern(2 * MIB, 9)[MIB..MIB + 100]);
    let release = Header {
        seq: 1,
        ..Header::new(Kind::OverflowRelease)
    };
    raw.write_all(&length_prefixed(&release.encode(), b""))
        .await
        .unwrap();
    cc::until("the release frees the region", || held(&server) == (0, 0)).await;
    let (h, _) = pull_from(&mut raw, &entry, 3, 0, 100).await;
    assert_eq!((h.kind, h.status), (Kind::Error, Status::BulkRefused));
}

/// A response never released is freed when its connection ends.
async fn connection_end_frees_the_response(proto: &str) {
    let (server, _) = server(proto, "{}").await;
    let mut raw = raw_client(&server).await;
    overflowing_response(&mut raw, 1, 2 * MIB).await;
    assert_eq!(held(&server), (1, 1));
    drop(raw);
    cc::until("the connection's end frees the region", || {
        held(&server) == (0, 0)
    })
    .await;
}

/// A response never released, on a connection that lives on, is freed
/// after `timeouts.bulk_ms`.
async fn bulk_timeout_frees_the_response(proto: &str) {
    let (server, _) = server(proto, r#"{"timeouts": {"bulk_ms": 100}}"#).await;
    let mut raw = raw_client(&server).await;
    overflowing_response(&mut raw, 1, 2 * MIB).await;
    cc::until("timeouts.bulk_ms frees the region", || {
        held(&server) == (0, 0)
    })
    .await;
    // The connection lives on.
    overflowing_response(&mut raw, 2, 2 * MIB).await;
}

macro_rules! overflow_wire_tests {
    ($($proto:ident),*) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pull_stops_when_the_caller_cancels() {
                super::pull_stops_when_the_caller_cancels(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pull_stops_at_the_deadline() {
                super::pull_stops_at_the_deadline(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refused_pull_refuses_the_request() {
                super::refused_pull_refuses_the_request(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn callers_region_goes_with_a_dropped_call() {
                super::callers_region_goes_with_a_dropped_call(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn callers_region_goes_at_the_timeout() {
                super::callers_region_goes_at_the_timeout(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_frees_the_response() {
                super::release_frees_the_response(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn connection_end_frees_the_response() {
                super::connection_end_frees_the_response(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bulk_timeout_frees_the_response() {
                super::bulk_timeout_frees_the_response(PROTO).await;
            }
        }
    )*};
}

overflow_wire_tests!(tcp, unix);
