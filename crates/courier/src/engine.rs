//! The public [`Engine`] and its builder: an engine is built here from its
//! parts — the state every part shares (`state.rs`), the RPC table and
//! dispatch (`rpcs.rs`, `dispatch.rs`), the way to connections
//! (`links.rs`) — and finalized when its last handle goes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use courier_transport::Registry;
use serde_json::Value;
use tokio::runtime::Handle as RtHandle;

use crate::address::Address;
use crate::admission::{ProviderLoad, Providers};
use crate::config::{Config, Mode, PoolOptions, ProviderOptions};
use crate::dispatch::{Dispatcher, Served};
use crate::error::{Error, Result};
use crate::handler::{self, Handle, HandlerOutput, RawHandler};
use crate::keepalive;
use crate::links::{self, Links};
use crate::paths::{AddressSet, Paths};
use crate::peer::{Dial, Peer};
use crate::registry;
use crate::remote::{RawRemoteFunction, RemoteFunction};
use crate::rpcs::RpcTable;
use crate::runtime;
use crate::state::{EngineState, Runtimes};
use crate::stats::schema::Stats;

/// Options of one registered RPC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RpcOptions {
    /// The provider id (0..=65534). The same name under several provider ids
    /// is several distinct RPCs.
    pub provider_id: u16,
    /// One-way RPC: the handler runs, nothing is sent back.
    pub disable_response: bool,
    /// Running the RPC twice does no harm (a read, or a write of a value
    /// that does not depend on the current one): a request that failed
    /// with an error whose [`Reach`](crate::Reach) is not
    /// [`NotReached`](crate::Reach::NotReached) may be sent again. The
    /// engine never retries by itself; [`Handle::is_idempotent`] tells the
    /// handler.
    pub idempotent: bool,
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

    /// The same options, idempotent (see [`RpcOptions::idempotent`]).
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
}

/// Finalizes the engine when the last [`Engine`] clone is dropped.
struct Owner {
    dispatch: Arc<Dispatcher>,
    /// Held here only: the state reaches it through a weak reference, so
    /// that no cycle of strong references outlives the engine.
    _links: Arc<Links>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let state = &self.dispatch.state;
        if !state.lifecycle.is_finalized() {
            state.finish_finalize();
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
        let i = self.state();
        f.debug_struct("Engine")
            .field("protocol", &i.paths.name())
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
    max_payload_bytes: Option<u64>,
    connect_timeout: Option<Duration>,
    call_timeout: Option<Duration>,
    progress_spin: Option<Duration>,
    stats: Option<bool>,
    stats_timing: Option<bool>,
    serve_stats: Option<bool>,
    providers: Vec<(u16, ProviderOptions)>,
    pools: Vec<(String, usize)>,
    /// Set by the blocking facade, whose runtime already is the progress thread.
    pub(crate) progress_provided: bool,
    /// Set by the blocking facade, which runs its handlers on threads of
    /// its own (outside the runtime) rather than on RPC threads' runtime.
    pub(crate) rpc_provided: bool,
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
            max_payload_bytes: None,
            connect_timeout: None,
            call_timeout: None,
            progress_spin: None,
            stats: None,
            stats_timing: None,
            serve_stats: None,
            providers: Vec::new(),
            pools: Vec::new(),
            progress_provided: false,
            rpc_provided: false,
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

    /// The largest message (header + payload) sent or accepted. Arguments
    /// and responses over it travel by the bulk path on their own, up to
    /// [`EngineBuilder::max_payload_bytes`].
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// The largest argument or response payload this engine sends, or
    /// accepts by the bulk path (`max_payload_bytes`, default 8 GiB): one
    /// over the largest message travels by the bulk path, one over this
    /// is refused with [`Error::TooLarge`] (`docs/bulk.md`, "Payloads of
    /// any size").
    #[must_use]
    pub fn max_payload_bytes(mut self, bytes: u64) -> Self {
        self.max_payload_bytes = Some(bytes);
        self
    }

    /// How long connecting to a peer may take (`timeouts.connect_ms`,
    /// default 5 s).
    #[must_use]
    pub fn connect_timeout(mut self, after: Duration) -> Self {
        self.connect_timeout = Some(after);
        self
    }

    /// The timeout of every call, ping and shutdown request that sets none
    /// (`timeouts.call_ms`; default: none).
    #[must_use]
    pub fn call_timeout(mut self, after: Duration) -> Self {
        self.call_timeout = Some(after);
        self
    }

    /// How long the engine keeps polling after a message before it parks
    /// (see the `progress_spin_us` key of [`Config`]); zero parks at once.
    #[must_use]
    pub fn progress_spin(mut self, window: Duration) -> Self {
        self.progress_spin = Some(window);
        self
    }

    /// Counts every request and call per RPC and provider, and messages
    /// per connection (`stats.counters` in the JSON configuration; on by
    /// default, see [`crate::StatsOptions`]); `false` turns counting off.
    /// See [`Engine::stats`].
    #[must_use]
    pub fn stats(mut self, on: bool) -> Self {
        self.stats = Some(on);
        self
    }

    /// Times every request's phases and every call's round trip into the
    /// statistics' histograms (`stats.timing` in the JSON configuration;
    /// off by default; it turns counting on). See [`Engine::stats`].
    #[must_use]
    pub fn stats_timing(mut self, on: bool) -> Self {
        self.stats_timing = Some(on);
        self
    }

    /// Answers the built-in statistics RPC, so that peers can read this
    /// engine's statistics ([`Address::stats`], `courier stats ADDR`;
    /// `stats.serve` in the JSON configuration; off by default).
    #[must_use]
    pub fn serve_stats(mut self, on: bool) -> Self {
        self.serve_stats = Some(on);
        self
    }

    /// Limits and pool of provider `provider_id` (the `providers` key of
    /// the JSON configuration; these options replace that provider's
    /// there). See [`ProviderOptions`].
    #[must_use]
    pub fn provider(mut self, provider_id: u16, options: ProviderOptions) -> Self {
        self.providers.push((provider_id, options));
        self
    }

    /// A handler pool of `threads` threads named `name`, for providers to
    /// run their handlers on (the `pools` key of the JSON configuration;
    /// this replaces a pool of that name there). See [`PoolOptions`].
    #[must_use]
    pub fn pool(mut self, name: &str, threads: usize) -> Self {
        self.pools.push((name.to_owned(), threads));
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
        if let Some(n) = self.max_payload_bytes {
            config.max_payload_bytes = n;
        }
        if let Some(w) = self.progress_spin {
            config.progress_spin_us = u64::try_from(w.as_micros()).unwrap_or(u64::MAX);
        }
        if let Some(on) = self.stats {
            config.stats.counters = on;
        }
        if let Some(on) = self.stats_timing {
            config.stats.timing = on;
        }
        if let Some(on) = self.serve_stats {
            config.stats.serve = on;
        }
        let millis = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
        if let Some(t) = self.connect_timeout {
            config.timeouts.connect_ms = millis(t);
        }
        if let Some(t) = self.call_timeout {
            config.timeouts.call_ms = Some(millis(t));
        }
        for (id, options) in &self.providers {
            config.providers.insert(*id, options.clone());
        }
        for (name, threads) in &self.pools {
            config
                .pools
                .insert(name.clone(), PoolOptions { threads: *threads });
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
            None => registry::default_registry()?,
        };
        let plan = config.listen.clone().unwrap_or_else(|| self.target.clone());
        let paths = Paths::build(&plan, &config, registry)?;

        // Shut down (without waiting) if the build fails part way.
        let mut owned = runtime::Started::default();
        let io = if config.use_progress_thread && !self.progress_provided {
            owned.push(runtime::progress_thread()?)
        } else {
            RtHandle::current()
        };
        let handlers = if config.rpc_thread_count > 0 && !self.rpc_provided {
            owned.push(runtime::rpc_threads(config.rpc_thread_count)?)
        } else {
            io.clone()
        };
        let mut pools = BTreeMap::new();
        for (name, pool) in &config.pools {
            let rt = runtime::pool(name, pool.threads)?;
            pools.insert(name.clone(), owned.push(rt));
        }
        let providers = Providers::new(&config.providers, &pools);

        // One listener per protocol; the set lists their addresses in order.
        let mut listeners = Vec::new();
        if config.mode == Mode::Server {
            for route in paths.routes() {
                let listen = route.listen.clone();
                let t = route.transport.clone();
                let listener = io
                    .spawn(async move { t.listen_dyn(&listen).await })
                    .await
                    .map_err(|e| Error::Config(format!("listen task failed: {e}")))??;
                listeners.push(listener);
            }
        }
        let self_addr = if listeners.is_empty() {
            None
        } else {
            let parts = listeners.iter().map(|l| l.local_addr().clone()).collect();
            Some(AddressSet::new(parts)?)
        };
        if let Some(a) = &self_addr {
            config.listen = Some(a.to_string());
        }

        let state = Arc::new(EngineState::new(
            paths,
            config,
            self_addr,
            Runtimes {
                io: io.clone(),
                handlers,
                owned: owned.keep(),
            },
        ));
        let rpcs = Arc::new(RpcTable::new());
        // Handlers may hold engine handles: finalize drops them.
        let table = rpcs.clone();
        state.on_teardown(Box::new(move || table.clear()));
        let dispatch = Arc::new(Dispatcher {
            state: state.clone(),
            rpcs,
            providers: Arc::new(providers),
        });
        let links = Arc::new(Links::new(dispatch.clone()));
        state.set_dialer(Arc::downgrade(&links) as Weak<dyn Dial>);
        if state.progress.enabled() {
            let task = io.spawn(state.progress.clone().run());
            state.set_spinner(task.abort_handle());
        }
        keepalive::start(&state);
        for listener in listeners {
            links::listen(&links, listener);
        }
        tracing::debug!(protocol = %state.paths.name(), address = ?state.self_addr.as_ref().map(ToString::to_string), "engine started");
        Ok(Engine {
            owner: Arc::new(Owner {
                dispatch,
                _links: links,
            }),
        })
    }
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

    /// The engine's state, which handles and addresses share.
    pub(crate) fn state(&self) -> &Arc<EngineState> {
        &self.owner.dispatch.state
    }

    /// The engine's address, as a client passes it to `lookup`: of an
    /// engine listening on several protocols, the address set
    /// (`tcp://127.0.0.1:41235,shm://courier-…,mem://anon-1-…`). In client
    /// mode, an engine has no listening address: this is `<protocol>://`
    /// (its first protocol).
    pub fn address(&self) -> Address {
        let state = self.state().clone();
        let addr = state
            .self_addr
            .clone()
            .unwrap_or_else(|| AddressSet::single(state.paths.primary().listen.with_rest("")));
        Address::new(state, Arc::new(Peer::new(addr, None)))
    }

    /// The canonical protocol name (`"tcp"` for an engine built as
    /// `"ofi+tcp"`); for an engine of several protocols, their names as
    /// listed (`"tcp,shm"`; the in-process path it adds is not named).
    pub fn protocol(&self) -> &str {
        self.state().paths.name()
    }

    /// Server or client.
    pub fn mode(&self) -> Mode {
        self.state().config.mode
    }

    /// The effective configuration, as JSON: every setting with its value,
    /// plus `protocol`, `plugin` and the listening address.
    pub fn config(&self) -> Value {
        let state = self.state();
        let mut v = serde_json::to_value(&state.config).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert(
                "protocol".into(),
                Value::String(state.paths.name().to_owned()),
            );
            m.insert("plugin".into(), Value::String(state.paths.plugins()));
            m.insert(
                "enable_remote_shutdown".into(),
                Value::Bool(state.lifecycle.remote_shutdown_enabled()),
            );
            // As set now (`set_bulk_options` may have changed them).
            m.insert(
                "bulk".into(),
                serde_json::to_value(state.bulk.options()).unwrap_or(Value::Null),
            );
        }
        v
    }

    /// What provider `provider_id` is doing: handlers running, requests
    /// queued, and how many were refused (`Busy`) or, one-way, dropped
    /// since the engine started. `None` for a provider without a
    /// `max_running` limit (nothing is counted for it).
    pub fn provider_load(&self, provider_id: u16) -> Option<ProviderLoad> {
        self.owner.dispatch.providers.load(provider_id)
    }

    /// A snapshot of the engine's statistics: per RPC and provider (served
    /// and called), per peer connection, per provider's limits, bulk
    /// transfers, and the progress loop. Serializes to JSON
    /// ([`Stats::to_json`]); see [`crate::stats`] for what each figure
    /// means. Latencies are there only with timing on
    /// ([`EngineBuilder::stats_timing`]).
    pub fn stats(&self) -> Stats {
        crate::stats::snapshot::collect(self.state(), &self.owner.dispatch.providers)
    }

    /// Allows peers to shut this engine down (`Address::shutdown`).
    pub fn enable_remote_shutdown(&self) {
        self.state().lifecycle.enable_remote_shutdown();
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
        Fut::Output: HandlerOutput,
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
        Fut::Output: HandlerOutput,
    {
        self.register_raw(name, options, handler::typed(handler))
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
        Fut::Output: HandlerOutput,
    {
        let run: RawHandler = handler::boxed(handler);
        let stats = self
            .state()
            .stats
            .rpc(name, crate::frame::rpc_id(name), options.provider_id);
        self.owner.dispatch.rpcs.insert(
            name,
            options.provider_id,
            options.disable_response,
            options.idempotent,
            Served { run, stats },
        )
    }

    /// Whether `name` is registered at `provider_id`.
    pub fn registered(&self, name: &str, provider_id: u16) -> bool {
        self.owner.dispatch.rpcs.contains(name, provider_id)
    }

    /// Removes the handler of `name` at `provider_id`; later requests get
    /// "no such RPC". Requests already running finish.
    ///
    /// # Errors
    /// [`Error::NotRegistered`].
    pub fn deregister(&self, name: &str, provider_id: u16) -> Result<()> {
        self.owner.dispatch.rpcs.remove(name, provider_id)
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
        RawRemoteFunction::new(self.state().clone(), name)
    }

    /// Resolves an address string (`tcp://127.0.0.1:41235`, aliases
    /// accepted, or an address set, `tcp://…,shm://…`) and connects to it.
    /// Of a set, the first path that connects is taken, in the order
    /// `paths.order` says (default: the same process, then the same host,
    /// then the network; `docs/transports.md`, "Address sets").
    ///
    /// # Errors
    /// Malformed address or set ([`Error::AddressSet`]), no protocol of the
    /// engine's ([`Error::ProtocolMismatch`]), connect refused or timed out
    /// (of a set whose every path failed: [`Error::NoPath`]), engine
    /// finalized.
    pub async fn lookup(&self, address: &str) -> Result<Address> {
        let state = self.state();
        if state.is_finalizing() {
            return Err(Error::Finalized);
        }
        let wire = state.canonical(&address.parse::<AddressSet>()?)?;
        let peer = state.peer(wire);
        state.connection_for(&peer).await?;
        Ok(Address::new(state.clone(), peer))
    }

    /// Registers work that finalize awaits first, while the engine still
    /// works: it can still make calls (a group member sends its goodbyes
    /// this way, so that a remote shutdown leaves the group). Finalize
    /// waits for each, in the order registered, before the
    /// [`Engine::on_prefinalize`] callbacks and before anything stops:
    /// bound the work (a timeout) so that finalize cannot hang on a dead
    /// peer. It is not run when an engine is dropped without
    /// [`Engine::finalize`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// let engine = courier::Engine::new("mem").await?;
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// engine.on_prefinalize_async(move || async move {
    ///     // Still running: a call could be made here.
    ///     let _ = tx.send("said goodbye");
    /// });
    /// engine.finalize().await;
    /// assert_eq!(rx.await.ok(), Some("said goodbye"));
    /// # Ok(()) }
    /// ```
    pub fn on_prefinalize_async<F, Fut>(&self, work: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.state()
            .lifecycle
            .add_pre_finalize_async(Box::new(move || Box::pin(work())));
    }

    /// Registers a callback run when finalize starts, before anything stops.
    pub fn on_prefinalize(&self, callback: impl FnOnce() + Send + 'static) {
        self.state().lifecycle.add_pre_finalize(Box::new(callback));
    }

    /// Registers a callback run at the end of finalize.
    pub fn on_finalize(&self, callback: impl FnOnce() + Send + 'static) {
        self.state().lifecycle.add_on_finalize(Box::new(callback));
    }

    /// Finalizes the engine: it stops listening, closes its connections
    /// (calls in flight end with [`Error::Finalized`]) and its threads.
    /// Finalizing twice is harmless.
    pub async fn finalize(&self) {
        self.state().finalize().await;
    }

    /// Whether the engine is finalizing or finalized.
    pub fn is_finalized(&self) -> bool {
        self.state().is_finalizing()
    }

    /// Waits until the engine is finalized, by [`Engine::finalize`] or by a
    /// remote shutdown.
    pub async fn wait_for_finalize(&self) {
        self.state().lifecycle.wait_finalized().await;
    }
}
