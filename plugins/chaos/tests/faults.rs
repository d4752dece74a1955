//! The chaos layer over the in-process `mem` transport: the passthrough
//! keeps the transport contract, and each fault does what it says, the same
//! way for the same seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier_chaos::ChaosLayer;
use courier_mem::MemPlugin;
use courier_transport::{
    Address, DynReceiver, DynSender, DynTransport, PluginOptions, Registry, TransportError,
};
use serde_json::{json, Value};
use tokio::time::Instant;

const MAX: usize = 1 << 16;

/// A hang guard: no test waits on anything for longer (not a timing
/// assertion; under a paused clock it never fires before the test's own
/// timers).
async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(60), fut).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what}"),
    }
}

fn registry() -> Registry {
    Registry::new().with(MemPlugin).with_layer(ChaosLayer)
}

/// A `chaos+mem` transport with these chaos options.
fn chaos(options: Value) -> Arc<dyn DynTransport> {
    try_chaos(options).unwrap()
}

fn try_chaos(options: Value) -> Result<Arc<dyn DynTransport>, TransportError> {
    let overrides: PluginOptions = serde_json::from_value(json!({ "chaos": options })).unwrap();
    registry()
        .create("chaos+mem", &overrides, MAX)
        .map(|(_, t)| t)
}

type Half = (Box<dyn DynSender>, Box<dyn DynReceiver>);

/// One connection on `t`: (the connecting end, the accepting end).
async fn pair(t: &Arc<dyn DynTransport>) -> (Half, Half) {
    let mut listener = t
        .listen_dyn(&"chaos+mem://".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().clone();
    let (client, server) = tokio::join!(t.connect_dyn(&addr), listener.accept_dyn());
    (client.unwrap().split_dyn(), server.unwrap().split_dyn())
}

/// Sends messages numbered `0..n` (4 bytes each, little-endian), then
/// closes.
async fn send_numbered(tx: &mut Box<dyn DynSender>, n: u32) {
    for i in 0..n {
        tx.send_dyn(&[&i.to_le_bytes()]).await.unwrap();
    }
    tx.close_dyn().await.unwrap();
}

/// Receives numbered messages until the clean end.
async fn recv_numbered(rx: &mut Box<dyn DynReceiver>) -> Vec<u32> {
    let mut got = Vec::new();
    while let Some(m) = guard("recv", rx.recv_dyn()).await.unwrap() {
        got.push(u32::from_le_bytes(m[..].try_into().unwrap()));
    }
    got
}

/// What arrives of `n` numbered messages sent over one fresh connection of
/// a transport built with `options`.
async fn pattern(options: Value, n: u32) -> Vec<u32> {
    let t = chaos(options);
    let ((mut tx, _crx), (_stx, mut rx)) = pair(&t).await;
    let (_, got) = tokio::join!(send_numbered(&mut tx, n), recv_numbered(&mut rx));
    got
}

#[tokio::test]
async fn passthrough_keeps_the_transport_contract() {
    let t = chaos(json!({}));
    assert_eq!(t.protocol(), "chaos+mem");
    assert_eq!(t.max_message_size(), MAX);
    let mut listener = t
        .listen_dyn(&"chaos+mem://chaos-passthrough".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        listener.local_addr().to_string(),
        "chaos+mem://chaos-passthrough"
    );
    // The inner transport's errors come through: the name is in use.
    let err = t
        .listen_dyn(&"chaos+mem://chaos-passthrough".parse().unwrap())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("in use"), "{err}");
    let addr = listener.local_addr().clone();
    let (client, server) = tokio::join!(t.connect_dyn(&addr), listener.accept_dyn());
    let (client, server) = (client.unwrap(), server.unwrap());
    assert_eq!(client.peer_addr(), &addr);
    assert_eq!(server.peer_addr().protocol(), "chaos+mem");
    let (mut ctx, mut crx) = client.split_dyn();
    let (mut stx, mut srx) = server.split_dyn();

    // Boundaries: parts make one message; an empty message is a message.
    ctx.send_dyn(&[b"hello, ", b"", b"world"]).await.unwrap();
    ctx.send_dyn(&[]).await.unwrap();
    assert_eq!(srx.recv_dyn().await.unwrap().unwrap(), &b"hello, world"[..]);
    assert_eq!(srx.recv_dyn().await.unwrap().unwrap(), &b""[..]);
    // Maximum size: refused without writing; the connection goes on.
    let big = vec![0u8; MAX + 1];
    let err = ctx.send_dyn(&[&big]).await.unwrap_err();
    assert!(
        matches!(err, TransportError::MessageTooLarge { .. }),
        "{err}"
    );
    assert!(!err.is_fatal_to_connection());
    let exact = vec![7u8; MAX];
    ctx.send_dyn(&[&exact]).await.unwrap();
    assert_eq!(srx.recv_dyn().await.unwrap().unwrap().len(), MAX);
    // Cancellation: a dropped recv loses nothing.
    {
        let pending = srx.recv_dyn();
        let polled = futures_poll_once(pending).await;
        assert!(polled.is_none(), "nothing was sent yet");
    }
    ctx.send_dyn(&[b"after a cancelled recv"]).await.unwrap();
    assert_eq!(
        srx.recv_dyn().await.unwrap().unwrap(),
        &b"after a cancelled recv"[..]
    );
    // The other direction, then order and the orderly close.
    stx.send_dyn(&[b"back"]).await.unwrap();
    assert_eq!(crx.recv_dyn().await.unwrap().unwrap(), &b"back"[..]);
    let (_, got) = tokio::join!(send_numbered(&mut ctx, 1000), recv_numbered(&mut srx));
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    // A dropped listener refuses new connections.
    drop(listener);
    let err = t.connect_dyn(&addr).await.err().unwrap();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
}

/// Polls `fut` once: `Some(output)` if it was ready, `None` if it was
/// pending (and is then dropped).
async fn futures_poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[tokio::test]
async fn layers_stack_and_addresses_carry_the_stacked_name() {
    let (_, t) = registry()
        .create("chaos+chaos+mem", &PluginOptions::new(), MAX)
        .unwrap();
    assert_eq!(t.protocol(), "chaos+chaos+mem");
    let mut listener = t
        .listen_dyn(&"chaos+chaos+mem://".parse().unwrap())
        .await
        .unwrap();
    let addr: Address = listener.local_addr().clone();
    assert_eq!(addr.protocol(), "chaos+chaos+mem");
    let (client, server) = tokio::join!(t.connect_dyn(&addr), listener.accept_dyn());
    let (mut tx, _) = client.unwrap().split_dyn();
    let (_, mut rx) = server.unwrap().split_dyn();
    tx.send_dyn(&[b"through two layers"]).await.unwrap();
    assert_eq!(
        rx.recv_dyn().await.unwrap().unwrap(),
        &b"through two layers"[..]
    );
}

#[tokio::test]
async fn options_are_checked() {
    for (options, expected) in [
        (json!({ "dorp": 0.1 }), "unknown field `dorp`"),
        (
            json!({ "drop": 1.5 }),
            "option 'drop': invalid value: floating point `1.5`",
        ),
        (json!({ "reorder": -0.1 }), "option 'reorder'"),
        (json!({ "duplicate": "often" }), "option 'duplicate'"),
        (json!({ "direction": "sideways" }), "option 'direction'"),
        (json!({ "seed": -1 }), "option 'seed'"),
        (json!({ "seed": "lucky" }), "option 'seed'"),
        (json!({ "latency_us": 1.5 }), "option 'latency_us'"),
    ] {
        let err = try_chaos(options.clone()).err().unwrap().to_string();
        assert!(err.contains("'chaos' plugin"), "{options}: {err}");
        assert!(err.contains(expected), "{options}: {err}");
    }
    // Integers are probabilities too, and a random seed is accepted.
    try_chaos(json!({ "drop": 1, "seed": "random" })).unwrap();
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults() {
    let options = |seed: u64| {
        json!({
            "seed": seed, "drop": 0.1, "duplicate": 0.1, "reorder": 0.1,
            // No window: a held message waits for the next one, however
            // long the sender takes (so the pattern cannot depend on timing).
            "reorder_window_us": 0,
        })
    };
    let a = pattern(options(1), 1000).await;
    let again = pattern(options(1), 1000).await;
    let b = pattern(options(2), 1000).await;
    assert_eq!(a, again, "seed 1 replayed differently");
    assert_ne!(a, b, "seeds 1 and 2 gave the same faults");
    for (seed, got) in [(1, &a), (2, &b)] {
        let mut seen = vec![0u32; 1000];
        for &i in got {
            seen[i as usize] += 1;
        }
        let dropped = seen.iter().filter(|c| **c == 0).count();
        let duplicated = seen.iter().filter(|c| **c == 2).count();
        let out_of_order = got.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(
            seen.iter().all(|c| *c <= 2),
            "seed {seed}: a message came 3 times"
        );
        // About a tenth each (the seeds are fixed, so these are exact
        // outcomes, not chances).
        for (what, count) in [
            ("dropped", dropped),
            ("duplicated", duplicated),
            ("reordered", out_of_order),
        ] {
            assert!((50..=150).contains(&count), "seed {seed}: {count} {what}");
        }
    }
}

#[tokio::test]
async fn a_connection_replays_whatever_the_other_connections_do() {
    let options = json!({ "seed": 9, "drop": 0.3, "reorder_window_us": 0 });
    let alone = pattern(options.clone(), 200).await;
    // The same transport options; the first connection's messages are sent
    // interleaved with those of a second connection opened at the same
    // time, which is faulted differently.
    let t = chaos(options);
    let ((mut tx0, _c0), (_s0, mut rx0)) = pair(&t).await;
    let ((mut tx1, _c1), (_s1, mut rx1)) = pair(&t).await;
    let (_, _, first, second) = tokio::join!(
        send_numbered(&mut tx0, 200),
        send_numbered(&mut tx1, 200),
        recv_numbered(&mut rx0),
        recv_numbered(&mut rx1),
    );
    assert_eq!(first, alone);
    assert_ne!(second, alone, "two connections got the same faults");
}

#[tokio::test]
async fn each_fault_alone_does_exactly_what_it_says() {
    let all: Vec<u32> = (0..6).collect();
    assert_eq!(pattern(json!({ "drop": 1.0 }), 6).await, Vec::<u32>::new());
    assert_eq!(pattern(json!({ "drop": 1.0, "grace": 2 }), 6).await, [0, 1]);
    assert_eq!(
        pattern(json!({ "duplicate": 1.0 }), 3).await,
        [0, 0, 1, 1, 2, 2]
    );
    // Each held message goes after the next one; the last one is handed on
    // when the sender closes.
    assert_eq!(
        pattern(json!({ "reorder": 1.0, "reorder_window_us": 0 }), 5).await,
        [1, 0, 3, 2, 4]
    );
    assert_eq!(
        pattern(
            json!({ "reorder": 1.0, "grace": 1, "reorder_window_us": 0 }),
            6
        )
        .await,
        [0, 2, 1, 4, 3, 5]
    );
    assert_eq!(pattern(json!({ "drop": 0.0, "seed": 5 }), 6).await, all);
}

#[tokio::test]
async fn direction_picks_the_messages_of_one_side() {
    let t = chaos(json!({ "drop": 1.0, "direction": "connector" }));
    let ((mut ctx, mut crx), (mut stx, mut srx)) = pair(&t).await;
    let (_, _, to_server, to_client) = tokio::join!(
        send_numbered(&mut ctx, 10),
        send_numbered(&mut stx, 10),
        recv_numbered(&mut srx),
        recv_numbered(&mut crx),
    );
    assert_eq!(
        to_server,
        Vec::<u32>::new(),
        "the connector's messages are dropped"
    );
    assert_eq!(to_client, (0..10).collect::<Vec<_>>());

    let t = chaos(json!({ "drop": 1.0, "direction": "acceptor" }));
    let ((mut ctx, mut crx), (mut stx, mut srx)) = pair(&t).await;
    let (_, _, to_server, to_client) = tokio::join!(
        send_numbered(&mut ctx, 10),
        send_numbered(&mut stx, 10),
        recv_numbered(&mut srx),
        recv_numbered(&mut crx),
    );
    assert_eq!(to_server, (0..10).collect::<Vec<_>>());
    assert_eq!(
        to_client,
        Vec::<u32>::new(),
        "the acceptor's messages are dropped"
    );
}

/// Whether `err` is the chaos layer's reset.
fn is_reset(err: &TransportError) -> bool {
    matches!(err, TransportError::Io { source, .. }
        if source.kind() == std::io::ErrorKind::ConnectionReset
            && source.to_string().contains("reset by the chaos layer"))
}

#[tokio::test]
async fn a_reset_fails_the_send_and_ends_the_connection_for_the_peer() {
    let t = chaos(json!({ "reset_after": 3, "seed": 11 }));
    let ((mut ctx, mut crx), (mut stx, mut srx)) = pair(&t).await;
    // The connector's own receiver is waiting when the reset comes.
    let waiting = tokio::spawn(async move {
        let r = crx.recv_dyn().await;
        (r, crx)
    });
    for i in 0..3u32 {
        ctx.send_dyn(&[&i.to_le_bytes()]).await.unwrap();
    }
    let err = ctx.send_dyn(&[b"the fourth"]).await.unwrap_err();
    assert!(is_reset(&err), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("chaos+mem://") && text.contains("seed 11") && text.contains("message 4"),
        "the error names the peer, the seed and the message: {text}"
    );
    assert!(err.is_fatal_to_connection());
    // The peer reads what was sent before the reset, then the end.
    assert_eq!(recv_numbered(&mut srx).await, [0, 1, 2]);
    // Both directions of the reset end are dead.
    let (r, mut crx) = guard("the waiting recv", waiting).await.unwrap();
    assert!(is_reset(&r.unwrap_err()));
    assert!(crx.recv_dyn().await.is_err());
    assert!(ctx.send_dyn(&[b"more"]).await.is_err());
    ctx.close_dyn().await.unwrap();
    // The reset end let go of its receiving direction: the peer's sends
    // fail.
    let err = stx.send_dyn(&[b"anyone?"]).await.unwrap_err();
    assert!(err.is_fatal_to_connection(), "{err}");
}

/// The number of the send that reset the first connection of a transport
/// built with `reset` probability and `seed`.
async fn reset_at(seed: u64) -> u32 {
    let t = chaos(json!({ "reset": 0.02, "seed": seed }));
    let ((mut tx, _crx), (_stx, mut rx)) = pair(&t).await;
    let sender = async {
        for i in 1..=10_000u32 {
            if let Err(e) = tx.send_dyn(&[&i.to_le_bytes()]).await {
                assert!(is_reset(&e), "{e}");
                return i;
            }
        }
        panic!("no reset in 10000 sends at probability 0.02");
    };
    let (n, got) = tokio::join!(sender, recv_numbered(&mut rx));
    assert_eq!(
        got,
        (1..n).collect::<Vec<_>>(),
        "everything before the reset arrives"
    );
    n
}

#[tokio::test]
async fn random_resets_replay_from_the_seed() {
    let a = reset_at(3).await;
    assert_eq!(reset_at(3).await, a);
    let others = [reset_at(4).await, reset_at(5).await, reset_at(6).await];
    assert!(
        others.iter().any(|n| *n != a),
        "seeds 3..=6 all reset at {a}"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_delays_every_message_without_serialising_them() {
    // Under tokio's paused clock, time moves only when every task waits,
    // straight to the next timer: the times below are exact, not measured.
    let latency = Duration::from_millis(50);
    let jitter = Duration::from_millis(20);
    let t = chaos(json!({ "latency_us": 50_000, "jitter_us": 20_000, "seed": 4 }));
    let ((mut tx, _crx), (_stx, mut rx)) = pair(&t).await;
    let start = Instant::now();
    for i in 0..10u32 {
        tx.send_dyn(&[&i.to_le_bytes()]).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        let m = guard("a delayed message", rx.recv_dyn())
            .await
            .unwrap()
            .unwrap();
        let waited = start.elapsed();
        assert!(waited >= latency, "a message came after {waited:?}");
        // Pipelined: ten messages take one latency (plus jitter), not ten.
        assert!(
            waited <= latency + jitter + Duration::from_millis(5),
            "{waited:?}"
        );
        got.push(u32::from_le_bytes(m[..].try_into().unwrap()));
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "jitter does not reorder");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_recv_loses_no_delayed_message() {
    let t = chaos(json!({ "latency_us": 30_000 }));
    let ((mut tx, _crx), (_stx, mut rx)) = pair(&t).await;
    tx.send_dyn(&[b"late"]).await.unwrap();
    // Give up waiting before the message is due: the future is dropped.
    let early = tokio::time::timeout(Duration::from_millis(10), rx.recv_dyn()).await;
    assert!(early.is_err(), "the message came before its latency");
    let m = guard("the delayed message", rx.recv_dyn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m, &b"late"[..]);
}

#[tokio::test(start_paused = true)]
async fn a_held_message_goes_on_alone_after_the_window() {
    let t = chaos(json!({ "reorder": 1.0, "reorder_window_us": 5_000 }));
    let ((mut tx, _crx), (_stx, mut rx)) = pair(&t).await;
    let start = Instant::now();
    tx.send_dyn(&[b"alone"]).await.unwrap();
    let m = guard("the held message", rx.recv_dyn())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m, &b"alone"[..]);
    assert!(
        start.elapsed() >= Duration::from_millis(5),
        "held for the window"
    );
}

#[tokio::test]
async fn protocols_toml_documents_every_option_and_its_example_preset_works() {
    let table = courier_transport::BUILTIN_PROTOCOLS_TOML;
    for key in [
        "seed",
        "latency_us",
        "jitter_us",
        "drop",
        "duplicate",
        "reorder",
        "reorder_window_us",
        "reset",
        "reset_after",
        "grace",
        "direction",
    ] {
        assert!(
            table.contains(&format!("#   {key} ")),
            "protocols.toml does not document the chaos option '{key}'"
        );
        // And the layer knows it.
        let mut options = serde_json::Map::new();
        options.insert(key.to_owned(), json!(0));
        let known = try_chaos(Value::Object(options))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            !known.as_ref().is_err_and(|e| e.contains("unknown field")),
            "{key}: {known:?}"
        );
    }
    // The commented example preset, uncommented, is a working layer.
    let start = table.find("# [layers.flaky]").expect("the example preset");
    let preset: String = table[start..]
        .lines()
        .take_while(|l| l.starts_with("# "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    let mut r = registry();
    r.load_toml_str(&preset, "the example preset").unwrap();
    let (_, t) = r.create("flaky+mem", &PluginOptions::new(), MAX).unwrap();
    assert_eq!(t.protocol(), "flaky+mem");
    // The built-in table declares the chaos layer itself.
    let entry = Registry::new().resolve("chaos+tcp").unwrap();
    assert_eq!(entry.layers, ["chaos"]);
}
