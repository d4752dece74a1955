//! Statistics over the protocol: what the engine counts on each side of a
//! call (outcomes by kind, bytes, phases), per peer, and the built-in
//! statistics RPC, served only when configured.
//!
//! The server counts a request when its handle is dropped, which may come
//! just after the caller has its answer: the scenarios wait for the
//! server's figures to settle (a condition, bounded by the hang guard),
//! never for a time.

use std::time::Duration;

use courier::stats::{SideStats, Stats};
use courier::{Bytes, Engine, Error, Handle, RpcOptions};

use crate::guard;

/// An engine of `proto` that times phases and serves its statistics.
async fn observed_server(proto: &str) -> Engine {
    Engine::builder(proto)
        .stats_timing(true)
        .serve_stats(true)
        .build()
        .await
        .unwrap_or_else(|e| panic!("building a {proto} server with statistics: {e}"))
}

/// Waits until `engine`'s statistics satisfy `settled`, and returns them.
pub async fn settled(engine: &Engine, what: &str, settled: impl Fn(&Stats) -> bool) -> Stats {
    guard(what, async {
        loop {
            let stats = engine.stats();
            if settled(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

fn served<'a>(stats: &'a Stats, rpc: &str) -> &'a SideStats {
    stats
        .rpc(rpc, 0)
        .and_then(|r| r.served.as_ref())
        .unwrap_or_else(|| panic!("no served statistics for '{rpc}': {stats:#?}"))
}

fn called<'a>(stats: &'a Stats, rpc: &str) -> &'a SideStats {
    stats
        .rpc(rpc, 0)
        .and_then(|r| r.called.as_ref())
        .unwrap_or_else(|| panic!("no called statistics for '{rpc}': {stats:#?}"))
}

/// Every request the server had ended (nothing in flight on any RPC).
fn quiet(stats: &Stats) -> bool {
    stats
        .rpcs
        .iter()
        .filter_map(|r| r.served.as_ref())
        .all(|s| s.in_flight == 0)
}

/// Calls that answer, fail, panic, go to no RPC, and go one way are each
/// counted on both sides as what they were, with their payload bytes and
/// (timing on) one latency per phase each.
pub async fn counts_outcomes_and_bytes(proto: &str) {
    let server = observed_server(proto).await;
    server
        .register_raw(
            "stats.echo",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move { h.respond_raw(&p).await },
        )
        .unwrap();
    server
        .register("stats.fail", |_h: Handle, (): ()| async move {
            Err::<(), _>("no")
        })
        .unwrap();
    server
        .register("stats.panic", |_h: Handle, (): ()| async move {
            if true {
                panic!("on purpose");
            }
        })
        .unwrap();
    server
        .register_with(
            "stats.note",
            RpcOptions::default().disable_response(),
            |_h: Handle, (): ()| async move {},
        )
        .unwrap();
    let client = Engine::builder(proto)
        .client()
        .stats_timing(true)
        .build()
        .await
        .unwrap();
    let at = crate::lookup(&client, &server).await;
    let echo = client.remote_raw("stats.echo");
    for len in [0usize, 10, 1000] {
        let back = guard("echo", echo.on(&at).call(&vec![7u8; len])).await;
        assert_eq!(back.map(|b| b.len()).ok(), Some(len));
    }
    let fail = client.remote::<(), ()>("stats.fail");
    assert!(matches!(
        guard("fail", fail.on(&at).call(&())).await,
        Err(Error::Remote { .. })
    ));
    let panic = client.remote::<(), ()>("stats.panic");
    assert!(matches!(
        guard("panic", panic.on(&at).call(&())).await,
        Err(Error::RemotePanic { .. })
    ));
    let none = client.remote::<(), ()>("stats.none");
    assert!(matches!(
        guard("none", none.on(&at).call(&())).await,
        Err(Error::NoSuchRpc { .. })
    ));
    let note = client.remote::<(), ()>("stats.note").disable_response();
    guard("note", note.on(&at).call(&())).await.unwrap();

    let s = settled(&server, "the server's counts", |s| {
        quiet(s)
            && s.rpc("stats.note", 0)
                .and_then(|r| r.served.as_ref())
                .is_some_and(|n| n.ok == 1)
    })
    .await;
    let e = served(&s, "stats.echo");
    assert_eq!((e.calls, e.ok, e.in_flight), (3, 3, 0), "{e:#?}");
    assert_eq!((e.bytes_in, e.bytes_out), (1010, 1010), "{e:#?}");
    for phase in ["queue", "handler", "respond"] {
        let l = e
            .phase(phase)
            .unwrap_or_else(|| panic!("no {phase} phase: {e:#?}"));
        assert_eq!(l.count, 3, "{phase}: {l:#?}");
        assert!(
            l.min_us <= l.p50_us && l.p50_us <= l.max_us,
            "{phase}: {l:#?}"
        );
    }
    assert_eq!(served(&s, "stats.fail").errors_of("failed"), 1);
    assert_eq!(served(&s, "stats.panic").errors_of("panicked"), 1);
    assert_eq!(s.unknown_rpc_requests, 1);
    assert!(s.rpc("stats.none", 0).is_none(), "unknown ids are not kept");
    assert!(s.timing);
    let peer = s
        .peers
        .iter()
        .find(|p| p.requests >= 6)
        .unwrap_or_else(|| panic!("no peer with the 6 requests: {:#?}", s.peers));
    assert!(peer.bytes_in > 1010 && peer.errors_sent >= 3, "{peer:#?}");

    let c = client.stats();
    let e = called(&c, "stats.echo");
    assert_eq!((e.calls, e.ok, e.in_flight), (3, 3, 0), "{e:#?}");
    assert_eq!((e.bytes_in, e.bytes_out), (1010, 1010), "{e:#?}");
    assert_eq!(e.phase("round_trip").map(|l| l.count), Some(3));
    assert_eq!(called(&c, "stats.fail").errors_of("failed"), 1);
    assert_eq!(called(&c, "stats.panic").errors_of("panicked"), 1);
    assert_eq!(called(&c, "stats.none").errors_of("no_such_rpc"), 1);
    assert_eq!(called(&c, "stats.note").ok, 1);
    // The JSON round-trips.
    assert_eq!(Stats::from_json(&c.to_json()).ok().as_ref(), Some(&c));
    client.finalize().await;
    server.finalize().await;
}

/// A call given up by its timeout is counted as a deadline on the caller,
/// and, once its handler is dropped, as cancelled or past its deadline on
/// the server.
pub async fn counts_timeouts(proto: &str) {
    let server = observed_server(proto).await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    server
        .register("stats.wait", move |h: Handle, (): ()| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                h.respond(&()).await
            }
        })
        .unwrap();
    let client = Engine::builder(proto)
        .client()
        .stats(true)
        .build()
        .await
        .unwrap();
    let at = crate::lookup(&client, &server).await;
    let wait = client.remote::<(), ()>("stats.wait");
    let r = guard(
        "a call that times out",
        wait.on(&at).timeout(Duration::from_millis(50)).call(&()),
    )
    .await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    crate::engine::recv(&mut started_rx, "the handler's start").await;
    let s = settled(&server, "the server's count of the cancelled call", quiet).await;
    let w = served(&s, "stats.wait");
    assert_eq!(
        w.errors_of("cancelled") + w.errors_of("deadline"),
        1,
        "{w:#?}"
    );
    let c = called(&client.stats(), "stats.wait").clone();
    assert_eq!((c.errors_of("deadline"), c.in_flight), (1, 0), "{c:#?}");
    client.finalize().await;
    server.finalize().await;
}

/// The statistics RPC answers an engine configured to serve it, with the
/// figures `Engine::stats` gives, and refuses otherwise with a message
/// that says how to turn it on.
pub async fn stats_rpc(proto: &str) {
    let served_engine = observed_server(proto).await;
    crate::register_hello(&served_engine);
    let silent = crate::server(proto).await;
    let client = crate::client(proto).await;
    let at = crate::lookup(&client, &served_engine).await;
    crate::assert_hello(&client, &at).await;
    let remote = guard("stats over the RPC", at.stats()).await.unwrap();
    assert_eq!(remote.address, served_engine.address().to_string());
    assert_eq!(remote.protocol, served_engine.protocol());
    let hello = remote.rpc("hello", 0).and_then(|r| r.served.as_ref());
    assert_eq!(hello.map(|h| h.calls), Some(1), "{remote:#?}");

    let at = crate::lookup(&client, &silent).await;
    match guard("stats of an engine that does not serve them", at.stats()).await {
        Err(Error::Remote { message, .. }) => {
            assert!(
                message.contains("does not serve its statistics"),
                "{message}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    client.finalize().await;
    silent.finalize().await;
    served_engine.finalize().await;
}

/// An engine built with the defaults counts, without timing;
/// `stats(false)` counts nothing, and says so.
pub async fn counting_by_default(proto: &str) {
    let counting = crate::server(proto).await;
    crate::register_hello(&counting);
    let quiet = Engine::builder(proto).stats(false).build().await.unwrap();
    crate::register_hello(&quiet);
    let client = crate::client(proto).await;
    for server in [&quiet, &counting] {
        let at = crate::lookup(&client, server).await;
        crate::assert_hello(&client, &at).await;
    }
    let s = quiet.stats();
    assert!(!s.counters && !s.timing, "{s:#?}");
    assert!(s.rpcs.is_empty(), "nothing counted: {:#?}", s.rpcs);
    assert_eq!(called(&client.stats(), "hello").ok, 2);
    let s = settled(&counting, "the counting server's figures", |s| {
        s.rpc("hello", 0)
            .and_then(|r| r.served.as_ref())
            .is_some_and(|h| h.ok == 1)
    })
    .await;
    assert!(s.counters && !s.timing, "{s:#?}");
    let hello = served(&s, "hello");
    assert!(hello.phases.is_empty(), "no timing: {hello:#?}");
    client.finalize().await;
    counting.finalize().await;
    quiet.finalize().await;
}
