//! The engine's timeouts and error paths, driven through the `chaos` layer
//! (`plugins/chaos`): lost requests and responses, resets, duplicated and
//! reordered messages, and replay from a seed. Every scenario runs over
//! `chaos+tcp`, `chaos+unix`, `chaos+mem`, `chaos+shm` and `chaos+quic`, as
//! one test per (protocol, scenario): `tcp::lost_requests_time_out`, ...
//!
//! Both engines of a scenario are built with the same chaos options (the
//! `"chaos"` object of the JSON config's `"transport"`); `direction` picks
//! whose messages are faulted, and `grace = 1` spares each connection's
//! first message, the engine's Hello. Nothing waits by sleeping: handlers
//! report through channels, and the only timeouts are the calls' own, on
//! requests that can never be answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier::{Engine, Error, Handle, Mode};
use courier_conformance::{call_hello, guard, lookup, register_hello};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// The timeout of calls whose request or response is lost. It only bounds
/// how long such a call waits: an answered call never comes near it, and a
/// lost one can never be answered, so no outcome depends on it.
const LOST_CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// An engine for `proto` (`chaos+tcp`, ...) whose chaos layer has the
/// options `chaos` (a JSON object).
async fn engine(proto: &str, mode: Mode, chaos: &str) -> Engine {
    Engine::builder(proto)
        .mode(mode)
        .config_json(&format!(r#"{{"transport": {{"chaos": {chaos}}}}}"#))
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} engine with chaos {chaos}: {e}"))
}

/// A server and a client with the same chaos options, the server with
/// `hello` and `double` (which counts its runs in `runs`), and the server's
/// address as the client looked it up.
struct Setup {
    server: Engine,
    client: Engine,
    address: courier::Address,
    runs: Arc<AtomicU64>,
}

async fn setup(proto: &str, chaos: &str) -> Setup {
    let server = engine(proto, Mode::Server, chaos).await;
    let client = engine(proto, Mode::Client, chaos).await;
    register_hello(&server);
    let runs = Arc::new(AtomicU64::new(0));
    let counter = runs.clone();
    server
        .register("double", move |h: Handle, x: u64| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { h.respond(&(2 * x)).await }
        })
        .unwrap();
    let address = lookup(&client, &server).await;
    assert!(address.to_string().starts_with(&format!("{proto}://")));
    Setup {
        server,
        client,
        address,
        runs,
    }
}

async fn double(s: &Setup, x: u64) -> courier::Result<u64> {
    let f = s.client.remote::<u64, u64>("double");
    guard("double", f.on(&s.address).call(&x)).await
}

/// Lost requests and lost responses both end in `Error::Timeout`, not in
/// a hang.
async fn lost_requests_time_out(proto: &str) {
    let s = setup(
        proto,
        r#"{"drop": 1.0, "grace": 1, "direction": "connector"}"#,
    )
    .await;
    let hello = s.client.remote::<(&str, &str), String>("hello");
    for _ in 0..2 {
        let call = hello.on(&s.address).timeout(LOST_CALL_TIMEOUT);
        let err = guard("a lost call", call.call(&("Matthieu", "Dorier")))
            .await
            .unwrap_err();
        match &err {
            Error::Timeout {
                rpc,
                address,
                after,
            } => {
                assert_eq!(rpc, "hello");
                assert_eq!(address, &s.address.to_string());
                assert_eq!(*after, LOST_CALL_TIMEOUT);
            }
            other => panic!("expected a timeout, got {other}"),
        }
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
    drop(s.server);
}

async fn lost_responses_time_out(proto: &str) {
    // The accepting side sends no Hello: its first message is already a
    // response, so no grace.
    let server = engine(
        proto,
        Mode::Server,
        r#"{"drop": 1.0, "direction": "acceptor"}"#,
    )
    .await;
    let client = engine(
        proto,
        Mode::Client,
        r#"{"drop": 1.0, "direction": "acceptor"}"#,
    )
    .await;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    server
        .register("noted", move |h: Handle, x: u64| {
            let _ = arrived_tx.send(x);
            async move { h.respond(&x).await }
        })
        .unwrap();
    let address = lookup(&client, &server).await;
    let noted = client.remote::<u64, u64>("noted");
    let call = noted.on(&address).timeout(LOST_CALL_TIMEOUT);
    let (result, ran) = tokio::join!(
        guard("a call whose response is lost", call.call(&7)),
        async { guard("the request to arrive", arrived.recv()).await }
    );
    assert_eq!(ran, Some(7), "the request arrived and the handler ran");
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "expected a timeout, got {result:?}"
    );
}

/// A reset fails the call that hit it and every call in flight on the
/// connection, naming the peer; the next call opens a new connection.
async fn a_reset_fails_calls_in_flight_and_the_next_call_reconnects(proto: &str) {
    // The client's Hello is message 1, the parked call's request message 2:
    // the next request resets the connection.
    let s = setup(proto, r#"{"reset_after": 2, "direction": "connector"}"#).await;
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    s.server
        .register("park", move |h: Handle, (): ()| {
            let _ = arrived_tx.send(());
            async move {
                // Answers only after the connection is gone (never, here).
                std::future::pending::<()>().await;
                h.respond(&()).await
            }
        })
        .unwrap();
    let park = s.client.remote::<(), ()>("park");
    let parked = {
        let callable = park.on(&s.address);
        tokio::spawn(async move { callable.call(&()).await })
    };
    guard("the parked request to arrive", arrived.recv())
        .await
        .unwrap();

    let peer = s.address.to_string();
    let is_reset = |err: &Error| match err {
        Error::ConnectionLost { address, reason } => {
            address == &peer && reason.contains("reset by the chaos layer")
        }
        _ => false,
    };
    let err = call_hello(&s.client, &s.address).await.unwrap_err();
    assert!(is_reset(&err), "the call that hit the reset: {err}");
    let err = guard("the parked call", parked).await.unwrap().unwrap_err();
    assert!(is_reset(&err), "the call in flight: {err}");
    assert!(err.to_string().contains(&peer), "{err}");

    // A new connection (its own Hello and one request before its reset).
    assert_eq!(
        call_hello(&s.client, &s.address).await.unwrap(),
        "Good bye Matthieu"
    );
}

/// Every request and every response delivered twice: each call still
/// returns its own value, the stray copies are ignored.
async fn duplicates_are_harmless(proto: &str) {
    let s = setup(proto, r#"{"duplicate": 1.0, "grace": 1, "seed": 5}"#).await;
    const CALLS: u64 = 20;
    for x in 0..CALLS {
        assert_eq!(double(&s, x).await.unwrap(), 2 * x);
    }
    // The server reads a request's copy right after the request itself, so
    // when the last answer came, it had run every copy but the last one.
    let runs = s.runs.load(Ordering::SeqCst);
    assert!(
        runs > CALLS,
        "the handler ran {runs} times for {CALLS} calls: no duplicate arrived"
    );
    assert!(runs >= 2 * CALLS - 1, "{runs}");
    let mut calls = JoinSet::new();
    for x in 0..CALLS {
        let f = s.client.remote::<u64, u64>("double");
        let callable = f.on(&s.address);
        calls.spawn(async move { (x, callable.call(&x).await) });
    }
    while let Some(done) = guard("concurrent calls", calls.join_next()).await {
        let (x, r) = done.unwrap();
        assert_eq!(r.unwrap(), 2 * x);
    }
}

/// Requests and responses held back and delivered after the next one:
/// with many calls in flight, each still gets its own answer.
async fn reordered_calls_complete_with_their_own_values(proto: &str) {
    let s = setup(proto, r#"{"reorder": 0.5, "grace": 1, "seed": 3}"#).await;
    let mut calls = JoinSet::new();
    for x in 0..64u64 {
        let f = s.client.remote::<u64, u64>("double");
        let callable = f.on(&s.address);
        calls.spawn(async move { (x, callable.call(&x).await) });
    }
    let mut answered = 0;
    while let Some(done) = guard("reordered calls", calls.join_next()).await {
        let (x, r) = done.unwrap();
        assert_eq!(r.unwrap(), 2 * x, "call {x} got another call's answer");
        answered += 1;
    }
    assert_eq!(answered, 64);
    // One call at a time: a held message has no next one, and goes on alone
    // when its window ends.
    for x in 0..5 {
        assert_eq!(double(&s, x).await.unwrap(), 2 * x);
    }
}

/// What happened to each of a sequence of calls.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Answered,
    Reset,
}

/// Runs 40 sequential calls on fresh engines whose connections reset at
/// random, from `seed`.
async fn outcomes(proto: &str, seed: u64) -> Vec<Outcome> {
    let chaos =
        format!(r#"{{"reset": 0.15, "grace": 1, "direction": "connector", "seed": {seed}}}"#);
    let s = setup(proto, &chaos).await;
    let mut out = Vec::new();
    for x in 0..40 {
        out.push(match double(&s, x).await {
            Ok(v) => {
                assert_eq!(v, 2 * x);
                Outcome::Answered
            }
            Err(Error::ConnectionLost { reason, .. }) if reason.contains("chaos layer") => {
                Outcome::Reset
            }
            Err(other) => panic!("call {x}: {other}"),
        });
    }
    out
}

/// The same seed replays the same sequence of outcomes; another seed gives
/// another one.
async fn the_same_seed_gives_the_same_outcomes(proto: &str) {
    let first = outcomes(proto, 1).await;
    assert_eq!(
        outcomes(proto, 1).await,
        first,
        "seed 1 replayed differently"
    );
    assert_ne!(outcomes(proto, 2).await, first, "seeds 1 and 2 agree");
    let resets = first.iter().filter(|o| **o == Outcome::Reset).count();
    assert!(
        (1..40).contains(&resets),
        "{resets} resets in 40 calls: {first:?}"
    );
}

/// No options: the layer is invisible.
async fn no_options_change_nothing(proto: &str) {
    let s = setup(proto, "{}").await;
    assert_eq!(s.client.protocol(), proto);
    assert_eq!(
        call_hello(&s.client, &s.address).await.unwrap(),
        "Good bye Matthieu"
    );
    for x in 0..10 {
        assert_eq!(double(&s, x).await.unwrap(), 2 * x);
    }
}

/// A chaos engine calls a plain engine of the inner protocol: the bytes on
/// the wire are the same; the client only puts `chaos+` before the address.
async fn a_chaos_client_calls_a_plain_server(proto: &str) {
    let inner = proto.strip_prefix("chaos+").unwrap();
    let server = courier_conformance::server(inner).await;
    register_hello(&server);
    let client = engine(proto, Mode::Client, r#"{"duplicate": 1.0, "grace": 1}"#).await;
    let address = guard(
        "lookup",
        client.lookup(&format!("chaos+{}", server.address())),
    )
    .await
    .unwrap();
    // The server's responses are duplicated by the client's end.
    for _ in 0..3 {
        assert_eq!(
            call_hello(&client, &address).await.unwrap(),
            "Good bye Matthieu"
        );
    }
}

macro_rules! chaos_suite {
    ($($module:ident => $proto:literal),* $(,)?) => {$(
        mod $module {
            const PROTO: &str = $proto;

            #[tokio::test]
            async fn no_options_change_nothing() {
                super::no_options_change_nothing(PROTO).await;
            }

            #[tokio::test]
            async fn a_chaos_client_calls_a_plain_server() {
                super::a_chaos_client_calls_a_plain_server(PROTO).await;
            }

            #[tokio::test]
            async fn lost_requests_time_out() {
                super::lost_requests_time_out(PROTO).await;
            }

            #[tokio::test]
            async fn lost_responses_time_out() {
                super::lost_responses_time_out(PROTO).await;
            }

            #[tokio::test]
            async fn a_reset_fails_calls_in_flight_and_the_next_call_reconnects() {
                super::a_reset_fails_calls_in_flight_and_the_next_call_reconnects(PROTO).await;
            }

            #[tokio::test]
            async fn duplicates_are_harmless() {
                super::duplicates_are_harmless(PROTO).await;
            }

            #[tokio::test]
            async fn reordered_calls_complete_with_their_own_values() {
                super::reordered_calls_complete_with_their_own_values(PROTO).await;
            }

            #[tokio::test]
            async fn the_same_seed_gives_the_same_outcomes() {
                super::the_same_seed_gives_the_same_outcomes(PROTO).await;
            }
        }
    )*};
}

chaos_suite! {
    tcp => "chaos+tcp",
    unix => "chaos+unix",
    mem => "chaos+mem",
    quic => "chaos+quic",
}

#[cfg(target_os = "linux")]
chaos_suite! {
    shm => "chaos+shm",
}
