//! The state every part of an engine reads: its transport and settings,
//! where its tasks run, its connections and peers, its exposed memory, and
//! finalize. Handles, addresses and remote functions hold an
//! `Arc<EngineState>`; it knows nothing above it (handlers and dispatch
//! reach it, never the other way): opening a connection goes through the
//! [`Dial`] the engine installs.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::runtime::{Handle as RtHandle, Runtime};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::bulk::table::BulkTable;
use crate::config::Config;
use crate::conn::{Conn, FINALIZED};
use crate::error::{Error, Result};
use crate::lifecycle::{Callback, Lifecycle};
use crate::limits::ConnectionSlots;
use crate::liveness::Clock;
use crate::paths::{AddressSet, Paths};
use crate::peer::{Dial, Peer};
use crate::progress::Progress;
use crate::stats::record::{Recorder, Serving as StatsServing};
use crate::sync::lock;

/// Where an engine's tasks run.
pub(crate) struct Runtimes {
    /// Engine tasks: accepting, reading connections, sending.
    pub(crate) io: RtHandle,
    /// Handlers.
    pub(crate) handlers: RtHandle,
    /// Runtimes the engine owns (progress thread, RPC threads), shut down
    /// at finalize.
    pub(crate) owned: Vec<Runtime>,
}

/// A listener's task, while there is one.
struct ListenerTask {
    abort: AbortHandle,
    /// Answered by the accept loop once the listener is dropped.
    done: Option<oneshot::Receiver<()>>,
}

/// The state shared by an engine, its tasks, handles and addresses.
pub(crate) struct EngineState {
    /// The protocols spoken, and how a path to a peer is chosen.
    pub(crate) paths: Paths,
    pub(crate) config: Config,
    /// The listening address, one part per protocol (server mode).
    pub(crate) self_addr: Option<AddressSet>,
    /// Where engine tasks run.
    pub(crate) rt: RtHandle,
    /// Where handlers run.
    pub(crate) handler_rt: RtHandle,
    /// Whether handlers run on the engine's own runtime (no RPC threads), so
    /// the reader may give them their first poll itself.
    pub(crate) inline_handlers: bool,
    /// The polling-before-parking policy.
    pub(crate) progress: Arc<Progress>,
    pub(crate) lifecycle: Lifecycle,
    /// Exposed bulk regions and fast-path leases.
    pub(crate) bulk: Arc<BulkTable>,
    /// Places for accepted connections (`max_connections`).
    pub(crate) conn_slots: ConnectionSlots,
    /// Statistics (`stats/`).
    pub(crate) stats: Recorder,
    /// Whether a statistics snapshot is being taken for a peer.
    pub(crate) stats_serving: StatsServing,
    /// The coarse clock keepalive and the readers share (`liveness.rs`).
    pub(crate) clock: Clock,
    /// Keepalive's interval + timeout in milliseconds, if it is on: a
    /// connection silent for longer is given up ([`EngineState::given_up`]).
    keepalive_limit_ms: Option<u64>,
    peers: Mutex<HashMap<AddressSet, Arc<Peer>>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    dialer: OnceLock<Weak<dyn Dial>>,
    stop_listener: watch::Sender<bool>,
    listeners: Mutex<Vec<ListenerTask>>,
    spinner: Mutex<Option<AbortHandle>>,
    keepalive: Mutex<Option<AbortHandle>>,
    owned_runtimes: Mutex<Vec<Runtime>>,
    /// Run at finalize, after the connections are closed (the engine drops
    /// its handlers there).
    teardown: Mutex<Vec<Callback>>,
}

impl fmt::Debug for EngineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineState")
            .field("protocol", &self.paths.name())
            .field("mode", &self.config.mode)
            .field("address", &self.self_addr.as_ref().map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

impl EngineState {
    pub(crate) fn new(
        paths: Paths,
        config: Config,
        self_addr: Option<AddressSet>,
        runtimes: Runtimes,
    ) -> Self {
        Self {
            paths,
            self_addr,
            rt: runtimes.io,
            handler_rt: runtimes.handlers,
            inline_handlers: config.rpc_thread_count == 0,
            progress: Arc::new(Progress::new(
                config.progress_spin(),
                config.progress_spin_busy(),
            )),
            lifecycle: Lifecycle::new(config.enable_remote_shutdown),
            bulk: Arc::new(BulkTable::new(config.bulk)),
            conn_slots: ConnectionSlots::new(config.max_connections),
            stats: Recorder::new(config.stats.counting(), config.stats.timing),
            stats_serving: StatsServing::default(),
            clock: Clock::new(),
            keepalive_limit_ms: config.keepalive.enabled().map(|(interval, timeout)| {
                u64::try_from((interval + timeout).as_millis()).unwrap_or(u64::MAX)
            }),
            config,
            peers: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            dialer: OnceLock::new(),
            stop_listener: watch::channel(false).0,
            listeners: Mutex::new(Vec::new()),
            spinner: Mutex::new(None),
            keepalive: Mutex::new(None),
            owned_runtimes: Mutex::new(runtimes.owned),
            teardown: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn is_finalizing(&self) -> bool {
        self.lifecycle.is_finalizing()
    }

    /// Installs what opens connections (once, when the engine is built).
    pub(crate) fn set_dialer(&self, dialer: Weak<dyn Dial>) {
        let _ = self.dialer.set(dialer);
    }

    /// Records an accept loop's task, and the channel on which it says
    /// that its listener is gone.
    pub(crate) fn add_listener(&self, abort: AbortHandle, done: oneshot::Receiver<()>) {
        lock(&self.listeners).push(ListenerTask {
            abort,
            done: Some(done),
        });
    }

    /// Tells the accept loops to stop (see [`EngineState::add_listener`]).
    pub(crate) fn listener_stop(&self) -> watch::Receiver<bool> {
        self.stop_listener.subscribe()
    }

    /// Records the progress spinner's task.
    pub(crate) fn set_spinner(&self, abort: AbortHandle) {
        *lock(&self.spinner) = Some(abort);
    }

    /// Records the engine's keepalive task (`keepalive.rs`).
    pub(crate) fn set_keepalive(&self, abort: AbortHandle) {
        *lock(&self.keepalive) = Some(abort);
    }

    /// Adds something to do at finalize, once the connections are closed.
    pub(crate) fn on_teardown(&self, cb: Callback) {
        lock(&self.teardown).push(cb);
    }

    /// Names the protocols of `addr` canonically and checks that this
    /// engine speaks one of them (`paths.rs`).
    ///
    /// # Errors
    /// [`Error::ProtocolMismatch`], [`Error::AddressSet`].
    pub(crate) fn canonical(&self, addr: &AddressSet) -> Result<AddressSet> {
        self.paths.check_lookup(addr)
    }

    /// The engine's one [`Peer`] for `addr` (canonical), made on first use.
    pub(crate) fn peer(&self, addr: AddressSet) -> Arc<Peer> {
        lock(&self.peers)
            .entry(addr.clone())
            .or_insert_with(|| Arc::new(Peer::new(addr, None)))
            .clone()
    }

    /// The live connection to `peer`, opened if there is none.
    ///
    /// # Errors
    /// [`Error::Finalized`]; connect errors.
    pub(crate) async fn connection_for(&self, peer: &Peer) -> Result<Arc<Conn>> {
        if self.is_finalizing() {
            return Err(Error::Finalized);
        }
        if let Some(c) = peer.live() {
            match self.given_up(&c) {
                None => return Ok(c),
                Some(reason) => c.kill(&reason),
            }
        }
        let Some(dialer) = self.dialer.get().and_then(Weak::upgrade) else {
            return Err(Error::Finalized);
        };
        peer.connection(dialer.as_ref()).await
    }

    /// Why `conn` is surely given up by its peer, if it is: nothing was
    /// received on it for longer than keepalive allows. That happens when
    /// this engine did not run (the blocking API without a progress thread,
    /// between calls): it answered no probe, and a peer with the same
    /// keepalive closed the connection meanwhile. A call then opens a new
    /// connection rather than write on that one (the keepalive thread keeps
    /// the clock going while the engine does not run).
    fn given_up(&self, conn: &Conn) -> Option<String> {
        // On every call: integers only, the message made only if it is used.
        let limit = self.keepalive_limit_ms?;
        let silent = self.clock.now().saturating_sub(conn.liveness.heard());
        if silent < limit || conn.liveness.is_paused() {
            return None;
        }
        Some(given_up_reason(silent, limit))
    }

    /// A fresh connection id.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a connection to the table finalize closes.
    pub(crate) fn add_conn(&self, conn: Arc<Conn>) {
        let id = conn.id;
        // A new connection counts as heard from now.
        conn.liveness.heard_at(self.clock.refresh());
        lock(&self.conns).insert(id, conn.clone());
        if self.is_finalizing() {
            lock(&self.conns).remove(&id);
            conn.kill(FINALIZED);
        }
    }

    /// The connections alive now (a snapshot).
    pub(crate) fn live_conns(&self) -> Vec<Arc<Conn>> {
        lock(&self.conns).values().cloned().collect()
    }

    /// Whether `f` holds for one of the connections (without a snapshot).
    pub(crate) fn any_conn(&self, f: impl FnMut(&Arc<Conn>) -> bool) -> bool {
        lock(&self.conns).values().any(f)
    }

    /// Forgets a connection whose reader ended.
    pub(crate) fn forget_conn(&self, id: u64) {
        if let Some(conn) = lock(&self.conns).remove(&id) {
            self.stats.retire(&conn.counters);
        }
        self.bulk.forget_conn(id);
    }

    /// Finalizes: awaits the async pre-finalize callbacks (the engine
    /// still works), then refuses new work, stops listening, ends every connection
    /// (calls in flight fail with [`Error::Finalized`]), stops owned
    /// threads. A second call waits for the first to finish.
    pub(crate) async fn finalize(&self) {
        if !self.lifecycle.begin_closing() {
            self.lifecycle.wait_finalized().await;
            return;
        }
        // Work that needs a working engine (a group member's goodbyes)
        // first: nothing has stopped yet.
        if !self.lifecycle.is_finalizing() {
            self.lifecycle.run_pre_finalize_async().await;
        }
        if !self.lifecycle.begin_finalize() {
            self.lifecycle.wait_finalized().await;
            return;
        }
        self.lifecycle.run_pre_finalize();
        self.stop_listener.send_replace(true);
        let dones: Vec<_> = lock(&self.listeners)
            .iter_mut()
            .filter_map(|l| l.done.take())
            .collect();
        for done in dones {
            // An accept loop drops its listener (removing a socket file)
            // before it answers.
            let _ = done.await;
        }
        self.finish_finalize();
    }

    /// The synchronous part of finalize (also run when the engine is
    /// dropped without being finalized).
    pub(crate) fn finish_finalize(&self) {
        self.lifecycle.begin_finalize();
        for l in lock(&self.listeners).drain(..) {
            l.abort.abort();
        }
        if let Some(s) = lock(&self.spinner).take() {
            s.abort();
        }
        if let Some(k) = lock(&self.keepalive).take() {
            k.abort();
        }
        let conns: Vec<Arc<Conn>> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for c in conns {
            c.kill(FINALIZED);
        }
        lock(&self.peers).clear();
        for cb in std::mem::take(&mut *lock(&self.teardown)) {
            cb();
        }
        for rt in lock(&self.owned_runtimes).drain(..) {
            rt.shutdown_background();
        }
        self.lifecycle.run_on_finalize();
        self.lifecycle.set_finalized();
    }
}

/// Why a connection silent for `silent` ms (keepalive allows `limit`) is
/// given up.
#[cold]
fn given_up_reason(silent: u64, limit: u64) -> String {
    format!(
        "nothing received for {silent} ms, more than keepalive's interval + timeout \
         ({limit} ms): the connection is given up and a new one opened"
    )
}
