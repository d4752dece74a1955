//! Providers' limits and pools (issue 16): past `max_running` handlers and
//! `max_queued` waiting requests a caller gets `Error::Busy` at once, a
//! one-way request is dropped, other providers go on; a provider given a
//! pool runs its handlers on the pool's threads.
//!
//! Over the in-process `mem` transport: admission happens after a request
//! is read, the same for every protocol. Nothing waits by sleeping:
//! handlers report through channels and wait on semaphores the test
//! releases, and every wait is bounded by a hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier::{Callable, Engine, Error, Handle, ProviderLoad, ProviderOptions, Reach, RpcOptions};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// A hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} did not finish within {HANG_GUARD:?}"),
    }
}

/// Waits (yielding, under the hang guard) until `provider`'s load satisfies
/// `cond`, and returns it.
async fn load_until(
    server: &Engine,
    provider: u16,
    what: &str,
    cond: impl Fn(&ProviderLoad) -> bool,
) -> ProviderLoad {
    guard(what, async {
        loop {
            let load = server
                .provider_load(provider)
                .expect("a provider with limits");
            if cond(&load) {
                return load;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// Registers `stall` at `provider`: reports its argument when it starts,
/// waits for a permit of `release`, answers `n * 2`.
fn register_stall(
    server: &Engine,
    provider: u16,
    release: &Arc<Semaphore>,
) -> mpsc::UnboundedReceiver<u32> {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let release = release.clone();
    server
        .register_with(
            "stall",
            RpcOptions::provider(provider),
            move |h: Handle, n: u32| {
                let (started_tx, release) = (started_tx.clone(), release.clone());
                async move {
                    started_tx.send(n).unwrap();
                    release.acquire().await.unwrap().forget();
                    h.respond(&(n * 2)).await
                }
            },
        )
        .unwrap();
    started_rx
}

/// Calls `callable` with `args` in a task of its own.
fn spawn_call<A, R>(callable: Callable<A, R>, args: A) -> JoinHandle<courier::Result<R>>
where
    A: serde::Serialize + Send + Sync + 'static,
    R: serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move { callable.call(&args).await })
}

async fn started(rx: &mut mpsc::UnboundedReceiver<u32>) -> u32 {
    guard("a handler's start", rx.recv()).await.unwrap()
}

async fn client_of(server: &Engine) -> (Engine, courier::Address) {
    let client = Engine::builder("mem").client().build().await.unwrap();
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    (client, address)
}

/// A server whose provider `id` has max_running 1 and max_queued 1, with
/// `stall` at it, and a client that called it twice: the first call runs
/// (released by `release`), the second is queued. Dropping the server or
/// the client finalizes it: keep both.
struct OneRunningOneQueued {
    server: Engine,
    release: Arc<Semaphore>,
    started_rx: mpsc::UnboundedReceiver<u32>,
    client: Engine,
    address: courier::Address,
    stall: courier::RemoteFunction<u32, u32>,
    first: JoinHandle<courier::Result<u32>>,
    second: JoinHandle<courier::Result<u32>>,
}

async fn one_running_one_queued(id: u16) -> OneRunningOneQueued {
    let server = Engine::builder("mem")
        .config_json(&format!(
            r#"{{"providers": {{"{id}": {{"max_running": 1, "max_queued": 1}}}}}}"#
        ))
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    let mut started_rx = register_stall(&server, id, &release);
    let (client, address) = client_of(&server).await;
    let stall = client.remote::<u32, u32>("stall");
    let first = spawn_call(stall.on_provider(&address, id), 1);
    assert_eq!(started(&mut started_rx).await, 1);
    let second = spawn_call(stall.on_provider(&address, id), 2);
    load_until(&server, id, "the second request queued", |l| l.queued == 1).await;
    OneRunningOneQueued {
        server,
        release,
        started_rx,
        client,
        address,
        stall,
        first,
        second,
    }
}

/// max_running 1, max_queued 1: the first call runs, the second waits, the
/// third is refused at once with `Busy`, naming the limit, while the first
/// still runs; released, the first two complete in order.
#[tokio::test]
async fn past_the_limits_the_caller_is_told_busy_at_once() {
    let OneRunningOneQueued {
        server,
        release,
        mut started_rx,
        client,
        address,
        stall,
        first,
        second,
    } = one_running_one_queued(3).await;

    let err = guard("the third call", stall.on_provider(&address, 3).call(&3))
        .await
        .unwrap_err();
    match &err {
        Error::Busy {
            rpc,
            provider,
            address: at,
            reason,
        } => {
            assert_eq!(rpc, "stall");
            assert_eq!(*provider, 3);
            assert_eq!(at, &server.address().to_string());
            assert_eq!(
                reason,
                "provider 3: 1 handler running and 1 queued (max_running 1, max_queued 1)"
            );
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert_eq!(err.reach(), Reach::NotReached);
    assert!(err.is_retry_safe(false));
    let message = err.to_string();
    assert!(
        message.contains("busy") && message.contains("'stall'"),
        "{message}"
    );
    // Refused while the first handler still waits: not a timeout.
    assert!(!first.is_finished() && !second.is_finished());
    assert!(started_rx.try_recv().is_err(), "a refused request started");
    let load = server.provider_load(3).unwrap();
    assert_eq!(
        (load.running, load.queued, load.refused, load.dropped),
        (1, 1, 1, 0)
    );

    release.add_permits(1);
    assert_eq!(guard("the first call", first).await.unwrap().unwrap(), 2);
    assert_eq!(started(&mut started_rx).await, 2, "the queued request runs");
    release.add_permits(1);
    assert_eq!(guard("the second call", second).await.unwrap().unwrap(), 4);
    load_until(&server, 3, "every place given back", |l| {
        l.running == 0 && l.queued == 0
    })
    .await;
    release.add_permits(1);
    assert_eq!(
        guard("a call after", stall.on_provider(&address, 3).call(&5))
            .await
            .unwrap(),
        10
    );
    server.finalize().await;
    client.finalize().await;
}

/// A request queued when the engine finalizes never runs its handler, even
/// once the handler before it finishes and gives its place back.
#[tokio::test]
async fn a_request_queued_across_finalize_does_not_run() {
    let server = Engine::builder("mem")
        .provider(3, ProviderOptions::limits(1, 1))
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    let mut started_rx = register_stall(&server, 3, &release);
    let (client, address) = client_of(&server).await;
    let stall = client.remote::<u32, u32>("stall");
    let first = spawn_call(stall.on_provider(&address, 3), 1);
    assert_eq!(started(&mut started_rx).await, 1);
    let second = spawn_call(stall.on_provider(&address, 3), 2);
    load_until(&server, 3, "the second request queued", |l| l.queued == 1).await;

    guard("finalize", server.finalize()).await;
    release.add_permits(2);
    load_until(&server, 3, "the queue emptied", |l| {
        l.queued == 0 && l.running == 0
    })
    .await;
    assert!(
        !matches!(started_rx.try_recv(), Ok(2)),
        "a queued request ran after finalize"
    );
    for call in [first, second] {
        let err = guard("a call to a finalized server", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, Error::ConnectionLost { .. } | Error::Finalized),
            "{err:?}"
        );
    }
    client.finalize().await;
}

/// Provider 3 is full; provider 4 (no limits) runs two handlers at once
/// and answers calls meanwhile, and has no load to report.
#[tokio::test]
async fn a_provider_without_limits_is_unaffected() {
    let server = Engine::builder("mem")
        .provider(3, ProviderOptions::limits(1, 0))
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    let mut started_a = register_stall(&server, 3, &release);
    let mut started_b = register_stall(&server, 4, &release);
    server
        .register_with(
            "echo",
            RpcOptions::provider(4),
            |h: Handle, n: u32| async move { h.respond(&n).await },
        )
        .unwrap();
    let (client, address) = client_of(&server).await;
    let stall = client.remote::<u32, u32>("stall");
    let echo = client.remote::<u32, u32>("echo");

    let a = spawn_call(stall.on_provider(&address, 3), 1);
    assert_eq!(started(&mut started_a).await, 1);
    let err = guard("A, full", stall.on_provider(&address, 3).call(&2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { provider: 3, .. }), "{err:?}");

    let b1 = spawn_call(stall.on_provider(&address, 4), 10);
    let b2 = spawn_call(stall.on_provider(&address, 4), 20);
    let mut both = [started(&mut started_b).await, started(&mut started_b).await];
    both.sort_unstable();
    assert_eq!(both, [10, 20], "B runs two handlers while A is full");
    for n in 0..20 {
        let answer = guard("B's echo", echo.on_provider(&address, 4).call(&n)).await;
        assert_eq!(answer.unwrap(), n);
    }
    assert!(server.provider_load(4).is_none());
    assert!(!a.is_finished());

    release.add_permits(3);
    assert_eq!(guard("A", a).await.unwrap().unwrap(), 2);
    assert_eq!(guard("B 1", b1).await.unwrap().unwrap(), 20);
    assert_eq!(guard("B 2", b2).await.unwrap().unwrap(), 40);
    server.finalize().await;
    client.finalize().await;
}

/// A handler that keeps its handle holds its provider's place until it
/// responds: the place is the request's, not the handler function's.
#[tokio::test]
async fn a_deferred_response_holds_the_place() {
    let server = Engine::builder("mem")
        .provider(6, ProviderOptions::limits(1, 0))
        .build()
        .await
        .unwrap();
    let (handles_tx, mut handles_rx) = mpsc::unbounded_channel::<Handle>();
    server
        .register_with(
            "defer",
            RpcOptions::provider(6),
            move |h: Handle, (): ()| {
                let handles_tx = handles_tx.clone();
                async move {
                    handles_tx.send(h).unwrap();
                }
            },
        )
        .unwrap();
    let (client, address) = client_of(&server).await;
    let defer = client.remote::<(), u32>("defer");

    let first = spawn_call(defer.on_provider(&address, 6), ());
    let handle = guard("the kept handle", handles_rx.recv()).await.unwrap();
    // The handler function has returned; its request is not done.
    let err = guard(
        "while the handle is kept",
        defer.on_provider(&address, 6).call(&()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Busy { provider: 6, .. }), "{err:?}");

    handle.respond(&7u32).await.unwrap();
    drop(handle);
    assert_eq!(guard("the first call", first).await.unwrap().unwrap(), 7);
    load_until(&server, 6, "the place given back", |l| l.running == 0).await;
    let again = spawn_call(defer.on_provider(&address, 6), ());
    let handle = guard("the next handle", handles_rx.recv()).await.unwrap();
    handle.respond(&8u32).await.unwrap();
    drop(handle);
    assert_eq!(guard("the next call", again).await.unwrap().unwrap(), 8);
    server.finalize().await;
    client.finalize().await;
}

/// A one-way request past the limits is dropped (and counted), never run
/// and never answered.
#[tokio::test]
async fn a_one_way_request_past_the_limit_is_dropped() {
    let server = Engine::builder("mem")
        .provider(2, ProviderOptions::limits(1, 0))
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let gate = release.clone();
    server
        .register_with(
            "note",
            RpcOptions::provider(2).disable_response(),
            move |_h: Handle, n: u32| {
                let (started_tx, gate) = (started_tx.clone(), gate.clone());
                async move {
                    started_tx.send(n).unwrap();
                    gate.acquire().await.unwrap().forget();
                }
            },
        )
        .unwrap();
    let (client, address) = client_of(&server).await;
    let note = client.remote::<u32, ()>("note").disable_response();

    guard("one-way 1", note.on_provider(&address, 2).call(&1))
        .await
        .unwrap();
    assert_eq!(started(&mut started_rx).await, 1);
    // Sent, and returns as a one-way call does; the server drops it.
    guard("one-way 2", note.on_provider(&address, 2).call(&2))
        .await
        .unwrap();
    let load = load_until(&server, 2, "the second dropped", |l| l.dropped == 1).await;
    assert_eq!((load.running, load.refused), (1, 0));

    release.add_permits(1);
    load_until(&server, 2, "the first done", |l| l.running == 0).await;
    release.add_permits(1);
    guard("one-way 3", note.on_provider(&address, 2).call(&3))
        .await
        .unwrap();
    assert_eq!(
        started(&mut started_rx).await,
        3,
        "the dropped request never ran"
    );
    server.finalize().await;
    client.finalize().await;
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// A provider given a pool runs its handlers on the pool's threads, with
/// its limits (a request queued waits on the pool too); the others run
/// where handlers run. `Engine::config` reports providers and pools.
#[tokio::test]
async fn a_pooled_provider_runs_on_its_pool() {
    let server = Engine::builder("mem")
        .config_json(
            r#"{"rpc_thread_count": 1,
                "providers": {"5": {"pool": "storage", "max_running": 1, "max_queued": 4}},
                "pools": {"storage": {"threads": 2}}}"#,
        )
        .build()
        .await
        .unwrap();
    for p in [0u16, 5] {
        server
            .register_with(
                "where",
                RpcOptions::provider(p),
                |h: Handle, (): ()| async move { h.respond(&thread_name()).await },
            )
            .unwrap();
    }
    let config = server.config();
    assert_eq!(config["pools"]["storage"]["threads"], 2);
    assert_eq!(config["providers"]["5"]["pool"], "storage");
    assert_eq!(config["providers"]["5"]["max_running"], 1);
    assert_eq!(config["providers"]["5"]["max_queued"], 4);

    let (client, address) = client_of(&server).await;
    let whereis = client.remote::<(), String>("where");
    let pooled = guard("provider 5", whereis.on_provider(&address, 5).call(&()))
        .await
        .unwrap();
    assert_eq!(pooled, courier::runtime::pool_thread_name("storage"));
    assert_eq!(pooled, "courier-pool-storage");
    let plain = guard("provider 0", whereis.on_provider(&address, 0).call(&()))
        .await
        .unwrap();
    assert_eq!(plain, courier::runtime::RPC_THREAD_NAME);
    // Several at once: some wait in provider 5's queue, all on the pool.
    let calls: Vec<_> = (0..4)
        .map(|_| spawn_call(whereis.on_provider(&address, 5), ()))
        .collect();
    for call in calls {
        let name = guard("a pooled call", call).await.unwrap().unwrap();
        assert_eq!(name, "courier-pool-storage");
    }
    server.finalize().await;
    client.finalize().await;
}

/// The builder's equivalents, and a configuration that names what is
/// wrong: an unknown pool, a pool without threads, the reserved provider id.
#[tokio::test]
async fn provider_and_pool_errors_are_named() {
    let server = Engine::builder("mem")
        .pool("p", 1)
        .provider(9, ProviderOptions::default().pool("p"))
        .build()
        .await
        .unwrap();
    assert_eq!(server.config()["pools"]["p"]["threads"], 1);
    assert!(server.provider_load(9).is_none(), "a pool only: no limit");
    server.finalize().await;

    let cases = [
        (
            Engine::builder("mem").provider(1, ProviderOptions::default().pool("nope")),
            "providers.1.pool: no pool named 'nope'",
        ),
        (
            Engine::builder("mem").config_json(
                r#"{"pools": {"a": {"threads": 1}}, "providers": {"1": {"pool": "b"}}}"#,
            ),
            "no pool named 'b' in `pools` (defined: a)",
        ),
        (
            Engine::builder("mem").pool("zero", 0),
            "pools.zero.threads must be positive",
        ),
        (
            Engine::builder("mem").provider(65535, ProviderOptions::limits(1, 0)),
            "provider id 65535 is reserved",
        ),
        (
            Engine::builder("mem").config_json(r#"{"providers": {"1": {"max_running": 0}}}"#),
            "providers.1.max_running must be positive",
        ),
    ];
    for (builder, wanted) in cases {
        let err = builder.build().await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(wanted), "{message}");
    }
}

/// The blocking facade: a pooled provider's (synchronous) handler runs on
/// its pool, so it blocks the pool's threads; another provider's on the
/// engine's serving thread; neither on the progress loop.
#[test]
fn a_blocking_engine_runs_a_pooled_provider_on_its_pool() {
    use courier::blocking;
    let server = blocking::Engine::builder("mem")
        .use_progress_thread(true)
        .pool("sync", 1)
        .provider(1, ProviderOptions::limits(1, 8).pool("sync"))
        .build()
        .unwrap();
    for p in [0u16, 1] {
        server
            .register_with(
                "where",
                RpcOptions::provider(p),
                |h: blocking::Handle, (): ()| h.respond(&thread_name()),
            )
            .unwrap();
    }
    let client = blocking::Engine::builder("mem").client().build().unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    let whereis = client.remote::<(), String>("where").timeout(HANG_GUARD);
    let pooled = whereis.on_provider(&address, 1).call(&()).unwrap();
    assert_eq!(pooled, "courier-pool-sync");
    let plain = whereis.on_provider(&address, 0).call(&()).unwrap();
    assert_eq!(plain, courier::blocking::SERVE_THREAD_NAME);
    assert_eq!(server.provider_load(1).map(|l| l.refused), Some(0));
}

/// max_running 1, max_queued 1: a queued request whose caller drops its
/// call never runs its handler; the next request runs when the first ends.
#[tokio::test]
async fn a_queued_request_cancelled_by_its_caller_never_runs() {
    let OneRunningOneQueued {
        server: _server,
        release,
        mut started_rx,
        client: _client,
        address,
        stall,
        first,
        second: queued,
    } = one_running_one_queued(5).await;
    queued.abort();
    // Dropped here, which sends its Cancel.
    assert!(guard("the dropped call", queued).await.is_err());
    // The first ends; the cancelled one gives its place back without
    // running; a third one runs: the next handler to start is the third.
    release.add_permits(1);
    assert_eq!(guard("the first call", first).await.unwrap().unwrap(), 2);
    let third = spawn_call(stall.on_provider(&address, 5), 3);
    assert_eq!(started(&mut started_rx).await, 3);
    release.add_permits(1);
    assert_eq!(guard("the third call", third).await.unwrap().unwrap(), 6);
}
