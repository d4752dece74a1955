//! Deadlines, cancellation and re-entrant calls over the protocol: the
//! caller's budget reaches the handler, a call given up cancels its
//! handler (and what that handler called in turn), a spent budget is not
//! sent, and a handler that calls its caller back completes even at
//! `max_in_flight_per_connection`.
//!
//! Handlers report through channels; a handler's future reports its own
//! drop (that is how the engine cancels an async handler). Nothing sleeps
//! to synchronise, and no outcome depends on how fast anything was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::{blocking, Bulk, BulkBuffer, BulkMode, CancelReason, Engine, Error, Handle, Reach};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bulk::Gate;
use crate::engine::recv;
use crate::{guard, HANG_GUARD};

/// Sends `what` on its channel when dropped: an async handler's future
/// holds one, so the test sees the engine drop it.
struct ReportDrop {
    tx: mpsc::UnboundedSender<&'static str>,
    what: &'static str,
}

impl Drop for ReportDrop {
    fn drop(&mut self) {
        let _ = self.tx.send(self.what);
    }
}

/// Calls `rpc` (no arguments) at `address` from a task of its own, waits
/// until `started` says its handler began, then drops the call (the task
/// is aborted), which must send the server a cancel.
async fn call_then_drop<T>(
    client: &Engine,
    address: &courier::Address,
    rpc: &str,
    started: &mut mpsc::UnboundedReceiver<T>,
) -> T {
    let call = {
        let c = client.remote::<(), ()>(rpc).on(address);
        tokio::spawn(async move { c.call(&()).await })
    };
    let first = recv(started, "the handler's start").await;
    call.abort();
    first
}

/// Registers `wait`: reports its deadline when it starts, then waits for
/// ever (until the engine drops it, which it reports).
fn register_wait(
    engine: &Engine,
) -> (
    mpsc::UnboundedReceiver<Option<Duration>>,
    mpsc::UnboundedReceiver<&'static str>,
) {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (dropped_tx, dropped_rx) = mpsc::unbounded_channel();
    engine
        .register("wait", move |h: Handle, (): ()| {
            let (started_tx, dropped_tx) = (started_tx.clone(), dropped_tx.clone());
            async move {
                let _report = ReportDrop {
                    tx: dropped_tx,
                    what: "wait",
                };
                started_tx.send(h.remaining()).unwrap();
                std::future::pending::<()>().await;
                h.respond(&()).await
            }
        })
        .unwrap();
    (started_rx, dropped_rx)
}

/// The caller's timeout reaches the handler as its deadline (no more than
/// the budget, and some of it left); a call without one has none.
pub async fn deadline_reaches_the_handler(proto: &str) {
    let server = crate::server(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    server
        .register("budget", move |h: Handle, (): ()| {
            let tx = tx.clone();
            async move {
                tx.send((h.deadline().is_some(), h.remaining())).unwrap();
                h.respond(&()).await
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let budget = client.remote::<(), ()>("budget");
    guard("budget, no timeout", budget.on(&address).call(&()))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx, "no deadline").await, (false, None));
    let within = Duration::from_secs(20);
    guard(
        "budget, 20 s",
        budget.on(&address).timeout(within).call(&()),
    )
    .await
    .unwrap();
    let (has, left) = recv(&mut rx, "a deadline").await;
    assert!(has);
    let left = left.unwrap();
    assert!(
        left <= within && left > Duration::ZERO,
        "{left:?} left of {within:?}"
    );
}

/// A call whose timeout passes cancels its handler: the caller gets
/// `Timeout`, and the server drops the handler's future.
pub async fn timeout_cancels_the_handler(proto: &str) {
    let server = crate::server(proto).await;
    let (mut started, mut dropped) = register_wait(&server);
    crate::register_hello(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let wait = client.remote::<(), ()>("wait");
    let after = Duration::from_millis(100);
    let err = guard("the timed call", wait.on(&address).timeout(after).call(&()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(err.reach(), Reach::Unknown);
    let left = recv(&mut started, "the handler's start").await;
    assert!(left.is_some_and(|l| l <= after), "{left:?}");
    assert_eq!(recv(&mut dropped, "the handler's drop").await, "wait");
    crate::assert_hello(&client, &address).await;
}

/// Dropping a call future (no timeout anywhere) tells the server, whose
/// handler is dropped; the connection goes on serving.
pub async fn dropped_call_cancels_the_handler(proto: &str) {
    let server = crate::server(proto).await;
    let (mut started, mut dropped) = register_wait(&server);
    crate::register_hello(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let left = call_then_drop(&client, &address, "wait", &mut started).await;
    assert_eq!(left, None, "no deadline was set");
    assert_eq!(recv(&mut dropped, "the handler's drop").await, "wait");
    crate::assert_hello(&client, &address).await;
}

/// A handler that hands its work to a task sees the cancellation through
/// its token, with the reason.
pub async fn cancel_token_tells_why(proto: &str) {
    let server = crate::server(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    server
        .register("worker", move |h: Handle, (): ()| {
            let (tx, started_tx) = (tx.clone(), started_tx.clone());
            async move {
                let token = h.cancel_token();
                tokio::spawn(async move {
                    let reason = token.cancelled().await;
                    tx.send((reason, token.is_cancelled())).unwrap();
                });
                started_tx.send(()).unwrap();
                std::future::pending::<()>().await;
                h.respond(&()).await
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    call_then_drop(&client, &address, "worker", &mut started_rx).await;
    assert_eq!(
        recv(&mut rx, "the token").await,
        (CancelReason::Caller, true)
    );
}

/// A handler that returns at once and keeps its handle, to answer later
/// from a task (as the Python binding's handlers do), is still reached by
/// its caller's cancel; its late answer goes nowhere (`Cancelled`).
pub async fn deferred_handle_is_cancelled(proto: &str) {
    let server = crate::server(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    server
        .register("later", move |h: Handle, (): ()| {
            let (tx, started_tx) = (tx.clone(), started_tx.clone());
            async move {
                tokio::spawn(async move {
                    started_tx.send(()).unwrap();
                    let reason = h.cancelled().await;
                    let late = h.respond(&()).await;
                    tx.send((reason, h.is_cancelled(), late)).unwrap();
                });
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    call_then_drop(&client, &address, "later", &mut started_rx).await;
    let (reason, cancelled, late) = recv(&mut rx, "the deferred cancel").await;
    assert_eq!((reason, cancelled), (CancelReason::Caller, true));
    assert!(matches!(late, Err(Error::Cancelled { .. })), "{late:?}");
}

/// Three engines, A -> B -> C: B's handler calls C without a timeout of its
/// own, and that call inherits A's deadline; A dropping its call cancels
/// B's handler, whose call to C is dropped in turn, so C's handler is
/// cancelled too.
pub async fn cancellation_cascades(proto: &str) {
    let c = crate::server(proto).await;
    let (mut c_started, mut c_dropped) = register_wait(&c);
    let b = crate::server(proto).await;
    let (b_tx, mut b_dropped) = mpsc::unbounded_channel();
    let to_c = crate::lookup(&b, &c).await;
    let wait = b.remote::<(), ()>("wait");
    b.register("relay", move |h: Handle, (): ()| {
        let (wait, to_c, b_tx) = (wait.clone(), to_c.clone(), b_tx.clone());
        async move {
            let _report = ReportDrop {
                tx: b_tx,
                what: "relay",
            };
            wait.on(&to_c).call(&()).await?;
            h.respond(&()).await
        }
    })
    .unwrap();
    let a = crate::client(proto).await;
    let to_b = crate::lookup(&a, &b).await;
    let relay = a.remote::<(), ()>("relay");
    let budget = Duration::from_secs(25);
    let call = {
        let r = relay.on(&to_b).timeout(budget);
        tokio::spawn(async move { r.call(&()).await })
    };
    // C's handler inherited A's budget, less what the hops took.
    let left = recv(&mut c_started, "C's handler").await;
    assert!(left.is_some_and(|l| l <= budget), "{left:?}");
    call.abort();
    assert_eq!(recv(&mut b_dropped, "B's handler dropped").await, "relay");
    assert_eq!(recv(&mut c_dropped, "C's handler dropped").await, "wait");
}

/// A transfer a handler started ([`courier::Transfer::start`]) stops when
/// the handler's request is cancelled: the caller drops its call while the
/// transfer's first chunk is being read on its side, and the transfer ends
/// with `Cancelled` without waiting for that read.
pub async fn started_transfer_stops_with_its_request(proto: &str) {
    let server = crate::server(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let exposer = server.clone();
    server
        .register("fetch", move |h: Handle, theirs: Bulk| {
            let (tx, exposer) = (tx.clone(), exposer.clone());
            async move {
                let mine = exposer
                    .expose([BulkBuffer::new(theirs.len())], BulkMode::WriteOnly)
                    .unwrap();
                let started = h.pull(&theirs, &mine).start();
                tokio::spawn(async move { tx.send(started.wait().await).unwrap() });
                std::future::pending::<()>().await;
                h.respond(&()).await
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let (tell_tx, tell_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let gate = Gate {
        bytes: BulkBuffer::new(1 << 20),
        first: std::sync::Mutex::new(Some((tell_tx, go_rx))),
    };
    let exposed = client.expose([gate], BulkMode::ReadOnly).unwrap();
    let fetch = client.remote::<Bulk, ()>("fetch");
    let call = {
        // A clone travels: the region stays exposed here after the call
        // is dropped (the transfer must stop for its cancel, not for that).
        let (c, sent) = (fetch.on(&address), exposed.clone());
        tokio::spawn(async move { c.call(&sent).await })
    };
    let told = tokio::task::spawn_blocking(move || tell_rx.recv_timeout(HANG_GUARD));
    guard("the first chunk's read", told)
        .await
        .unwrap()
        .unwrap();
    call.abort();
    let ended = recv(&mut rx, "the started transfer").await;
    assert!(matches!(ended, Err(Error::Cancelled { .. })), "{ended:?}");
    go_tx.send(()).unwrap();
    drop(exposed);
}

/// A zero budget fails at once without sending; so does a call made by a
/// handler whose own deadline has passed.
pub async fn spent_budget_is_not_sent(proto: &str) {
    let server = crate::server(proto).await;
    let (mut started, _dropped) = register_wait(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let wait = client.remote::<(), ()>("wait");
    let err = guard(
        "a zero budget",
        wait.on(&address).timeout(Duration::ZERO).call(&()),
    )
    .await
    .unwrap_err();
    match &err {
        Error::DeadlineExceeded { rpc, .. } => assert_eq!(rpc, "wait"),
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert_eq!(err.reach(), Reach::NotReached);
    assert!(err.is_retry_safe(false));
    // Nothing reached the handler: the next thing it sees is this call.
    let marker = {
        let c = wait.on(&address).timeout(Duration::from_secs(20));
        tokio::spawn(async move { c.call(&()).await })
    };
    assert!(recv(&mut started, "the second call").await.is_some());
    marker.abort();
}

/// A handler that calls its caller back over the same connection, with as
/// many such requests in flight as `max_in_flight_per_connection` allows:
/// every one completes (the server reads the callbacks' answers at the
/// limit).
pub async fn callback_at_max_in_flight(proto: &str) {
    const LIMIT: usize = 2;
    let server = Engine::builder(proto)
        .config_json(&format!(r#"{{"max_in_flight_per_connection": {LIMIT}}}"#))
        .build()
        .await
        .unwrap();
    let back = server.remote::<u32, u32>("back");
    let all_in = Arc::new(tokio::sync::Barrier::new(LIMIT));
    server
        .register("forth", move |h: Handle, n: u32| {
            let (back, all_in) = (back.clone(), all_in.clone());
            async move {
                // Every slot is taken before any handler calls back.
                all_in.wait().await;
                let doubled = back.on(&h.address()).call(&n).await?;
                h.respond(&(doubled + 1)).await
            }
        })
        .unwrap();
    let client = Engine::builder(proto)
        .config_json(&format!(r#"{{"max_in_flight_per_connection": {LIMIT}}}"#))
        .build()
        .await
        .unwrap();
    client
        .register("back", |h: Handle, n: u32| async move {
            h.respond(&(n * 2)).await
        })
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    let forth = client.remote::<u32, u32>("forth");
    let mut calls = JoinSet::new();
    for n in 0..LIMIT as u32 {
        let c = forth.on(&address);
        calls.spawn(async move { (n, c.call(&n).await) });
    }
    while let Some(done) = guard("the callbacks", calls.join_next()).await {
        let (n, answer) = done.unwrap();
        assert_eq!(answer.unwrap(), n * 2 + 1);
    }
}

/// A blocking handler polls its token: it sees the cancellation when the
/// caller's deadline passes, and stops.
pub fn blocking_handler_polls_its_token(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .use_progress_thread(true)
        .num_rpc_threads(1)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    server
        .register("spin", move |h: blocking::Handle, (): ()| {
            let start = Instant::now();
            // Polls between steps of its "work"; the hang guard bounds it.
            while !h.is_cancelled() && start.elapsed() < HANG_GUARD {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            tx.send((h.deadline().is_some(), h.is_cancelled())).unwrap();
        })
        .unwrap();
    let client = blocking::Engine::new(proto).unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    let spin = client
        .remote::<(), ()>("spin")
        .timeout(Duration::from_millis(100));
    let err = spin.on(&address).call(&()).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(rx.recv_timeout(HANG_GUARD).unwrap(), (true, true));
}

/// `Request::cancel` on a non-blocking call, from a client without a
/// progress thread: the server's blocking handler sees its token fire,
/// with the caller as the reason.
pub fn blocking_request_cancel(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .use_progress_thread(true)
        .num_rpc_threads(1)
        .build()
        .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    server
        .register("spin", move |h: blocking::Handle, (): ()| {
            started_tx.send(()).unwrap();
            let token = h.cancel_token();
            let start = Instant::now();
            while !token.is_cancelled() && start.elapsed() < HANG_GUARD {
                std::thread::park_timeout(Duration::from_millis(1));
            }
            tx.send(token.reason()).unwrap();
        })
        .unwrap();
    let client = blocking::Engine::builder(proto).client().build().unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    let spin = client.remote::<(), ()>("spin");
    let request = spin.on(&address).call_nonblocking(&()).unwrap();
    // Without a progress thread, test() moves the request along.
    let start = Instant::now();
    while started_rx.try_recv().is_err() {
        assert!(
            start.elapsed() < HANG_GUARD,
            "hang guard: the handler never started"
        );
        let _ = request.test();
    }
    request.cancel().unwrap();
    assert_eq!(
        rx.recv_timeout(HANG_GUARD).unwrap(),
        Some(CancelReason::Caller)
    );
}
