//! Advice from the statistics (issue 18): each piece of advice comes from
//! engines put in that situation, over the unix transport in one process,
//! and an engine that is not in it gets none.
//!
//! Nothing waits by sleeping: handlers hold on semaphores or condition
//! variables that the test releases, and the test waits for a condition
//! on the statistics (polled with a yield or a millisecond's sleep between
//! looks) under a hang guard that fails with what it waited for. No test
//! asserts a duration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use courier::stats::advice::{
    CONNECTION_NEAR_IN_FLIGHT_LIMIT, DEADLINE_ERRORS, PARKS_UNDER_STEADY_STREAM,
    PROVIDER_SHEDS_LOAD, QUEUED_BEHIND_HANDLERS, UNKNOWN_RPC,
};
use courier::stats::{Advice, Severity};
use courier::{Engine, Error, Handle, ProviderOptions, RpcOptions, Stats};
use tokio::sync::Semaphore;

/// A hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// Calls a steady stream may take before the advice about it must show.
const MAX_STREAM_CALLS: u32 = 20_000;

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} did not happen within {HANG_GUARD:?}"),
    }
}

/// Waits until `cond` holds for `engine`'s statistics (looking again after
/// a yield and a millisecond), and returns them; fails with `what` and the
/// last statistics past the hang guard.
async fn stats_until(engine: &Engine, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    let until = Instant::now() + HANG_GUARD;
    loop {
        let stats = engine.stats();
        if cond(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < until,
            "hang guard: {what} did not happen within {HANG_GUARD:?}; last statistics:\n{}",
            stats.to_json_pretty()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn codes(stats: &Stats) -> Vec<String> {
    stats.advise().into_iter().map(|a| a.code).collect()
}

fn has(stats: &Stats, code: &str) -> bool {
    stats.advise().iter().any(|a| a.code == code)
}

/// The advice of `code` about `subject`; fails with all the advice if none.
fn advice(stats: &Stats, code: &str, subject: &str) -> Advice {
    let all = stats.advise();
    all.iter()
        .find(|a| a.code == code && a.subject == subject)
        .cloned()
        .unwrap_or_else(|| panic!("no {code} about {subject}: {all:#?}"))
}

async fn server(config: &str) -> Engine {
    Engine::builder("unix")
        .stats(true)
        .config_json(config)
        .build()
        .await
        .unwrap()
}

async fn client_of(server: &Engine) -> (Engine, courier::Address) {
    let client = Engine::builder("unix")
        .stats(true)
        .client()
        .build()
        .await
        .unwrap();
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    (client, address)
}

fn register_echo(server: &Engine) {
    server
        .register(
            "echo",
            |h: Handle, n: u32| async move { h.respond(&n).await },
        )
        .unwrap();
}

/// Registers `hold` at `provider`: waits for a permit of `release`, then
/// answers its argument.
fn register_hold(server: &Engine, provider: u16, release: &Arc<Semaphore>) {
    let release = release.clone();
    server
        .register_with(
            "hold",
            RpcOptions::provider(provider),
            move |h: Handle, n: u32| {
                let release = release.clone();
                async move {
                    release.acquire().await.unwrap().forget();
                    h.respond(&n).await
                }
            },
        )
        .unwrap();
}

/// The served side of `name@provider`: (in flight, waiting).
/// Starts `n` calls of `hold` at `provider`, each on a task of its own.
fn call_holds(
    client: &Engine,
    address: &courier::Address,
    provider: u16,
    n: u32,
) -> Vec<tokio::task::JoinHandle<courier::Result<u32>>> {
    (0..n)
        .map(|i| {
            let c = client
                .remote::<u32, u32>("hold")
                .on_provider(address, provider);
            tokio::spawn(async move { c.call(&i).await })
        })
        .collect()
}

/// Lets the held handlers answer, and waits for every call to succeed.
async fn release_all(
    release: &Semaphore,
    calls: Vec<tokio::task::JoinHandle<courier::Result<u32>>>,
) {
    release.add_permits(calls.len());
    for call in calls {
        guard("a call", call).await.unwrap().unwrap();
    }
}

/// A counting server whose polling window is `spin`, with `echo`, and a
/// client's callable of it.
async fn echo_with_spin(spin: Duration) -> (Engine, Engine, courier::Callable<u32, u32>) {
    let server = Engine::builder("unix")
        .stats(true)
        .progress_spin(spin)
        .build()
        .await
        .unwrap();
    register_echo(&server);
    let (client, address) = client_of(&server).await;
    let echo = client.remote::<u32, u32>("echo").on(&address);
    (server, client, echo)
}

fn served(stats: &Stats, name: &str, provider: u16) -> (u64, u64) {
    stats
        .rpc(name, provider)
        .and_then(|r| r.served.as_ref())
        .map_or((0, 0), |s| (s.in_flight, s.waiting))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_that_serve_and_call_in_the_ordinary_way_get_no_advice() {
    let server = Engine::builder("unix")
        .stats(true)
        .stats_timing(true)
        .build()
        .await
        .unwrap();
    register_echo(&server);
    let (client, address) = client_of(&server).await;
    let echo = client.remote::<u32, u32>("echo").on(&address);
    for n in 0..20 {
        assert_eq!(guard("a call", echo.call(&n)).await.unwrap(), n);
    }
    let (s, c) = (server.stats(), client.stats());
    assert_eq!(s.rpc("echo", 0).unwrap().served.as_ref().unwrap().ok, 20);
    assert!(s.advise().is_empty(), "{:#?}", s.advise());
    assert!(c.advise().is_empty(), "{:#?}", c.advise());
    client.finalize().await;
    server.finalize().await;
}

/// A blocking server whose handler holds the one thread that runs
/// handlers, and requests that arrive meanwhile: they queue behind it.
#[test]
fn requests_queued_behind_a_held_handler_are_queued_behind_handlers() {
    let run = HeldBlockingServer::start(0, 3);
    let stats = run.stats_until("two requests waiting behind the held one", |s| {
        served(s, "hold", 0) == (3, 2)
    });
    let a = advice(&stats, QUEUED_BEHIND_HANDLERS, "handlers");
    assert_eq!(a.severity, Severity::Info);
    assert!(a.finding.contains("hold@0 2"), "{a}");
    assert!(a.setting.contains("rpc_thread_count"), "{a}");
    assert!(a.setting.contains("num_rpc_threads"), "{a}");
    assert!(a.to_string().contains(" change: "), "{a}");
    run.finish();
}

/// The same with as many threads as requests: none waits.
#[test]
fn requests_each_on_a_thread_of_their_own_are_not_queued() {
    let run = HeldBlockingServer::start(4, 3);
    let stats = run.stats_until("three requests running", |s| {
        served(s, "hold", 0) == (3, 0) && run.started() == 3
    });
    assert!(
        !has(&stats, QUEUED_BEHIND_HANDLERS),
        "{:#?}",
        stats.advise()
    );
    run.finish();
}

/// A blocking server (a progress thread reads requests; `rpc_threads`
/// threads, or the serving thread, run handlers), timing on, whose `hold`
/// handler waits until the test opens its gate, and `calls` calls to it in
/// flight from a blocking client.
struct HeldBlockingServer {
    server: courier::blocking::Engine,
    _client: courier::blocking::Engine,
    gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
    calls: Vec<courier::blocking::Request<u32>>,
}

impl HeldBlockingServer {
    fn start(rpc_threads: usize, calls: u32) -> Self {
        let server = courier::blocking::Engine::builder("unix")
            .stats(true)
            .use_progress_thread(true)
            .num_rpc_threads(rpc_threads)
            .stats_timing(true)
            .build()
            .unwrap();
        // (open, handlers started)
        let gate = Arc::new((Mutex::new((false, 0_usize)), Condvar::new()));
        let held = gate.clone();
        server
            .register("hold", move |h: courier::blocking::Handle, n: u32| {
                let (lock, cvar) = &*held;
                let mut g = lock.lock().unwrap();
                g.1 += 1;
                while !g.0 {
                    g = cvar.wait(g).unwrap();
                }
                drop(g);
                h.respond(&n)
            })
            .unwrap();
        let client = courier::blocking::Engine::builder("unix")
            .stats(true)
            .client()
            .use_progress_thread(true)
            .build()
            .unwrap();
        let address = client.lookup(&server.address().to_string()).unwrap();
        let hold = client.remote::<u32, u32>("hold").on(&address);
        let calls = (0..calls)
            .map(|n| hold.call_nonblocking(&n).unwrap())
            .collect();
        Self {
            server,
            _client: client,
            gate,
            calls,
        }
    }

    fn started(&self) -> usize {
        self.gate.0.lock().unwrap().1
    }

    fn stats_until(&self, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
        let until = Instant::now() + HANG_GUARD;
        loop {
            let stats = self.server.stats();
            if cond(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < until,
                "hang guard: {what} did not happen within {HANG_GUARD:?}; last statistics:\n{}",
                stats.to_json_pretty()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Opens the gate; every call is answered, and nothing waits anymore.
    fn finish(mut self) {
        {
            let (lock, cvar) = &*self.gate;
            lock.lock().unwrap().0 = true;
            cvar.notify_all();
        }
        for (n, call) in std::mem::take(&mut self.calls).into_iter().enumerate() {
            assert_eq!(call.wait().unwrap(), u32::try_from(n).unwrap());
        }
        let stats = self.stats_until("every request done", |s| served(s, "hold", 0).0 == 0);
        assert_eq!(served(&stats, "hold", 0), (0, 0));
        assert!(
            !stats
                .advise()
                .iter()
                .any(|a| a.code == QUEUED_BEHIND_HANDLERS && a.subject == "handlers"),
            "nothing waits now: {:#?}",
            stats.advise()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_refuses_a_request_sheds_load() {
    let server = Engine::builder("unix")
        .stats(true)
        .provider(3, ProviderOptions::limits(1, 0))
        .serve_stats(true)
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    register_hold(&server, 3, &release);
    let (client, address) = client_of(&server).await;
    let hold = client.remote::<u32, u32>("hold");
    let first = tokio::spawn({
        let c = hold.on_provider(&address, 3);
        async move { c.call(&1).await }
    });
    stats_until(&server, "the first call running", |s| {
        served(s, "hold", 3).0 == 1
    })
    .await;
    assert!(
        !has(&server.stats(), PROVIDER_SHEDS_LOAD),
        "nothing refused yet"
    );
    let second = guard("the second call", hold.on_provider(&address, 3).call(&2)).await;
    assert!(matches!(second, Err(Error::Busy { .. })), "{second:?}");

    let a = advice(&server.stats(), PROVIDER_SHEDS_LOAD, "provider 3");
    assert_eq!(a.severity, Severity::Warning);
    assert!(a.finding.contains("refused 1 request with Busy"), "{a}");
    assert!(a.finding.contains("max_running 1, max_queued 0"), "{a}");
    assert!(a.setting.contains("max_running"), "{a}");
    // The caller is told too, and so is whoever reads the server's
    // statistics through its statistics RPC.
    let c = advice(&client.stats(), PROVIDER_SHEDS_LOAD, "hold@3");
    assert_eq!(c.severity, Severity::Info);
    let remote = guard("the statistics RPC", address.stats()).await.unwrap();
    assert!(has(&remote, PROVIDER_SHEDS_LOAD), "{:#?}", remote.advise());

    release.add_permits(1);
    assert_eq!(guard("the first call", first).await.unwrap().unwrap(), 1);
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_within_its_limits_sheds_nothing() {
    let server = Engine::builder("unix")
        .stats(true)
        .provider(3, ProviderOptions::limits(2, 0))
        .build()
        .await
        .unwrap();
    let release = Arc::new(Semaphore::new(0));
    register_hold(&server, 3, &release);
    let (client, address) = client_of(&server).await;
    let calls = call_holds(&client, &address, 3, 2);
    let s = stats_until(&server, "both calls running", |s| {
        served(s, "hold", 3).0 == 2
    })
    .await;
    assert!(!has(&s, PROVIDER_SHEDS_LOAD), "{:#?}", s.advise());
    release_all(&release, calls).await;
    assert!(
        server.stats().advise().is_empty(),
        "{:#?}",
        server.stats().advise()
    );
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_window_too_short_for_a_steady_stream_parks_between_its_messages() {
    let (server, client, echo) = echo_with_spin(Duration::from_micros(1)).await;
    // One call after another, until the server's figures show the stream
    // (a condition, bounded by a number of calls and the hang guard).
    let mut calls = 0;
    guard("the advice about the stream", async {
        while !has(&server.stats(), PARKS_UNDER_STEADY_STREAM) {
            assert!(
                calls < MAX_STREAM_CALLS,
                "no {PARKS_UNDER_STEADY_STREAM} after {calls} calls: {}",
                server.stats().to_json_pretty()
            );
            for n in 0..50 {
                assert_eq!(echo.call(&n).await.unwrap(), n);
            }
            calls += 50;
        }
    })
    .await;
    let stats = server.stats();
    let a = advice(&stats, PARKS_UNDER_STEADY_STREAM, "progress loop");
    assert_eq!(a.severity, Severity::Info);
    assert!(a.finding.contains("`progress_spin_us` 1)"), "{a}");
    assert!(a.setting.contains("EngineBuilder::progress_spin"), "{a}");
    assert!(stats.progress.short_parks > 0, "{:?}", stats.progress);
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_window_longer_than_the_gaps_of_a_stream_does_not_park() {
    let (server, client, echo) = echo_with_spin(Duration::from_millis(20)).await;
    for n in 0..300 {
        assert_eq!(guard("a call", echo.call(&n)).await.unwrap(), n);
    }
    let stats = server.stats();
    assert!(stats.progress.messages_in >= 300, "{:?}", stats.progress);
    assert!(
        !has(&stats, PARKS_UNDER_STEADY_STREAM),
        "{:#?}\n{:?}",
        stats.advise(),
        stats.progress
    );
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_more_calls_than_its_in_flight_limit_is_near_it() {
    let server = server(r#"{"max_in_flight_per_connection": 2}"#).await;
    let release = Arc::new(Semaphore::new(0));
    register_hold(&server, 0, &release);
    let (client, address) = client_of(&server).await;
    let calls = call_holds(&client, &address, 0, 3);
    // Two requests run; the reader stopped before a third.
    let stats = stats_until(&server, "the connection stopped at its limit", |s| {
        served(s, "hold", 0).0 == 2 && s.peers.iter().any(|p| p.limit_waits > 0)
    })
    .await;
    let peer = stats.peers.iter().find(|p| p.limit_waits > 0).unwrap();
    assert_eq!(peer.peak_requests_in_flight, 2);
    let subject = format!("peer {} (connection {})", peer.address, peer.connection);
    let a = advice(&stats, CONNECTION_NEAR_IN_FLIGHT_LIMIT, &subject);
    assert_eq!(a.severity, Severity::Warning);
    assert!(
        a.finding.contains("`max_in_flight_per_connection` 2"),
        "{a}"
    );
    assert!(a.setting.contains("max_in_flight_per_connection"), "{a}");
    assert!(
        a.setting.contains("sending more than this engine can run"),
        "{a}"
    );
    release_all(&release, calls).await;
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_below_its_in_flight_limit_is_not_near_it() {
    let server = server(r#"{"max_in_flight_per_connection": 4}"#).await;
    let release = Arc::new(Semaphore::new(0));
    register_hold(&server, 0, &release);
    let (client, address) = client_of(&server).await;
    let calls = call_holds(&client, &address, 0, 3);
    let stats = stats_until(&server, "three requests running", |s| {
        served(s, "hold", 0).0 == 3
    })
    .await;
    assert!(
        !has(&stats, CONNECTION_NEAR_IN_FLIGHT_LIMIT),
        "{:#?}",
        stats.advise()
    );
    release_all(&release, calls).await;
    client.finalize().await;
    server.finalize().await;
}

/// The caller's side: its calls ended past their deadline. (The server
/// counts the same request as `cancelled` or `deadline`, whichever comes
/// first of the caller's cancel and its own timer: its side of the rule is
/// tested on figures, in `stats/advice.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_their_deadline_are_told_to_the_caller() {
    let server = server("{}").await;
    let release = Arc::new(Semaphore::new(0));
    register_hold(&server, 0, &release);
    let (client, address) = client_of(&server).await;
    // The handler never answers in time: it holds until released, after.
    let late = client
        .remote::<u32, u32>("hold")
        .on(&address)
        .timeout(Duration::from_millis(20));
    let result = guard("the call", late.call(&1)).await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    let c = advice(&client.stats(), DEADLINE_ERRORS, "hold@0");
    assert_eq!(c.severity, Severity::Warning);
    assert!(
        c.finding
            .contains("1 of 1 call from here ended past its deadline"),
        "{c}"
    );
    assert!(c.setting.contains("timeouts.call_ms"), "{c}");
    // Calls that end in time are no advice (the late call's handler was
    // dropped when it was cancelled: the permit is for the next one).
    let (fresh, address) = client_of(&server).await;
    let hold = fresh.remote::<u32, u32>("hold").on(&address);
    release.add_permits(1);
    assert_eq!(guard("a call", hold.call(&2)).await.unwrap(), 2);
    assert!(
        !has(&fresh.stats(), DEADLINE_ERRORS),
        "{:#?}",
        fresh.stats().advise()
    );
    fresh.finalize().await;
    client.finalize().await;
    server.finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_rpc_that_is_not_there_is_told_on_both_sides() {
    let server = server("{}").await;
    register_echo(&server);
    let (client, address) = client_of(&server).await;
    let result = guard(
        "the call",
        client.remote::<u32, u32>("ecko").on(&address).call(&1),
    )
    .await;
    assert!(matches!(result, Err(Error::NoSuchRpc { .. })), "{result:?}");
    let s = advice(&server.stats(), UNKNOWN_RPC, "RPCs not registered here");
    assert!(s.finding.contains("peers sent 1 request"), "{s}");
    let c = advice(&client.stats(), UNKNOWN_RPC, "ecko@0");
    assert!(c.setting.contains("provider id"), "{c}");
    assert_eq!(codes(&client.stats()), [UNKNOWN_RPC]);
    client.finalize().await;
    server.finalize().await;
}
