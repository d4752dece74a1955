//! What the group-call tests share: a group whose list the test changes,
//! replicas that count, hang or fail on demand, and a guard on every wait.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::{Engine, Handle, RpcOptions};
use courier_group::Members;
use tokio::sync::mpsc;

/// The bound on any wait of a test: far past what a run needs, so that a
/// bug fails the test instead of hanging it.
pub const GUARD: Duration = Duration::from_secs(30);

/// Awaits `work` within [`GUARD`], or fails the test naming `what`.
pub async fn within<T>(what: &str, work: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, work).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {GUARD:?}"),
    }
}

/// A group whose live list the test sets.
#[derive(Debug, Default)]
pub struct TestMembers {
    list: Mutex<Vec<String>>,
    version: AtomicU64,
}

impl TestMembers {
    pub fn new(list: impl IntoIterator<Item = String>) -> Arc<Self> {
        let m = Arc::new(Self::default());
        m.set(list);
        m
    }

    pub fn set(&self, list: impl IntoIterator<Item = String>) {
        *self.list.lock().unwrap() = list.into_iter().collect();
        self.version.fetch_add(1, Ordering::SeqCst);
    }
}

impl Members for TestMembers {
    fn live(&self) -> Vec<String> {
        self.list.lock().unwrap().clone()
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }
}

/// The provider id the replicas serve.
pub const PROVIDER: u16 = 3;

/// What a replica's `get` handler does, set by the test while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Requests served (answered or hung).
    pub served: AtomicUsize,
    /// Hang every request (until cancelled).
    pub hang: AtomicBool,
    /// Hang the next request only (cleared by the one that takes it).
    pub hang_once: Option<Arc<AtomicBool>>,
}

/// A replica: an engine serving `get` (idempotent) and `put` (not) at
/// [`PROVIDER`]; both answer `(index, key)`.
pub struct Replica {
    pub engine: Engine,
    pub index: u32,
    pub behaviour: Arc<Behaviour>,
    /// A message per request that hangs: its replica's index.
    pub started: mpsc::UnboundedReceiver<u32>,
    /// A message per hung request whose handler was cancelled.
    pub cancelled: mpsc::UnboundedReceiver<u32>,
}

impl Replica {
    pub fn address(&self) -> String {
        self.engine.address().to_string()
    }
}

/// Starts replica `index` listening on `listen` (a protocol, or an address
/// to take again).
pub async fn replica(listen: &str, index: u32, hang_once: Option<Arc<AtomicBool>>) -> Replica {
    let engine = Engine::new(listen).await.unwrap();
    let behaviour = Arc::new(Behaviour {
        hang_once,
        ..Behaviour::default()
    });
    let (started_tx, started) = mpsc::unbounded_channel();
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    for (name, options) in [
        ("get", RpcOptions::provider(PROVIDER).idempotent()),
        ("put", RpcOptions::provider(PROVIDER)),
    ] {
        let b = behaviour.clone();
        let started_tx = started_tx.clone();
        let cancelled_tx = cancelled_tx.clone();
        engine
            .register_with(name, options, move |h: Handle, key: u32| {
                let b = b.clone();
                let started_tx = started_tx.clone();
                let cancelled_tx = cancelled_tx.clone();
                async move {
                    b.served.fetch_add(1, Ordering::SeqCst);
                    let once = b
                        .hang_once
                        .as_ref()
                        .is_some_and(|f| f.swap(false, Ordering::SeqCst));
                    if once || b.hang.load(Ordering::SeqCst) {
                        let token = h.cancel_token();
                        tokio::spawn(async move {
                            token.cancelled().await;
                            let _ = cancelled_tx.send(index);
                        });
                        let _ = started_tx.send(index);
                        std::future::pending::<()>().await;
                    }
                    h.respond(&(index, key)).await
                }
            })
            .unwrap();
    }
    Replica {
        engine,
        index,
        behaviour,
        started,
        cancelled,
    }
}

/// `n` replicas on `protocol`.
pub async fn replicas(protocol: &str, n: u32) -> Vec<Replica> {
    let mut all = Vec::new();
    for i in 0..n {
        all.push(replica(protocol, i, None).await);
    }
    all
}

/// A client engine for `protocol`.
pub async fn client(protocol: &str) -> Engine {
    Engine::builder(protocol).client().build().await.unwrap()
}

pub fn addresses(replicas: &[Replica]) -> Vec<String> {
    replicas.iter().map(Replica::address).collect()
}

/// Workers calling `get(key)` (each with keys of its own) in a loop until
/// stopped, counting the answers that are right and keeping the others.
pub struct Load {
    done: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts `n` workers calling `get`, which answers `(replica, key)`.
    pub fn start(get: &courier_group::GroupFunction<u32, (u32, u32)>, n: u32) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let workers = (0..n)
            .map(|w| {
                let (get, done, ok) = (get.clone(), done.clone(), ok.clone());
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut key = w * 1_000_000;
                    while !done.load(Ordering::SeqCst) {
                        key += 1;
                        match get.call(&key).await {
                            Ok((_, k)) if k == key => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            other => failures.push(format!("{other:?}")),
                        }
                    }
                    failures
                })
            })
            .collect();
        Self { done, ok, workers }
    }

    /// How many calls were answered right so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `more` calls were answered right after this one.
    pub async fn wait_for_more(&self, what: &str, more: usize) {
        let target = self.ok() + more;
        until(what, || self.ok() >= target).await;
    }

    /// Stops the workers; the failed calls, as text.
    pub async fn stop(self) -> Vec<String> {
        self.done.store(true, Ordering::SeqCst);
        let mut failures = Vec::new();
        for w in self.workers {
            failures.extend(within("a worker to stop", w).await.unwrap());
        }
        failures
    }
}

/// Yields until `cond` holds, within [`GUARD`].
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    within(what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
