//! The engine: its builder, RPC table, connections, and finalize.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use courier_transport::{
    Address as WireAddr, DynConnection, DynTransport, ProtocolEntry, Registry,
};
use serde_json::Value;
use tokio::runtime::{Handle as RtHandle, Runtime};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::address::{Address, Peer};
use crate::config::{Config, Mode};
use crate::conn::{read_loop, Conn, FINALIZED};
use crate::frame::{Header, Kind, Status, RESERVED_PROVIDER};
use crate::handler::{Handle, RawHandler, RpcEntry};
use crate::limits::{ConnLimits, ConnectionSlot, ConnectionSlots, RequestSlot};
use crate::progress::Progress;
use crate::remote::{RawRemoteFunction, RemoteFunction};
use crate::{Error, Result};

/// Options of one registered RPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RpcOptions {
    /// The provider id (0..=65534). The same name under several provider ids
    /// is several distinct RPCs.
    pub provider_id: u16,
    /// One-way RPC: the handler runs, nothing is sent back.
    pub disable_response: bool,
}

impl RpcOptions {
    /// Options for provider `provider_id`.
    pub fn provider(provider_id: u16) -> Self {
        Self {
            provider_id,
            ..Self::default()
        }
    }

    /// The same options, one-way.
    #[must_use]
    pub fn disable_response(mut self) -> Self {
        self.disable_response = true;
        self
    }
}

type Callback = Box<dyn FnOnce() + Send>;

/// The state shared by the engine, its tasks, handles and addresses.
pub(crate) struct Inner {
    pub(crate) transport: Arc<dyn DynTransport>,
    pub(crate) protocol: ProtocolEntry,
    pub(crate) config: Config,
    /// The listening address (server mode).
    pub(crate) self_addr: Option<WireAddr>,
    /// Where engine tasks (accept, readers) run.
    pub(crate) rt: RtHandle,
    /// Where handlers run.
    pub(crate) handler_rt: RtHandle,
    /// Whether handlers run on the engine's own runtime (no RPC threads), so
    /// the reader may give them their first poll itself.
    inline_handlers: bool,
    /// The polling-before-parking policy.
    pub(crate) progress: Arc<Progress>,
    spinner: Mutex<Option<AbortHandle>>,
    rpcs: RwLock<HashMap<(u64, u16), Arc<RpcEntry>>>,
    names: RwLock<HashMap<u64, String>>,
    peers: Mutex<HashMap<WireAddr, Arc<Peer>>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Places for accepted connections (`max_connections`).
    conn_slots: ConnectionSlots,
    next_conn: AtomicU64,
    remote_shutdown: AtomicBool,
    finalizing: AtomicBool,
    finalized: watch::Sender<bool>,
    listener: Mutex<Option<AbortHandle>>,
    listener_done: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    stop_listener: watch::Sender<bool>,
    /// Runtimes the engine owns (progress thread, RPC threads).
    owned_runtimes: Mutex<Vec<Runtime>>,
    pre_finalize: Mutex<Vec<Callback>>,
    on_finalize: Mutex<Vec<Callback>>,
    /// Exposed bulk regions and fast-path leases (`crate::bulk`).
    pub(crate) bulk: crate::bulk::BulkTable,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn is_finalizing(&self) -> bool {
        self.finalizing.load(Ordering::Acquire)
    }

    /// Replaces an alias by the canonical protocol name and checks that the
    /// address is for this engine's protocol.
    pub(crate) fn canonical(&self, addr: &WireAddr) -> Result<WireAddr> {
        if addr.protocol() == self.protocol.name {
            return Ok(addr.clone());
        }
        if self.protocol.aliases.iter().any(|a| a == addr.protocol()) {
            return Ok(addr.with_protocol(&self.protocol.name));
        }
        Err(Error::ProtocolMismatch {
            address: addr.to_string(),
            protocol: addr.protocol().to_owned(),
            engine: self.protocol.name.clone(),
        })
    }

    pub(crate) async fn connection_for(self: &Arc<Self>, peer: &Peer) -> Result<Arc<Conn>> {
        if self.is_finalizing() {
            return Err(Error::Finalized);
        }
        peer.connection(self).await
    }

    /// Opens a connection, introduces this engine, and starts its reader.
    pub(crate) async fn connect(self: &Arc<Self>, addr: &WireAddr) -> Result<Arc<Conn>> {
        if self.is_finalizing() {
            return Err(Error::Finalized);
        }
        let after = self.config.connect_timeout();
        let transport = self.transport.clone();
        let target = addr.clone();
        // The socket is created on the engine's runtime, so that its I/O is
        // driven there (the progress thread, when there is one).
        let dial = self
            .rt
            .spawn(async move { transport.connect_dyn(&target).await });
        let raw = match tokio::time::timeout(after, dial).await {
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    address: addr.to_string(),
                    after,
                })
            }
            Ok(Err(join)) => return Err(Error::Config(format!("connect task failed: {join}"))),
            Ok(Ok(r)) => r?,
        };
        let conn = self.start_conn(raw, Some(addr.clone()), false, None);
        let hello_addr = self
            .self_addr
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        conn.send(&[&Header::new(Kind::Hello).encode(), hello_addr.as_bytes()])
            .await?;
        Ok(conn)
    }

    /// Registers a new connection and spawns its reader.
    fn start_conn(
        self: &Arc<Self>,
        raw: Box<dyn DynConnection>,
        dialed: Option<WireAddr>,
        expect_hello: bool,
        slot: Option<ConnectionSlot>,
    ) -> Arc<Conn> {
        let peer = dialed.unwrap_or_else(|| raw.peer_addr().clone());
        let capabilities = raw.capabilities_dyn();
        let (tx, rx) = raw.split_dyn();
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let limits = ConnLimits::new(&self.config);
        let conn = Arc::new(Conn::new(id, peer, tx, self.progress.clone(), limits));
        let _ = conn.capabilities.set(capabilities);
        lock(&self.conns).insert(id, conn.clone());
        let task = self.rt.spawn(read_loop(
            self.clone(),
            conn.clone(),
            rx,
            expect_hello,
            slot,
        ));
        conn.set_reader(task.abort_handle());
        if self.is_finalizing() {
            conn.kill(FINALIZED);
        }
        conn
    }

    pub(crate) fn forget_conn(&self, id: u64) {
        lock(&self.conns).remove(&id);
        self.bulk.forget_conn(id);
    }

    /// Answers a request frame: runs the handler, or says why not. `slot`
    /// (the request's place among the connection's in-flight requests) is
    /// held by the handler's handle until the request is done.
    pub(crate) async fn dispatch(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        header: Header,
        payload: Bytes,
        slot: Option<RequestSlot>,
    ) {
        let entry = self
            .rpcs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(header.rpc, header.provider))
            .cloned();
        let refuse = |status: Status, message: String| async move {
            if header.no_response() {
                tracing::debug!(
                    rpc = header.rpc,
                    provider = header.provider,
                    "dropping one-way request: {message}"
                );
                return;
            }
            let _ = conn.send_error(&header, status, &message).await;
        };
        if self.is_finalizing() {
            return refuse(Status::Finalizing, "the engine is finalizing".into()).await;
        }
        let Some(entry) = entry else {
            let name = lock_read(&self.names).get(&header.rpc).cloned();
            let what =
                name.map_or_else(|| format!("id {:#018x}", header.rpc), |n| format!("'{n}'"));
            return refuse(
                Status::NoSuchRpc,
                format!("no such RPC {what} at provider {}", header.provider),
            )
            .await;
        };
        if entry.disable_response && !header.no_response() {
            return refuse(
                Status::OneWay,
                format!("RPC '{}' is registered with disable_response", entry.name),
            )
            .await;
        }
        let handle = Handle::new(self.clone(), conn.clone(), entry.clone(), header, slot);
        let mut fut = Box::pin(crate::handler::run(entry, handle, payload));
        if !self.inline_handlers {
            self.handler_rt.spawn(fut);
            return;
        }
        // Handlers run on this runtime: poll the handler once right here.
        // Most finish in that one poll (decode, compute, respond), which
        // saves a task spawn and a trip through the scheduler per request;
        // one that has to wait goes on as a task of its own, so the reader
        // is never held up by it.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(fut.as_mut(), cx))
        })
        .await;
        if first.is_pending() {
            self.handler_rt.spawn(fut);
        }
    }

    /// Answers a shutdown request.
    pub(crate) async fn remote_shutdown(self: &Arc<Self>, conn: &Arc<Conn>, header: Header) {
        if !self.remote_shutdown.load(Ordering::Acquire) {
            tracing::info!(peer = %conn.remote(), "refused a remote shutdown (not enabled)");
            let _ = conn
                .send_error(
                    &header,
                    Status::ShutdownRefused,
                    "remote shutdown is not enabled",
                )
                .await;
            return;
        }
        tracing::info!(peer = %conn.remote(), "remote shutdown requested");
        let ack = Header {
            kind: Kind::Response,
            ..header
        };
        let _ = conn.send(&[&ack.encode()]).await;
        let inner = self.clone();
        self.rt.spawn(async move { inner.finalize().await });
    }

    /// Finalizes: refuses new work, stops listening, ends every connection
    /// (calls in flight fail with [`Error::Finalized`]), stops owned threads.
    pub(crate) async fn finalize(self: &Arc<Self>) {
        if self.finalizing.swap(true, Ordering::AcqRel) {
            let mut rx = self.finalized.subscribe();
            let _ = rx.wait_for(|done| *done).await;
            return;
        }
        for cb in std::mem::take(&mut *lock(&self.pre_finalize)) {
            cb();
        }
        self.stop_listener.send_replace(true);
        let done = lock(&self.listener_done).take();
        if let Some(done) = done {
            // The accept loop drops the listener (removing a socket file)
            // before it answers.
            let _ = done.await;
        }
        self.finish_finalize();
    }

    /// The synchronous part of finalize (also run when the engine is dropped).
    fn finish_finalize(&self) {
        self.finalizing.store(true, Ordering::Release);
        if let Some(l) = lock(&self.listener).take() {
            l.abort();
        }
        if let Some(s) = lock(&self.spinner).take() {
            s.abort();
        }
        let conns: Vec<Arc<Conn>> = lock(&self.conns).drain().map(|(_, c)| c).collect();
        for c in conns {
            c.kill(FINALIZED);
        }
        lock(&self.peers).clear();
        self.rpcs.write().unwrap_or_else(|e| e.into_inner()).clear();
        for rt in lock(&self.owned_runtimes).drain(..) {
            rt.shutdown_background();
        }
        for cb in std::mem::take(&mut *lock(&self.on_finalize)) {
            cb();
        }
        self.finalized.send_replace(true);
    }
}

fn lock_read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Finalizes the engine when the last [`Engine`] clone is dropped.
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        if !*self.inner.finalized.borrow() {
            self.inner.finish_finalize();
        }
    }
}

/// A Courier engine: listens (in server mode), serves registered RPCs, and
/// calls other engines.
///
/// Cloning an `Engine` is cheap and gives another handle on the same engine;
/// when the last handle is dropped, the engine is finalized.
///
/// # Example
///
/// The seed's hello, server and client in one program:
///
/// ```
/// use courier::{Engine, Handle};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// let server = Engine::new("tcp").await?;
/// server.register("hello", |handle: Handle, (first, last): (String, String)| async move {
///     println!("Hello {first} {last}!");
///     handle.respond(&format!("Good bye {first}")).await
/// })?;
/// server.enable_remote_shutdown();
///
/// let client = Engine::builder("tcp").client().build().await?;
/// let hello = client.remote::<(&str, &str), String>("hello");
/// let address = client.lookup(&server.address().to_string()).await?;
/// assert_eq!(hello.on(&address).call(&("Matthieu", "Dorier")).await?, "Good bye Matthieu");
/// address.shutdown().await?;
/// server.wait_for_finalize().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Engine {
    owner: Arc<Owner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.owner.inner;
        f.debug_struct("Engine")
            .field("protocol", &i.protocol.name)
            .field("mode", &i.config.mode)
            .field("address", &i.self_addr.as_ref().map(ToString::to_string))
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`]: protocol, mode, threads and configuration.
#[derive(Debug)]
pub struct EngineBuilder {
    target: String,
    registry: Option<Registry>,
    json: Option<std::result::Result<Value, String>>,
    mode: Option<Mode>,
    progress_thread: Option<bool>,
    rpc_threads: Option<usize>,
    max_message_size: Option<usize>,
    connect_timeout: Option<std::time::Duration>,
    progress_spin: Option<std::time::Duration>,
    /// Set by the blocking facade, whose runtime already is the progress thread.
    pub(crate) progress_provided: bool,
}

impl EngineBuilder {
    /// See [`Engine::builder`].
    pub fn new(protocol_or_address: &str) -> Self {
        Self {
            target: protocol_or_address.to_owned(),
            registry: None,
            json: None,
            mode: None,
            progress_thread: None,
            rpc_threads: None,
            max_message_size: None,
            connect_timeout: None,
            progress_spin: None,
            progress_provided: false,
        }
    }

    /// Server or client mode (default: server).
    #[must_use]
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Client mode: the engine does not listen.
    #[must_use]
    pub fn client(self) -> Self {
        self.mode(Mode::Client)
    }

    /// Runs the engine's I/O (accepting, reading connections) on a dedicated
    /// thread instead of the caller's runtime.
    #[must_use]
    pub fn use_progress_thread(mut self, yes: bool) -> Self {
        self.progress_thread = Some(yes);
        self
    }

    /// Runs handlers on `n` dedicated threads; 0 (the default) runs them on
    /// the runtime that does the engine's I/O.
    #[must_use]
    pub fn num_rpc_threads(mut self, n: usize) -> Self {
        self.rpc_threads = Some(n);
        self
    }

    /// The largest message (header + payload) sent or accepted.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// How long connecting to a peer may take (default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, after: std::time::Duration) -> Self {
        self.connect_timeout = Some(after);
        self
    }

    /// How long the engine keeps polling after a message before it parks
    /// (see the `progress_spin_us` key of [`Config`]); zero parks at once.
    #[must_use]
    pub fn progress_spin(mut self, window: std::time::Duration) -> Self {
        self.progress_spin = Some(window);
        self
    }

    /// A Margo-style JSON configuration (see [`Config`]). Settings made
    /// with the other builder methods take precedence over it.
    #[must_use]
    pub fn config_json(mut self, json: &str) -> Self {
        self.json = Some(serde_json::from_str(json).map_err(|e| e.to_string()));
        self
    }

    /// The configuration as a JSON value (see [`EngineBuilder::config_json`]).
    #[must_use]
    pub fn config_value(mut self, value: Value) -> Self {
        self.json = Some(Ok(value));
        self
    }

    /// Resolve protocols with this registry instead of the default one
    /// (see [`crate::default_registry`]).
    #[must_use]
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The effective configuration this builder describes.
    pub(crate) fn effective_config(&self) -> Result<Config> {
        let mut config = match &self.json {
            None => Config::default(),
            Some(Err(e)) => return Err(Error::Config(e.clone())),
            Some(Ok(v)) => Config::from_value(v.clone())?,
        };
        if let Some(m) = self.mode {
            config.mode = m;
        }
        if let Some(p) = self.progress_thread {
            config.use_progress_thread = p;
        }
        if let Some(n) = self.rpc_threads {
            config.rpc_thread_count = n;
        }
        if let Some(n) = self.max_message_size {
            config.max_message_size = n;
        }
        if let Some(w) = self.progress_spin {
            config.progress_spin_us = u64::try_from(w.as_micros()).unwrap_or(u64::MAX);
        }
        if let Some(t) = self.connect_timeout {
            config.connect_timeout_ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        if self.target.contains("://") {
            config.listen = Some(self.target.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// Builds the engine on the current tokio runtime: resolves the protocol,
    /// starts listening (server mode), starts the threads asked for.
    ///
    /// # Errors
    /// Unknown protocol (the message lists the known ones), malformed listen
    /// address, address in use, invalid configuration.
    pub async fn build(self) -> Result<Engine> {
        let mut config = self.effective_config()?;
        let registry = match self.registry.clone() {
            Some(r) => r,
            None => crate::default_registry()?,
        };
        let protocol_name = match &config.listen {
            Some(listen) => listen.parse::<WireAddr>()?.protocol().to_owned(),
            None => self.target.clone(),
        };
        let (entry, transport) =
            registry.create(&protocol_name, &config.transport, config.max_message_size)?;

        let mut owned = Vec::new();
        let rt = if config.use_progress_thread && !self.progress_provided {
            let progress = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("courier-progress")
                .enable_all()
                .build()
                .map_err(|e| Error::Config(format!("cannot start the progress thread: {e}")))?;
            let h = progress.handle().clone();
            owned.push(progress);
            h
        } else {
            RtHandle::current()
        };
        let handler_rt = if config.rpc_thread_count > 0 {
            let pool = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.rpc_thread_count)
                .thread_name("courier-rpc")
                .enable_all()
                .build()
                .map_err(|e| Error::Config(format!("cannot start the RPC threads: {e}")))?;
            let h = pool.handle().clone();
            owned.push(pool);
            h
        } else {
            rt.clone()
        };

        let listener = if config.mode == Mode::Server {
            let listen = match &config.listen {
                Some(l) => l.parse::<WireAddr>()?.with_protocol(&entry.name),
                None => WireAddr::new(entry.name.clone(), "")?,
            };
            let t = transport.clone();
            let listener = rt
                .spawn(async move { t.listen_dyn(&listen).await })
                .await
                .map_err(|e| Error::Config(format!("listen task failed: {e}")))??;
            Some(listener)
        } else {
            None
        };
        let self_addr = listener.as_ref().map(|l| l.local_addr().clone());
        if let Some(a) = &self_addr {
            config.listen = Some(a.to_string());
        }

        let progress = Arc::new(Progress::new(config.progress_spin()));
        let conn_slots = ConnectionSlots::new(config.max_connections);
        let bulk = crate::bulk::BulkTable::new(config.bulk);
        let (finalized, _) = watch::channel(false);
        let (stop_listener, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            transport,
            protocol: entry,
            remote_shutdown: AtomicBool::new(config.enable_remote_shutdown),
            inline_handlers: config.rpc_thread_count == 0,
            config,
            self_addr,
            rt: rt.clone(),
            handler_rt,
            progress: progress.clone(),
            spinner: Mutex::new(None),
            rpcs: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            conn_slots,
            next_conn: AtomicU64::new(1),
            finalizing: AtomicBool::new(false),
            finalized,
            listener: Mutex::new(None),
            listener_done: Mutex::new(None),
            stop_listener,
            owned_runtimes: Mutex::new(owned),
            pre_finalize: Mutex::new(Vec::new()),
            on_finalize: Mutex::new(Vec::new()),
            bulk,
        });
        if progress.enabled() {
            let task = rt.spawn(progress.run());
            *lock(&inner.spinner) = Some(task.abort_handle());
        }
        if let Some(listener) = listener {
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let task = rt.spawn(accept_loop(inner.clone(), listener, done_tx));
            *lock(&inner.listener) = Some(task.abort_handle());
            *lock(&inner.listener_done) = Some(done_rx);
        }
        tracing::debug!(protocol = %inner.protocol.name, address = ?inner.self_addr.as_ref().map(ToString::to_string), "engine started");
        Ok(Engine {
            owner: Arc::new(Owner { inner }),
        })
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    mut listener: Box<dyn courier_transport::DynListener>,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let mut stop = inner.stop_listener.subscribe();
    // Hold only a weak reference while idle, so a dropped engine is not kept
    // alive by its own accept loop.
    let weak = Arc::downgrade(&inner);
    drop(inner);
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept_dyn() => {
                let Some(inner) = weak.upgrade() else { break };
                match accepted {
                    Ok(raw) => match inner.conn_slots.admit() {
                        Some(slot) => {
                            tracing::debug!(peer = %raw.peer_addr(), "accepted a connection");
                            inner.start_conn(raw, None, true, Some(slot));
                        }
                        None => {
                            tracing::warn!(
                                peer = %raw.peer_addr(),
                                "closing an accepted connection: max_connections ({}) reached",
                                inner.conn_slots.max()
                            );
                            drop(raw);
                        }
                    },
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        // Typically out of file descriptors: let some close.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = done.send(());
}

impl Engine {
    /// A server-mode engine for `protocol` (`"tcp"`, `"unix"`, an alias such
    /// as `"ofi+tcp"`, or a full listen address such as
    /// `"tcp://0.0.0.0:7000"`), with default settings, on the current tokio
    /// runtime.
    ///
    /// # Errors
    /// See [`EngineBuilder::build`].
    pub async fn new(protocol: &str) -> Result<Self> {
        EngineBuilder::new(protocol).build().await
    }

    /// A builder for an engine speaking `protocol_or_address`.
    pub fn builder(protocol_or_address: &str) -> EngineBuilder {
        EngineBuilder::new(protocol_or_address)
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.owner.inner
    }

    /// The engine's address, as a client passes it to `lookup`. In client
    /// mode, an engine has no listening address: this is `<protocol>://`.
    pub fn address(&self) -> Address {
        let inner = self.inner().clone();
        let addr = inner.self_addr.clone().unwrap_or_else(|| {
            WireAddr::new(inner.protocol.name.clone(), "").unwrap_or_else(|_| unreachable!())
        });
        Address {
            peer: Arc::new(Peer::new(addr, None)),
            inner,
        }
    }

    /// The canonical protocol name (`"tcp"` for an engine built as `"ofi+tcp"`).
    pub fn protocol(&self) -> &str {
        &self.inner().protocol.name
    }

    /// Server or client.
    pub fn mode(&self) -> Mode {
        self.inner().config.mode
    }

    /// The effective configuration, as JSON: every setting with its value,
    /// plus `protocol`, `plugin` and the listening address.
    pub fn config(&self) -> Value {
        let inner = self.inner();
        let mut v = serde_json::to_value(&inner.config).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert(
                "protocol".into(),
                Value::String(inner.protocol.name.clone()),
            );
            m.insert(
                "plugin".into(),
                Value::String(inner.protocol.plugin.clone()),
            );
            m.insert(
                "enable_remote_shutdown".into(),
                Value::Bool(inner.remote_shutdown.load(Ordering::Acquire)),
            );
            // As set now (`set_bulk_options` may have changed them).
            m.insert(
                "bulk".into(),
                serde_json::to_value(inner.bulk.options()).unwrap_or(Value::Null),
            );
        }
        v
    }

    /// Allows peers to shut this engine down (`Address::shutdown`).
    pub fn enable_remote_shutdown(&self) {
        self.inner().remote_shutdown.store(true, Ordering::Release);
    }

    /// Registers a typed handler for `name` at provider 0.
    ///
    /// The handler gets the request's [`Handle`] and the decoded arguments,
    /// and answers with [`Handle::respond`]. It may return `()` or a
    /// `Result<(), E>`; an error (or a panic, or finishing without
    /// responding) is sent to the caller as an error with its message.
    ///
    /// # Errors
    /// [`Error::AlreadyRegistered`], [`Error::RpcIdCollision`].
    pub fn register<A, F, Fut>(&self, name: &str, handler: F) -> Result<()>
    where
        A: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Handle, A) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: crate::HandlerOutput,
    {
        self.register_with(name, RpcOptions::default(), handler)
    }

    /// Registers a typed handler with options (provider id, one-way).
    ///
    /// # Errors
    /// See [`Engine::register`].
    pub fn register_with<A, F, Fut>(
        &self,
        name: &str,
        options: RpcOptions,
        handler: F,
    ) -> Result<()>
    where
        A: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Handle, A) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: crate::HandlerOutput,
    {
        self.register_raw(name, options, crate::handler::typed(handler))
    }

    /// Registers a handler on raw payload bytes (for bindings that bring
    /// their own serialization).
    ///
    /// # Errors
    /// See [`Engine::register`].
    pub fn register_raw<F, Fut>(&self, name: &str, options: RpcOptions, handler: F) -> Result<()>
    where
        F: Fn(Handle, Bytes) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: crate::HandlerOutput,
    {
        let handler: RawHandler = crate::handler::boxed(handler);
        self.insert_rpc(name, options, handler)
    }

    fn insert_rpc(&self, name: &str, options: RpcOptions, handler: RawHandler) -> Result<()> {
        let inner = self.inner();
        if options.provider_id == RESERVED_PROVIDER {
            return Err(Error::InvalidProviderId(u32::from(options.provider_id)));
        }
        let id = crate::frame::rpc_id(name);
        {
            let mut names = inner.names.write().unwrap_or_else(|e| e.into_inner());
            match names.get(&id) {
                Some(existing) if existing != name => {
                    return Err(Error::RpcIdCollision {
                        name: name.to_owned(),
                        existing: existing.clone(),
                        id,
                    })
                }
                Some(_) => {}
                None => {
                    names.insert(id, name.to_owned());
                }
            }
        }
        let mut rpcs = inner.rpcs.write().unwrap_or_else(|e| e.into_inner());
        let key = (id, options.provider_id);
        if rpcs.contains_key(&key) {
            return Err(Error::AlreadyRegistered {
                rpc: name.to_owned(),
                provider: options.provider_id,
            });
        }
        rpcs.insert(
            key,
            Arc::new(RpcEntry {
                name: name.into(),
                provider: options.provider_id,
                disable_response: options.disable_response,
                handler,
            }),
        );
        Ok(())
    }

    /// Whether `name` is registered at `provider_id`.
    pub fn registered(&self, name: &str, provider_id: u16) -> bool {
        lock_read(&self.inner().rpcs).contains_key(&(crate::frame::rpc_id(name), provider_id))
    }

    /// Removes the handler of `name` at `provider_id`; later requests get
    /// "no such RPC". Requests already running finish.
    ///
    /// # Errors
    /// [`Error::NotRegistered`].
    pub fn deregister(&self, name: &str, provider_id: u16) -> Result<()> {
        let removed = self
            .inner()
            .rpcs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(crate::frame::rpc_id(name), provider_id));
        match removed {
            Some(_) => Ok(()),
            None => Err(Error::NotRegistered {
                rpc: name.to_owned(),
                provider: provider_id,
            }),
        }
    }

    /// A typed remote function for calling `name` on other engines (PyMargo's
    /// client-side `engine.register("hello")`). `A` is the arguments' type,
    /// `R` the response's; they must match the server's in postcard encoding.
    pub fn remote<A, R>(&self, name: &str) -> RemoteFunction<A, R>
    where
        A: serde::Serialize,
        R: serde::de::DeserializeOwned,
    {
        RemoteFunction::new(self.remote_raw(name))
    }

    /// A remote function on raw payload bytes.
    pub fn remote_raw(&self, name: &str) -> RawRemoteFunction {
        RawRemoteFunction::new(self.inner().clone(), name)
    }

    /// Resolves an address string (`tcp://127.0.0.1:41235`, aliases
    /// accepted) and connects to it.
    ///
    /// # Errors
    /// Malformed address, another protocol than the engine's, connect refused
    /// or timed out, engine finalized.
    pub async fn lookup(&self, address: &str) -> Result<Address> {
        let inner = self.inner();
        if inner.is_finalizing() {
            return Err(Error::Finalized);
        }
        let wire = inner.canonical(&address.parse::<WireAddr>()?)?;
        let peer = lock(&inner.peers)
            .entry(wire.clone())
            .or_insert_with(|| Arc::new(Peer::new(wire, None)))
            .clone();
        peer.connection(inner).await?;
        Ok(Address {
            inner: inner.clone(),
            peer,
        })
    }

    /// Registers a callback run when finalize starts, before anything stops.
    pub fn on_prefinalize(&self, callback: impl FnOnce() + Send + 'static) {
        lock(&self.inner().pre_finalize).push(Box::new(callback));
    }

    /// Registers a callback run at the end of finalize.
    pub fn on_finalize(&self, callback: impl FnOnce() + Send + 'static) {
        lock(&self.inner().on_finalize).push(Box::new(callback));
    }

    /// Finalizes the engine: it stops listening, closes its connections
    /// (calls in flight end with [`Error::Finalized`]) and its threads.
    /// Finalizing twice is harmless.
    pub async fn finalize(&self) {
        self.inner().finalize().await;
    }

    /// Whether the engine is finalizing or finalized.
    pub fn is_finalized(&self) -> bool {
        self.inner().is_finalizing()
    }

    /// Waits until the engine is finalized, by [`Engine::finalize`] or by a
    /// remote shutdown.
    pub async fn wait_for_finalize(&self) {
        let mut rx = self.inner().finalized.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}
