//! Payloads of any size over the protocol: arguments and responses over
//! the connection's largest message travel by the bulk path on their own
//! (`docs/bulk.md`, "Payloads of any size"), typed and raw, both ways, from
//! async and blocking handlers; one exactly at the limit stays inline.
//!
//! Every engine here has a 1 MiB largest message ([`SMALL_MAX`]), so that
//! payloads of two and three times it move little memory.

use courier::stats::Stats;
use courier::{blocking, Bytes, Engine, Handle, RpcOptions};

use crate::engine::SMALL_MAX;
use crate::{guard, pattern, HANG_GUARD};

/// Payload sizes over the largest message: twice and three times it.
pub const OVER: [usize; 2] = [2 * SMALL_MAX, 3 * SMALL_MAX];

/// A position-sensitive checksum (a shifted or repeated chunk changes it).
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An engine of `proto` (a server unless `client`) whose largest message
/// is [`SMALL_MAX`].
pub async fn small(proto: &str, client: bool) -> Engine {
    let mut builder = Engine::builder(proto).max_message_size(SMALL_MAX);
    if client {
        builder = builder.client();
    }
    builder
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot build a {proto} engine with 1 MiB messages: {e}"))
}

/// Registers, on `engine`: `digest_raw` and `digest` (answer the length
/// and [`checksum`] of their argument bytes), `produce_raw` and `produce`
/// (answer [`pattern`]`(n, 9)` for the `n` they are given), and
/// `echo_raw` (answers its payload).
pub fn register_overflow_rpcs(engine: &Engine) {
    engine
        .register_raw(
            "digest_raw",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move {
                let mut answer = (p.len() as u64).to_le_bytes().to_vec();
                answer.extend_from_slice(&checksum(&p).to_le_bytes());
                h.respond_raw(&answer).await
            },
        )
        .unwrap();
    engine
        .register("digest", |h: Handle, data: Vec<u8>| async move {
            h.respond(&(data.len() as u64, checksum(&data))).await
        })
        .unwrap();
    engine
        .register_raw(
            "produce_raw",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move {
                let n = usize::from_le_bytes(p[..8].try_into().unwrap());
                h.respond_raw(&pattern(n, 9)).await
            },
        )
        .unwrap();
    engine
        .register("produce", |h: Handle, n: usize| async move {
            h.respond(&pattern(n, 9)).await
        })
        .unwrap();
    crate::engine::register_echo_raw(engine);
}

fn digest_of(answer: &[u8]) -> (u64, u64) {
    let len = u64::from_le_bytes(answer[..8].try_into().unwrap());
    let sum = u64::from_le_bytes(answer[8..16].try_into().unwrap());
    (len, sum)
}

/// Payloads by the bulk path that `engine` sent and received so far.
pub fn by_bulk(stats: &Stats) -> (u64, u64) {
    (stats.bulk.payloads_sent, stats.bulk.payloads_received)
}

/// Raw arguments of 2 and 3 times the largest message reach the handler
/// whole; the client's region is withdrawn once each call is over.
pub async fn raw_arguments(proto: &str) {
    let server = small(proto, false).await;
    register_overflow_rpcs(&server);
    let client = small(proto, true).await;
    let address = crate::lookup(&client, &server).await;
    let digest = client.remote_raw("digest_raw");
    for (i, &n) in OVER.iter().enumerate() {
        let data = pattern(n, i as u8);
        let answer = guard("raw arguments", digest.on(&address).call(&data))
            .await
            .unwrap();
        assert_eq!(digest_of(&answer), (n as u64, checksum(&data)), "{n} bytes");
        // Without a copy, from bytes the engine may keep.
        let shared = Bytes::from(data.clone());
        let answer = guard("raw arguments", digest.on(&address).call_bytes(shared))
            .await
            .unwrap();
        assert_eq!(digest_of(&answer), (n as u64, checksum(&data)), "{n} bytes");
    }
    let stats = client.stats();
    assert_eq!(by_bulk(&stats), (4, 0), "{:?}", stats.bulk);
    assert_eq!(stats.bulk.regions, 0, "the regions are withdrawn");
    let called = stats.rpc("digest_raw", 0).unwrap().called.clone().unwrap();
    assert_eq!(called.bytes_out, 2 * (OVER[0] + OVER[1]) as u64);
    let stats = crate::stats::settled(&server, "the server counts the requests", |s| {
        s.rpc("digest_raw", 0)
            .and_then(|r| r.served.as_ref())
            .is_some_and(|s| s.ok == 4)
    })
    .await;
    assert_eq!(by_bulk(&stats), (0, 4), "{:?}", stats.bulk);
    let served = stats.rpc("digest_raw", 0).unwrap().served.clone().unwrap();
    assert_eq!(
        served.bytes_in,
        2 * (OVER[0] + OVER[1]) as u64,
        "the real length"
    );
    assert_eq!(stats.bulk.bytes_pulled, 2 * (OVER[0] + OVER[1]) as u64);
}

/// Typed arguments over the largest message: encoded once, exposed as
/// they are, decoded by the handler as usual.
pub async fn typed_arguments(proto: &str) {
    let server = small(proto, false).await;
    register_overflow_rpcs(&server);
    let client = small(proto, true).await;
    let address = crate::lookup(&client, &server).await;
    let digest = client.remote::<Vec<u8>, (u64, u64)>("digest");
    for (i, &n) in OVER.iter().enumerate() {
        let data = pattern(n, 20 + i as u8);
        let got = guard("typed arguments", digest.on(&address).call(&data))
            .await
            .unwrap();
        assert_eq!(got, (n as u64, checksum(&data)));
    }
    assert_eq!(by_bulk(&client.stats()), (2, 0));
}

/// Raw and typed responses of 2 and 3 times the largest message reach
/// their callers whole; the server frees each once its caller released it.
pub async fn responses(proto: &str) {
    let server = small(proto, false).await;
    register_overflow_rpcs(&server);
    let client = small(proto, true).await;
    let address = crate::lookup(&client, &server).await;
    let produce_raw = client.remote_raw("produce_raw");
    let produce = client.remote::<usize, Vec<u8>>("produce");
    for &n in &OVER {
        let got = guard(
            "raw response",
            produce_raw.on(&address).call(&n.to_le_bytes()),
        )
        .await
        .unwrap();
        assert!(got[..] == pattern(n, 9)[..], "raw response of {n} bytes");
        let got = guard("typed response", produce.on(&address).call(&n))
            .await
            .unwrap();
        assert!(got == pattern(n, 9), "typed response of {n} bytes");
    }
    assert_eq!(by_bulk(&client.stats()), (0, 4));
    // Each release frees its region.
    let stats = crate::stats::settled(&server, "the server frees every response", |s| {
        s.bulk.held_responses == 0 && s.bulk.regions == 0
    })
    .await;
    assert_eq!(by_bulk(&stats), (4, 0));
    let served = stats.rpc("produce_raw", 0).unwrap().served.clone().unwrap();
    assert_eq!(
        served.bytes_out,
        (OVER[0] + OVER[1]) as u64,
        "the real length"
    );
}

/// Both ways in one call: a raw echo of three times the largest message,
/// with a deadline (an extension block before the overflow entry).
pub async fn both_ways(proto: &str) {
    let server = small(proto, false).await;
    register_overflow_rpcs(&server);
    let client = small(proto, true).await;
    let address = crate::lookup(&client, &server).await;
    let data = pattern(OVER[1], 33);
    let echo = client.remote_raw("echo_raw").timeout(HANG_GUARD);
    let back = guard("echo", echo.on(&address).call(&data)).await.unwrap();
    assert!(back[..] == data[..]);
    assert_eq!(by_bulk(&client.stats()), (1, 1));
}

/// A payload that makes a message of exactly the largest size stays
/// inline, both ways; one byte more goes by the bulk path.
pub async fn at_the_limit_stays_inline(proto: &str) {
    let server = small(proto, false).await;
    register_overflow_rpcs(&server);
    let client = small(proto, true).await;
    let address = crate::lookup(&client, &server).await;
    let echo = client.remote_raw("echo_raw");
    let fits = pattern(SMALL_MAX - courier::frame::HEADER_LEN, 3);
    let back = guard("echo at the limit", echo.on(&address).call(&fits))
        .await
        .unwrap();
    assert!(back[..] == fits[..]);
    assert_eq!(by_bulk(&client.stats()), (0, 0), "inline both ways");
    let over = pattern(SMALL_MAX - courier::frame::HEADER_LEN + 1, 4);
    let back = guard("echo one byte over", echo.on(&address).call(&over))
        .await
        .unwrap();
    assert!(back[..] == over[..]);
    assert_eq!(
        by_bulk(&client.stats()),
        (1, 1),
        "by the bulk path both ways"
    );
}

/// A blocking handler's response (sent from a task, `respond_detached`)
/// over the largest message reaches a blocking caller, from `respond` and
/// from `respond_raw` (there, bytes the handler encoded itself).
pub fn blocking_responses(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .max_message_size(SMALL_MAX)
        .use_progress_thread(true)
        .build()
        .unwrap();
    server
        .register_raw(
            "produce_raw",
            RpcOptions::default(),
            |h: blocking::Handle, p: Bytes| {
                let n: usize = postcard::from_bytes(&p).unwrap();
                h.respond_raw(&postcard::to_allocvec(&pattern(n, 9)).unwrap())
            },
        )
        .unwrap();
    server
        .register("produce", |h: blocking::Handle, n: usize| {
            h.respond(&pattern(n, 9))
        })
        .unwrap();
    let client = blocking::Engine::builder(proto)
        .max_message_size(SMALL_MAX)
        .build()
        .unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    for name in ["produce_raw", "produce"] {
        let produce = client.remote::<usize, Vec<u8>>(name).timeout(HANG_GUARD);
        for &n in &OVER {
            let got = produce.on(&address).call(&n).unwrap();
            assert!(got == pattern(n, 9), "{name}: a response of {n} bytes");
        }
    }
    assert_eq!(by_bulk(&client.stats()), (0, 4));
}
