//! Keepalive in one process: a peer that stops answering without closing
//! its connection (the `chaos` layer over `mem` drops everything the
//! client sends after its request) fails the calls outstanding on it,
//! calls without a timeout included, with `ConnectionLost` naming
//! keepalive; a healthy connection that stays quiet for many keepalive
//! periods (a slow handler) is left alone.
//!
//! Nothing here waits by sleeping; the one sleep is the slow handler's
//! work. Each wait is bounded by [`guard`] so that a hang fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier::{Engine, Error, Handle, Mode};
use tokio::sync::mpsc;

/// Bounds each wait of this file: a hang becomes a failure (it is not a
/// threshold any outcome depends on).
const HANG_GUARD: Duration = Duration::from_secs(30);

async fn guard<F: std::future::IntoFuture>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut.into_future())
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish within {HANG_GUARD:?}"))
}

/// An engine for `chaos+mem` with the chaos options `chaos` and the
/// keepalive section `keepalive`.
async fn engine(mode: Mode, chaos: &str, keepalive: &str) -> Engine {
    Engine::builder("chaos+mem")
        .mode(mode)
        .config_json(&format!(
            r#"{{"transport": {{"chaos": {chaos}}}, "keepalive": {keepalive}}}"#
        ))
        .build()
        .await
        .unwrap()
}

/// Registers `park`, which reports its request on the channel and never
/// answers (it holds its handle).
fn register_park(server: &Engine) -> mpsc::UnboundedReceiver<()> {
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    server
        .register("park", move |h: Handle, (): ()| {
            let _ = arrived_tx.send(());
            async move {
                std::future::pending::<()>().await;
                drop(h);
            }
        })
        .unwrap();
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_fails_a_call_without_timeout_naming_keepalive() {
    // The client's Hello and its request get through (grace 2); its
    // keepalive probes do not. The server probes nothing (keepalive off):
    // the client hears nothing at all after its request.
    let chaos = r#"{"drop": 1.0, "grace": 2, "direction": "connector"}"#;
    let server = engine(Mode::Server, chaos, r#"{"interval_ms": null}"#).await;
    let client = engine(
        Mode::Client,
        chaos,
        r#"{"interval_ms": 50, "timeout_ms": 100}"#,
    )
    .await;
    assert_eq!(client.config()["keepalive"]["interval_ms"], 50);
    let mut arrived = register_park(&server);
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    // No timeout anywhere: only keepalive can end this call.
    assert!(client.config()["timeouts"]["call_ms"].is_null());
    let park = client.remote::<(), ()>("park");
    let call = park.on(&address);
    let (result, ran) = tokio::join!(guard("the parked call", call.call(&())), async {
        guard("the request to arrive", arrived.recv()).await
    });
    assert_eq!(ran, Some(()), "the request reached the handler");
    match result {
        Err(Error::ConnectionLost {
            address: peer,
            reason,
        }) => {
            assert_eq!(peer, address.to_string());
            assert!(
                reason.starts_with("no answer to a keepalive probe within 100 ms")
                    && reason.ends_with("the peer is unreachable"),
                "{reason}"
            );
        }
        other => panic!("expected ConnectionLost naming keepalive, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_healthy_connection_is_probed_and_kept() {
    // No faults; both sides probe after 25 ms of silence and give 250 ms
    // for an answer (generous: a loaded machine answers late, not never).
    // The handler takes 600 ms, more than twice interval + timeout, during
    // which nothing but probes and their answers crosses the connection.
    let keepalive = r#"{"interval_ms": 25, "timeout_ms": 250}"#;
    let server = engine(Mode::Server, "{}", keepalive).await;
    let client = engine(Mode::Client, "{}", keepalive).await;
    server
        .register("slow", |h: Handle, x: u64| async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            h.respond(&(x + 1)).await
        })
        .unwrap();
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let slow = client.remote::<u64, u64>("slow");
    assert_eq!(guard("slow", slow.on(&address).call(&1)).await.unwrap(), 2);
    assert_eq!(guard("slow", slow.on(&address).call(&2)).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_off_leaves_a_silent_peer_to_the_call_timeout() {
    let chaos = r#"{"drop": 1.0, "grace": 2, "direction": "connector"}"#;
    let off = r#"{"interval_ms": 0}"#;
    let server = engine(Mode::Server, chaos, off).await;
    let client = engine(Mode::Client, chaos, off).await;
    let _arrived = register_park(&server);
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let park = client.remote::<(), ()>("park");
    let err = guard(
        "the parked call",
        park.on(&address)
            .timeout(Duration::from_millis(200))
            .call(&()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

/// A blocking client without a progress thread runs only inside its calls,
/// as in Margo: while the application does something else it reads
/// nothing and answers no probe, and the server gives its connection up.
/// The next call must not fail for it: the client sees that it has heard
/// nothing for longer than keepalive allows, and opens a new connection.
#[test]
fn a_blocking_client_that_pauses_opens_a_new_connection() {
    let keepalive = r#"{"keepalive": {"interval_ms": 20, "timeout_ms": 40}}"#;
    let server = courier::blocking::Engine::builder("tcp")
        .use_progress_thread(true)
        .config_json(keepalive)
        .build()
        .unwrap();
    server
        .register("echo", |h: courier::blocking::Handle, x: u64| h.respond(&x))
        .unwrap();
    let client = courier::blocking::Engine::builder("tcp")
        .client()
        .config_json(keepalive)
        .build()
        .unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    let echo = client.remote::<u64, u64>("echo");
    assert_eq!(echo.on(&address).call(&1).unwrap(), 1);
    // The application works on something else: the client engine does not
    // run, and the server closes the connection it hears nothing on. (The
    // pause is the scenario, not a synchronisation: whether or not the
    // server gave up by the end of it, the next call must succeed.)
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo.on(&address).call(&2).unwrap(), 2);
}
