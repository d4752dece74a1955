//! A blocking facade over the engine, for programs without async (in the
//! manner of `reqwest::blocking`), and the closest to PyMargo's API.
//!
//! A blocking [`Engine`] owns its tokio runtime:
//!
//! * with `use_progress_thread(true)`, a background thread
//!   (`courier-progress`) drives the engine's I/O all the time;
//! * without it (the default, as in Margo), the engine makes progress only
//!   while some thread is inside one of its blocking calls — `call`,
//!   `wait_for_finalize`, `Request::wait`, ... — which is also the fastest
//!   way on one core: the caller's own thread does the I/O.
//!
//! Handlers here are plain closures, which may block. With
//! `num_rpc_threads(0)` they run one at a time on the engine's serving
//! thread (`courier-serve`, started by the first registration), outside the
//! runtime: that thread drives the engine while it waits for requests, so a
//! server serves whatever its own threads are doing (sleeping, busy,
//! blocked outside Courier), and a handler that blocks holds no thread a
//! caller's timeout needs. With `n > 0` they run on `n` dedicated threads
//! (and, without a progress thread, the serving thread still drives the
//! engine). A handler may make blocking calls, to other engines or to its
//! own; they inherit its request's deadline and cancellation.
//!
//! Streams ([`crate::stream`]) block too: [`Callable::stream`] opens a
//! [`StreamCall`] whose `send` waits while the handler has no credit and
//! whose `recv` waits for the next item; a blocking handler sends and
//! reads items with [`Handle::send_item`] and [`Handle::recv_item`],
//! which fail with [`Error::Cancelled`] as soon as the request is
//! cancelled (its caller gone, its deadline passed), waiting or not.
//!
//! Blocking calls must not be made from inside an async runtime; they
//! return [`Error::BlockingInAsync`] there instead of deadlocking. (So a
//! provider with a handler pool of its own, whose blocking handlers run
//! inside that pool's runtime, cannot make blocking calls, nor use the
//! blocking stream methods: register its streaming handlers on the async
//! engine, [`Engine::as_async`].)

use std::fmt;
use std::future::{Future, IntoFuture};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::address::Address as AsyncAddress;
use crate::bulk::{Bulk, BulkMemory, BulkMode, BulkOp};
use crate::call::Body;
use crate::config::{Mode, ProviderOptions};
use crate::engine::{Engine as AsyncEngine, EngineBuilder as AsyncBuilder, RpcOptions};
use crate::error::{Error, Result};
use crate::handler::{decode_exact, Handle as AsyncHandle, HandlerOutput};
use crate::remote::{decode_response, Callable as AsyncCallable, RemoteFunction as AsyncRemote};
use crate::runtime;
use crate::stream::StreamCall as AsyncStreamCall;

mod serve;

pub use serve::SERVE_THREAD_NAME;

/// The runtime a blocking engine and everything made from it share.
struct Rt {
    rt: Option<Runtime>,
    /// A current-thread runtime only progresses inside `block_on`.
    needs_driving: bool,
    /// The serving thread's queue, once a handler is registered.
    serving: std::sync::Mutex<Option<Arc<serve::Queue>>>,
}

impl Rt {
    fn runtime(&self) -> &Runtime {
        // `rt` is only taken in `drop`.
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("runtime used after drop"))
    }

    /// [`Rt::block_on`] of a send (a stream's item, its end, its opening
    /// request) and, on a runtime that only moves while driven, one turn
    /// of it after: what the send queued (a QUIC stream's packets, which
    /// a task sends) leaves before this returns, even if the program then
    /// waits elsewhere.
    fn block_on_send<F: Future>(&self, what: &'static str, f: F) -> Result<F::Output> {
        let turn = self.needs_driving;
        self.block_on(what, async move {
            let out = f.await;
            if turn {
                tokio::task::yield_now().await;
            }
            out
        })
    }

    fn block_on<F: Future>(&self, what: &'static str, f: F) -> Result<F::Output> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInAsync(what));
        }
        spare_serving_thread();
        Ok(self.runtime().block_on(f))
    }
}

thread_local! {
    /// The engine this thread is a serving thread of, if it is one.
    static SERVING_THREAD_OF: std::cell::RefCell<Option<(Arc<Rt>, Arc<serve::Queue>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts a serving thread for `queue`: it waits for jobs inside
/// `block_on` (driving the engine meanwhile) and runs each outside it.
fn start_serving_thread(rt: &Arc<Rt>, queue: &Arc<serve::Queue>) -> std::io::Result<()> {
    if !queue.thread_starts() {
        return Ok(());
    }
    let (rt, jobs) = (rt.clone(), queue.clone());
    let counted = queue.clone();
    let spawned = std::thread::Builder::new()
        .name(queue.name.into())
        .spawn(move || {
            SERVING_THREAD_OF.with(|t| *t.borrow_mut() = Some((rt.clone(), jobs.clone())));
            loop {
                let Some(job) = rt.runtime().block_on(jobs.next()) else {
                    jobs.thread_ends();
                    break;
                };
                job();
                if jobs.thread_retires() {
                    break;
                }
            }
            SERVING_THREAD_OF.with(|t| t.borrow_mut().take());
        });
    if spawned.is_err() {
        counted.thread_ends();
    }
    spawned.map(drop)
}

/// Before a serving thread blocks (a handler making a blocking call): if
/// no other serving thread of its engine is free, starts one, so requests
/// keep being served — the handler's own call to this engine, or a peer's
/// call back — while this one waits.
fn spare_serving_thread() {
    let ours = SERVING_THREAD_OF.with(|t| t.borrow().clone());
    if let Some((rt, queue)) = ours {
        if queue.none_idle() {
            if let Err(e) = start_serving_thread(&rt, &queue) {
                tracing::warn!("cannot start a spare serving thread: {e}");
            }
        }
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Builds a blocking [`Engine`]; the same settings as
/// [`AsyncBuilder`].
#[derive(Debug)]
pub struct EngineBuilder {
    inner: AsyncBuilder,
}

impl EngineBuilder {
    /// See [`AsyncBuilder::mode`].
    #[must_use]
    pub fn mode(self, mode: Mode) -> Self {
        Self {
            inner: self.inner.mode(mode),
        }
    }

    /// Client mode.
    #[must_use]
    pub fn client(self) -> Self {
        self.mode(Mode::Client)
    }

    /// See [`AsyncBuilder::use_progress_thread`].
    #[must_use]
    pub fn use_progress_thread(self, yes: bool) -> Self {
        Self {
            inner: self.inner.use_progress_thread(yes),
        }
    }

    /// See [`AsyncBuilder::num_rpc_threads`].
    #[must_use]
    pub fn num_rpc_threads(self, n: usize) -> Self {
        Self {
            inner: self.inner.num_rpc_threads(n),
        }
    }

    /// See [`AsyncBuilder::max_message_size`].
    #[must_use]
    pub fn max_message_size(self, bytes: usize) -> Self {
        Self {
            inner: self.inner.max_message_size(bytes),
        }
    }

    /// See [`AsyncBuilder::max_payload_bytes`].
    #[must_use]
    pub fn max_payload_bytes(self, bytes: u64) -> Self {
        Self {
            inner: self.inner.max_payload_bytes(bytes),
        }
    }

    /// See [`AsyncBuilder::stats`].
    #[must_use]
    pub fn stats(self, on: bool) -> Self {
        Self {
            inner: self.inner.stats(on),
        }
    }

    /// See [`AsyncBuilder::stats_timing`].
    #[must_use]
    pub fn stats_timing(self, on: bool) -> Self {
        Self {
            inner: self.inner.stats_timing(on),
        }
    }

    /// See [`AsyncBuilder::serve_stats`].
    #[must_use]
    pub fn serve_stats(self, on: bool) -> Self {
        Self {
            inner: self.inner.serve_stats(on),
        }
    }

    /// See [`AsyncBuilder::provider`].
    #[must_use]
    pub fn provider(self, provider_id: u16, options: ProviderOptions) -> Self {
        Self {
            inner: self.inner.provider(provider_id, options),
        }
    }

    /// See [`AsyncBuilder::pool`].
    #[must_use]
    pub fn pool(self, name: &str, threads: usize) -> Self {
        Self {
            inner: self.inner.pool(name, threads),
        }
    }

    /// See [`AsyncBuilder::config_json`].
    #[must_use]
    pub fn config_json(self, json: &str) -> Self {
        Self {
            inner: self.inner.config_json(json),
        }
    }

    /// See [`AsyncBuilder::registry`].
    #[must_use]
    pub fn registry(self, registry: courier_transport::Registry) -> Self {
        Self {
            inner: self.inner.registry(registry),
        }
    }

    /// Starts the runtime (and progress thread, if asked for) and the engine.
    ///
    /// # Errors
    /// Those of [`AsyncBuilder::build`]; [`Error::BlockingInAsync`].
    pub fn build(mut self) -> Result<Engine> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::BlockingInAsync("blocking::Engine::build"));
        }
        let config = self.inner.effective_config()?;
        let runtime = if config.use_progress_thread {
            runtime::progress_thread()?
        } else {
            runtime::caller_driven()?
        };
        self.inner.progress_provided = true;
        self.inner.rpc_provided = true;
        let rt = Arc::new(Rt {
            rt: Some(runtime),
            needs_driving: !config.use_progress_thread,
            serving: std::sync::Mutex::new(None),
        });
        let engine = rt.block_on("blocking::Engine::build", self.inner.build())??;
        Ok(Engine {
            engine,
            rt,
            rpc_threads: config.rpc_thread_count,
            pooled: config
                .providers
                .iter()
                .filter(|(_, p)| p.pool.is_some())
                .map(|(id, _)| *id)
                .collect(),
        })
    }
}

/// A blocking Courier engine (see the [module docs](self)).
pub struct Engine {
    engine: AsyncEngine,
    rt: Arc<Rt>,
    /// Handlers run on RPC threads rather than the serving thread.
    rpc_threads: usize,
    /// Providers whose handlers run on a handler pool of their own.
    pooled: std::collections::BTreeSet<u16>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Engine")
            .field(&self.engine)
            .finish()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.engine.is_finalized() {
            let _ = self.rt.block_on("finalize", self.engine.finalize());
        }
    }
}

impl Engine {
    /// A server-mode engine for `protocol` with default settings.
    ///
    /// # Errors
    /// See [`EngineBuilder::build`].
    pub fn new(protocol: &str) -> Result<Self> {
        Self::builder(protocol).build()
    }

    /// A builder for an engine speaking `protocol_or_address`.
    pub fn builder(protocol_or_address: &str) -> EngineBuilder {
        EngineBuilder {
            inner: AsyncBuilder::new(protocol_or_address),
        }
    }

    /// The async engine underneath (use it from async code only).
    pub fn as_async(&self) -> &AsyncEngine {
        &self.engine
    }

    /// See [`crate::Engine::address`].
    pub fn address(&self) -> Address {
        Address {
            inner: self.engine.address(),
            rt: self.rt.clone(),
        }
    }

    /// See [`crate::Engine::protocol`].
    pub fn protocol(&self) -> &str {
        self.engine.protocol()
    }

    /// See [`crate::Engine::mode`].
    pub fn mode(&self) -> Mode {
        self.engine.mode()
    }

    /// See [`crate::Engine::config`].
    pub fn config(&self) -> Value {
        self.engine.config()
    }

    /// See [`crate::Engine::stats`].
    pub fn stats(&self) -> crate::Stats {
        self.engine.stats()
    }

    /// See [`crate::Engine::provider_load`].
    pub fn provider_load(&self, provider_id: u16) -> Option<crate::admission::ProviderLoad> {
        self.engine.provider_load(provider_id)
    }

    /// See [`crate::Engine::enable_remote_shutdown`].
    pub fn enable_remote_shutdown(&self) {
        self.engine.enable_remote_shutdown();
    }

    /// Registers a handler for `name` at provider 0. The handler is a plain
    /// closure getting a [`Handle`] and the decoded arguments.
    ///
    /// # Errors
    /// See [`crate::Engine::register`].
    pub fn register<A, F, O>(&self, name: &str, handler: F) -> Result<()>
    where
        A: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Handle, A) -> O + Send + Sync + 'static,
        O: HandlerOutput + Send + 'static,
    {
        self.register_with(name, RpcOptions::default(), handler)
    }

    /// Registers a handler with options (provider id, one-way).
    ///
    /// # Errors
    /// See [`crate::Engine::register`].
    pub fn register_with<A, F, O>(&self, name: &str, options: RpcOptions, handler: F) -> Result<()>
    where
        A: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(Handle, A) -> O + Send + Sync + 'static,
        O: HandlerOutput + Send + 'static,
    {
        let rt = self.rt.clone();
        if self.pooled.contains(&options.provider_id) {
            // On its pool's threads, which no caller's timeout needs.
            return self
                .engine
                .register_with(name, options, move |h: AsyncHandle, args: A| {
                    let h = Handle::new(h, rt.clone());
                    std::future::ready(handler(h, args).into_result())
                });
        }
        let queue = self.serving_queue()?;
        let handler = Arc::new(handler);
        self.engine
            .register_with(name, options, move |h: AsyncHandle, args: A| {
                let handler = handler.clone();
                enqueue(&queue, h, rt.clone(), move |h| handler(h, args))
            })
    }

    /// Registers a handler on raw payload bytes.
    ///
    /// # Errors
    /// See [`crate::Engine::register`].
    pub fn register_raw<F, O>(&self, name: &str, options: RpcOptions, handler: F) -> Result<()>
    where
        F: Fn(Handle, Bytes) -> O + Send + Sync + 'static,
        O: HandlerOutput + Send + 'static,
    {
        let rt = self.rt.clone();
        if self.pooled.contains(&options.provider_id) {
            // On its pool's threads, which no caller's timeout needs.
            return self.engine.register_raw(
                name,
                options,
                move |h: AsyncHandle, payload: Bytes| {
                    let h = Handle::new(h, rt.clone());
                    std::future::ready(handler(h, payload).into_result())
                },
            );
        }
        let queue = self.serving_queue()?;
        let handler = Arc::new(handler);
        self.engine
            .register_raw(name, options, move |h: AsyncHandle, payload: Bytes| {
                let handler = handler.clone();
                enqueue(&queue, h, rt.clone(), move |h| handler(h, payload))
            })
    }

    /// The queue of the threads that run this engine's handlers: the
    /// serving thread, or the RPC threads (started here, at the first
    /// registration).
    fn serving_queue(&self) -> Result<Arc<serve::Queue>> {
        let mut slot = self.rt.serving.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = &*slot {
            return Ok(queue.clone());
        }
        let queue = Arc::new(match self.rpc_threads {
            0 => serve::Queue::new(SERVE_THREAD_NAME, 1),
            n => serve::Queue::new(runtime::RPC_THREAD_NAME, n),
        });
        for _ in 0..self.rpc_threads.max(1) {
            if let Err(source) = start_serving_thread(&self.rt, &queue) {
                queue.close();
                return Err(Error::Runtime {
                    what: "the threads that run handlers",
                    source,
                });
            }
        }
        let closing = queue.clone();
        self.engine.on_finalize(move || closing.close());
        *slot = Some(queue.clone());
        Ok(queue)
    }

    /// See [`crate::Engine::registered`].
    pub fn registered(&self, name: &str, provider_id: u16) -> bool {
        self.engine.registered(name, provider_id)
    }

    /// See [`crate::Engine::deregister`].
    ///
    /// # Errors
    /// [`Error::NotRegistered`].
    pub fn deregister(&self, name: &str, provider_id: u16) -> Result<()> {
        self.engine.deregister(name, provider_id)
    }

    /// A typed remote function (see [`crate::Engine::remote`]).
    pub fn remote<A, R>(&self, name: &str) -> RemoteFunction<A, R>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        RemoteFunction {
            inner: AsyncRemote::new(self.engine.remote_raw(name)),
            rt: self.rt.clone(),
        }
    }

    /// Resolves an address string and connects to it.
    ///
    /// # Errors
    /// See [`crate::Engine::lookup`].
    pub fn lookup(&self, address: &str) -> Result<Address> {
        let inner = self.rt.block_on("lookup", self.engine.lookup(address))??;
        Ok(Address {
            inner,
            rt: self.rt.clone(),
        })
    }

    /// See [`crate::Engine::on_prefinalize`].
    pub fn on_prefinalize(&self, callback: impl FnOnce() + Send + 'static) {
        self.engine.on_prefinalize(callback);
    }

    /// See [`crate::Engine::on_finalize`].
    pub fn on_finalize(&self, callback: impl FnOnce() + Send + 'static) {
        self.engine.on_finalize(callback);
    }

    /// Finalizes the engine (see [`crate::Engine::finalize`]).
    ///
    /// # Errors
    /// [`Error::BlockingInAsync`].
    pub fn finalize(&self) -> Result<()> {
        self.rt.block_on("finalize", self.engine.finalize())
    }

    /// Blocks until the engine is finalized (by `finalize` from another
    /// thread, or a remote shutdown), serving RPCs meanwhile.
    ///
    /// # Errors
    /// [`Error::BlockingInAsync`].
    pub fn wait_for_finalize(&self) -> Result<()> {
        self.rt
            .block_on("wait_for_finalize", self.engine.wait_for_finalize())
    }

    /// Whether the engine is finalizing or finalized.
    pub fn is_finalized(&self) -> bool {
        self.engine.is_finalized()
    }

    /// Exposes memory for bulk transfers; see [`crate::Engine::expose`].
    ///
    /// # Errors
    /// See [`crate::Engine::expose`].
    pub fn expose<S: BulkMemory>(
        &self,
        segments: impl IntoIterator<Item = S>,
        mode: BulkMode,
    ) -> Result<Bulk> {
        self.engine.expose(segments, mode)
    }

    /// A bulk transfer that blocks until it ends (PyMargo's
    /// `engine.transfer(..., blocking=True)`): all of the source range
    /// (`remote` for a pull, `local` for a push) to the start of the
    /// destination range; see [`crate::Engine::transfer`]. Its timeout is
    /// the engine's `timeouts.bulk_ms`. Made from a handler, it inherits
    /// the request's deadline and stops with its cancellation.
    ///
    /// # Errors
    /// See [`crate::Engine::transfer`]; [`Error::BlockingInAsync`].
    pub fn transfer(
        &self,
        op: BulkOp,
        address: &Address,
        remote: &Bulk,
        local: &Bulk,
    ) -> Result<()> {
        let transfer = self.engine.transfer(op, &address.inner, remote, local);
        self.rt
            .block_on("transfer", serve::scoped(transfer.into_future()))?
    }

    /// Copies all of `remote` into `local`; see [`Engine::transfer`].
    ///
    /// # Errors
    /// See [`Engine::transfer`].
    pub fn pull(&self, address: &Address, remote: &Bulk, local: &Bulk) -> Result<()> {
        self.transfer(BulkOp::Pull, address, remote, local)
    }

    /// Copies all of `local` into `remote`; see [`Engine::transfer`].
    ///
    /// # Errors
    /// See [`Engine::transfer`].
    pub fn push(&self, address: &Address, remote: &Bulk, local: &Bulk) -> Result<()> {
        self.transfer(BulkOp::Push, address, remote, local)
    }
}

/// The blocking view of a request (see [`crate::Handle`]).
pub struct Handle {
    inner: AsyncHandle,
    /// The engine's runtime, for the stream methods that wait.
    rt: Arc<Rt>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::Handle")
            .field(&self.inner)
            .finish()
    }
}

impl Handle {
    fn new(inner: AsyncHandle, rt: Arc<Rt>) -> Self {
        Self { inner, rt }
    }

    /// Sends `value` to the caller. It returns once the response is encoded
    /// and queued: the engine sends it without blocking the handler.
    ///
    /// # Errors
    /// [`Error::AlreadyResponded`], [`Error::Encode`].
    pub fn respond<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        let payload = postcard::to_allocvec(value).map_err(|source| Error::Encode {
            rpc: self.inner.rpc_name().to_owned(),
            what: "response",
            source,
        })?;
        self.inner.respond_detached(payload)
    }

    /// Sends raw payload bytes to the caller; see [`Handle::respond`].
    ///
    /// # Errors
    /// [`Error::AlreadyResponded`].
    pub fn respond_raw(&self, payload: &[u8]) -> Result<()> {
        self.inner.respond_detached(payload.to_vec())
    }

    /// The sender's address (see [`crate::Handle::address`]): look it up
    /// to call the sender back, from the handler itself if need be.
    pub fn address(&self) -> String {
        self.inner.address().to_string()
    }

    /// The provider id the request was sent to.
    pub fn provider_id(&self) -> u16 {
        self.inner.provider_id()
    }

    /// The RPC's name.
    pub fn rpc_name(&self) -> &str {
        self.inner.rpc_name()
    }

    /// The caller's deadline, if it set one (see
    /// [`crate::Handle::deadline`]).
    pub fn deadline(&self) -> Option<std::time::Instant> {
        self.inner.deadline()
    }

    /// Whether the request was cancelled or its deadline passed: a
    /// blocking handler polls this between steps of its work, and stops
    /// (its response would go nowhere).
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// The request's cancellation token, for threads doing its work.
    pub fn cancel_token(&self) -> crate::CancelToken {
        self.inner.cancel_token()
    }

    /// The trace context the caller sent (see
    /// [`crate::Handle::parent_trace`]).
    pub fn parent_trace(&self) -> Option<crate::TraceContext> {
        self.inner.parent_trace()
    }

    /// This handler's own trace context, which its calls carry (see
    /// [`crate::Handle::trace_context`]).
    pub fn trace_context(&self) -> Option<crate::TraceContext> {
        self.inner.trace_context()
    }

    /// The async handle underneath.
    pub fn as_async(&self) -> &AsyncHandle {
        &self.inner
    }

    /// Whether the caller opened streams with this request (called it
    /// with [`Callable::stream`], not `call`); see
    /// [`crate::Handle::is_stream`].
    pub fn is_stream(&self) -> bool {
        self.inner.is_stream()
    }

    /// Sends an item of the response stream (postcard-encoded), blocking
    /// until the caller has credit for it: a slow caller holds the
    /// handler here. See [`crate::Handle::send_item`].
    ///
    /// It returns [`Error::Cancelled`] as soon as the request is cancelled
    /// (the caller dropped its stream, its deadline passed, the
    /// connection was lost), whether it waits for credit or not: a
    /// handler that sends in a loop stops at its next item. Without a
    /// progress thread, a caller's cancellation is read while the handler
    /// waits in the engine (for credit, for an item).
    ///
    /// # Errors
    /// Those of [`crate::Handle::send_item`]; [`Error::BlockingInAsync`]
    /// (in the handler of a provider with a handler pool of its own: see
    /// the [module docs](self)).
    pub fn send_item<T: serde::Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        self.stream_op("Handle::send_item", self.inner.send_item(item))
    }

    /// Sends raw bytes as an item of the response stream; see
    /// [`Handle::send_item`].
    ///
    /// # Errors
    /// See [`Handle::send_item`].
    pub fn send_item_raw(&self, item: &[u8]) -> Result<()> {
        self.stream_op("Handle::send_item_raw", self.inner.send_item_raw(item))
    }

    /// The caller's next request item, decoded, blocking until it comes;
    /// `None` once the caller closed its request stream. See
    /// [`crate::Handle::recv_item`]. Returns [`Error::Cancelled`] as soon
    /// as the request is cancelled, as [`Handle::send_item`] does.
    ///
    /// # Errors
    /// Those of [`crate::Handle::recv_item`] ([`Error::StreamAborted`]
    /// when the caller aborted its stream); [`Error::BlockingInAsync`].
    pub fn recv_item<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let item = self.recv_item_raw()?;
        item.map(|b| {
            decode_exact(&b).map_err(|reason| Error::Decode {
                rpc: self.inner.rpc_name().to_owned(),
                what: "stream item",
                reason,
            })
        })
        .transpose()
    }

    /// The caller's next request item, raw; see [`Handle::recv_item`].
    ///
    /// # Errors
    /// See [`Handle::recv_item`].
    pub fn recv_item_raw(&self) -> Result<Option<Bytes>> {
        let out = self.stream_op("Handle::recv_item", self.inner.recv_item_raw());
        if matches!(&out, Err(Error::StreamAborted { message, .. }) if message == CANCELLED_BY_CALLER)
        {
            // A caller's `StreamCall::cancel`: its cancel follows.
            let _ = self
                .rt
                .block_on("Handle::recv_item", self.inner.cancelled());
        }
        // A caller whose call is dropped ends its request stream before it
        // cancels: the end of a cancelled request is its cancellation.
        if matches!(out, Ok(None) | Err(Error::StreamAborted { .. })) && self.is_cancelled() {
            return Err(self.cancelled());
        }
        out
    }

    /// Runs a stream operation of this request, unless it is cancelled
    /// already (the operation itself stops when the request is cancelled
    /// while it waits).
    fn stream_op<T>(&self, what: &'static str, op: impl Future<Output = Result<T>>) -> Result<T> {
        if self.inner.is_stream() && self.inner.is_cancelled() {
            return Err(self.cancelled());
        }
        self.rt.block_on(what, op)?
    }

    fn cancelled(&self) -> Error {
        Error::Cancelled {
            rpc: self.inner.rpc_name().to_owned(),
            address: self.inner.conn().remote().to_string(),
        }
    }
}

/// The message of the abort with which [`StreamCall::cancel`] ends its
/// request stream before it cancels the call (the Python binding's
/// `StreamCall.cancel` sends the same): a blocking handler that reads it
/// waits for the cancel, and fails with [`Error::Cancelled`].
const CANCELLED_BY_CALLER: &str = "the caller cancelled the call";

/// The blocking form of [`crate::Address`].
#[derive(Clone)]
pub struct Address {
    inner: AsyncAddress,
    rt: Arc<Rt>,
}

impl Address {
    /// Asks the peer engine to finalize; see [`crate::Address::shutdown`].
    ///
    /// # Errors
    /// [`Error::ShutdownRefused`], connection errors.
    pub fn shutdown(&self) -> Result<()> {
        self.rt.block_on("shutdown", self.inner.shutdown())?
    }

    /// Reads the peer engine's statistics; see [`crate::Address::stats`].
    ///
    /// # Errors
    /// See [`crate::Address::stats`].
    pub fn stats(&self) -> Result<crate::Stats> {
        self.rt.block_on("stats", self.inner.stats())?
    }

    /// One engine-level round trip; see [`crate::Address::ping`].
    ///
    /// # Errors
    /// Connection errors, timeout.
    pub fn ping(&self, timeout: Option<Duration>) -> Result<Duration> {
        self.rt.block_on("ping", self.inner.ping(timeout))?
    }

    /// The async address underneath.
    pub fn as_async(&self) -> &AsyncAddress {
        &self.inner
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for Address {}

impl Hash for Address {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

/// The blocking form of [`crate::RemoteFunction`].
pub struct RemoteFunction<A: ?Sized, R> {
    inner: AsyncRemote<A, R>,
    rt: Arc<Rt>,
}

impl<A: ?Sized, R> Clone for RemoteFunction<A, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            rt: self.rt.clone(),
        }
    }
}

impl<A: ?Sized, R> fmt::Debug for RemoteFunction<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned> RemoteFunction<A, R> {
    /// A timeout for every call made through this function.
    #[must_use]
    pub fn timeout(self, after: Duration) -> Self {
        Self {
            inner: self.inner.timeout(after),
            rt: self.rt,
        }
    }

    /// Targets provider 0 at `address`.
    pub fn on(&self, address: &Address) -> Callable<A, R> {
        self.on_provider(address, 0)
    }

    /// Targets provider `provider_id` at `address`.
    pub fn on_provider(&self, address: &Address, provider_id: u16) -> Callable<A, R> {
        Callable {
            inner: self.inner.on_provider(&address.inner, provider_id),
            rt: self.rt.clone(),
        }
    }
}

impl<A: serde::Serialize + ?Sized> RemoteFunction<A, ()> {
    /// Makes calls one-way; see [`crate::RemoteFunction::disable_response`].
    #[must_use]
    pub fn disable_response(self) -> Self {
        Self {
            inner: self.inner.disable_response(),
            rt: self.rt,
        }
    }
}

/// The blocking form of [`crate::Callable`].
pub struct Callable<A: ?Sized, R> {
    inner: AsyncCallable<A, R>,
    rt: Arc<Rt>,
}

impl<A: ?Sized, R> fmt::Debug for Callable<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned> Callable<A, R> {
    /// A timeout for calls through this callable.
    #[must_use]
    pub fn timeout(self, after: Duration) -> Self {
        Self {
            inner: self.inner.timeout(after),
            rt: self.rt,
        }
    }

    /// The trace context calls through this callable carry; see
    /// [`crate::Callable::trace`] (without it, a call carries that of
    /// [`crate::trace::with_context`], or of the handler making it).
    #[must_use]
    pub fn trace(self, ctx: crate::TraceContext) -> Self {
        Self {
            inner: self.inner.trace(ctx),
            rt: self.rt,
        }
    }

    /// Calls the RPC and blocks until its response (or error).
    ///
    /// # Errors
    /// See [`crate::Callable::call`].
    pub fn call(&self, args: &A) -> Result<R> {
        self.rt
            .block_on("call", serve::scoped(self.inner.call(args)))?
    }

    /// Starts the call and returns at once with a [`Request`] to
    /// [`test`](Request::test) or [`wait`](Request::wait) on.
    ///
    /// # Errors
    /// [`Error::Encode`] (the arguments are encoded before returning).
    pub fn call_nonblocking(&self, args: &A) -> Result<Request<R>> {
        let (raw, msg) = self.inner.encoded(args)?;
        let inherited = crate::cancel::current().or_else(crate::CancelToken::served_here);
        let trace = crate::trace::here();
        let join = self
            .rt
            .runtime()
            .spawn(crate::trace::scoped(trace, async move {
                let mut msg = msg;
                raw.invoke(Body::Encoded(&mut msg), inherited).await
            }));
        Ok(Request {
            join: Some(join),
            rt: self.rt.clone(),
            rpc: self.inner.rpc_name().to_owned(),
            _r: PhantomData,
        })
    }
}

impl<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned> Callable<A, R> {
    /// Opens a stream call: request items of type `S`, response items of
    /// type `I`, and the handler's answer of type `R` at its end (see
    /// [`crate::stream`]). Blocks until the request is sent.
    ///
    /// Made from a blocking handler, the stream inherits its request's
    /// deadline, as a call does.
    ///
    /// # Errors
    /// See [`crate::Callable::stream`].
    pub fn stream<S, I>(&self, args: &A) -> Result<StreamCall<S, I, R>>
    where
        S: serde::Serialize + ?Sized,
        I: serde::de::DeserializeOwned,
    {
        let inner = self
            .rt
            .block_on_send("stream", serve::scoped(self.inner.stream::<S, I>(args)))??;
        Ok(StreamCall {
            inner,
            rt: self.rt.clone(),
        })
    }
}

/// A stream call in progress, blocking: the blocking form of
/// [`crate::stream::StreamCall`], made by [`Callable::stream`]. Request items of
/// type `S`, response items of type `I`, the handler's answer of type `R`.
///
/// [`send`](Self::send) items (blocking while the handler has no credit
/// for more) and [`close`](Self::close) the request stream (or
/// [`abort`](Self::abort) it); [`recv`](Self::recv) items until `None`
/// (or iterate over [`items`](Self::items)); [`finish`](Self::finish)
/// returns the handler's answer. To send from one thread and receive on
/// another, [`split`](Self::split) it. Dropped before the answer came (or
/// [`cancel`](Self::cancel)led), it cancels the call: the handler's next
/// stream operation fails with [`Error::Cancelled`].
pub struct StreamCall<S: ?Sized, I, R> {
    inner: AsyncStreamCall<S, I, R>,
    rt: Arc<Rt>,
}

impl<S: ?Sized, I, R> fmt::Debug for StreamCall<S, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::StreamCall")
            .field(&self.inner)
            .finish()
    }
}

impl<S, I, R> StreamCall<S, I, R>
where
    S: serde::Serialize + ?Sized,
    I: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned,
{
    /// Sends a request item, blocking until the handler's side has credit
    /// for it; see [`crate::stream::StreamCall::send`].
    ///
    /// # Errors
    /// See [`crate::stream::StreamCall::send`]; [`Error::BlockingInAsync`].
    pub fn send(&mut self, item: &S) -> Result<()> {
        self.rt
            .block_on_send("StreamCall::send", self.inner.send(item))?
    }

    /// Ends the request stream: the handler's next read returns `None`.
    ///
    /// # Errors
    /// Connection errors; [`Error::BlockingInAsync`].
    pub fn close(&mut self) -> Result<()> {
        self.rt
            .block_on_send("StreamCall::close", self.inner.close())?
    }

    /// Ends the request stream with an error: the handler's next read
    /// returns [`Error::StreamAborted`] with `message`.
    ///
    /// # Errors
    /// Connection errors; [`Error::BlockingInAsync`].
    pub fn abort(&mut self, message: &str) -> Result<()> {
        self.rt
            .block_on_send("StreamCall::abort", self.inner.abort(message))?
    }

    /// The next response item, blocking until it comes; `None` once the
    /// handler has answered (the answer is then in
    /// [`finish`](Self::finish)). See [`crate::stream::StreamCall::recv`].
    ///
    /// # Errors
    /// The handler's error, after the items it sent before it;
    /// [`Error::Timeout`]; see [`crate::stream::StreamCall::recv`].
    pub fn recv(&mut self) -> Result<Option<I>> {
        self.rt.block_on("StreamCall::recv", self.inner.recv())?
    }

    /// The response items, as an iterator: [`recv`](Self::recv) until the
    /// end (or the first error, which is its last item).
    pub fn items(&mut self) -> impl Iterator<Item = Result<I>> + '_ {
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let next = self.recv().transpose();
            done = !matches!(next, Some(Ok(_)));
            next
        })
    }

    /// Ends the call: closes the request stream if it is open, drops the
    /// response items not read, and returns the handler's answer.
    ///
    /// # Errors
    /// As [`Callable::call`].
    pub fn finish(self) -> Result<R> {
        let Self { inner, rt } = self;
        rt.block_on("StreamCall::finish", inner.finish())?
    }

    /// Gives the call up: the handler's next stream operation fails with
    /// [`Error::Cancelled`] (the same as dropping it, but the engine is
    /// driven until the server is told, also without a progress thread).
    /// Once the handler's answer has come, there is nothing to cancel.
    ///
    /// # Errors
    /// [`Error::BlockingInAsync`].
    pub fn cancel(self) -> Result<()> {
        let Self { mut inner, rt } = self;
        rt.block_on("StreamCall::cancel", async move {
            // Its request stream, if open, is aborted first: dropped, it
            // would end cleanly before the handler hears of the cancel,
            // and a handler reading items would take it for the end.
            let _ = inner.abort(CANCELLED_BY_CALLER).await;
            drop(inner);
            // The cancel is sent from a task if it could not go at once.
            tokio::task::yield_now().await;
        })
    }

    /// The two halves, to send from one thread and receive on another.
    pub fn split(self) -> (StreamSender<S>, StreamReceiver<I, R>) {
        let Self { inner, rt } = self;
        let (sender, receiver) = inner.split();
        (
            StreamSender {
                inner: sender,
                rt: rt.clone(),
            },
            StreamReceiver {
                inner: receiver,
                rt,
            },
        )
    }

    /// The async stream call underneath (use it from async code only).
    pub fn as_async(&mut self) -> &mut AsyncStreamCall<S, I, R> {
        &mut self.inner
    }
}

/// The sending half of a blocking [`StreamCall`] ([`StreamCall::split`]).
/// Dropped, it closes the request stream.
pub struct StreamSender<S: ?Sized> {
    inner: crate::stream::StreamSender<S>,
    rt: Arc<Rt>,
}

impl<S: ?Sized> fmt::Debug for StreamSender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::StreamSender")
            .field(&self.inner)
            .finish()
    }
}

impl<S: serde::Serialize + ?Sized> StreamSender<S> {
    /// See [`StreamCall::send`].
    ///
    /// # Errors
    /// See [`StreamCall::send`].
    pub fn send(&mut self, item: &S) -> Result<()> {
        self.rt
            .block_on_send("StreamSender::send", self.inner.send(item))?
    }

    /// See [`StreamCall::close`].
    ///
    /// # Errors
    /// See [`StreamCall::close`].
    pub fn close(&mut self) -> Result<()> {
        self.rt
            .block_on_send("StreamSender::close", self.inner.close())?
    }

    /// See [`StreamCall::abort`].
    ///
    /// # Errors
    /// See [`StreamCall::abort`].
    pub fn abort(&mut self, message: &str) -> Result<()> {
        self.rt
            .block_on_send("StreamSender::abort", self.inner.abort(message))?
    }
}

/// The receiving half of a blocking [`StreamCall`] ([`StreamCall::split`]);
/// also an [`Iterator`] of items, which ends at the end of the response
/// stream or after its first error.
pub struct StreamReceiver<I, R> {
    inner: crate::stream::StreamReceiver<I, R>,
    rt: Arc<Rt>,
}

impl<I, R> fmt::Debug for StreamReceiver<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("blocking::StreamReceiver")
            .field(&self.inner)
            .finish()
    }
}

impl<I: serde::de::DeserializeOwned, R: serde::de::DeserializeOwned> StreamReceiver<I, R> {
    /// See [`StreamCall::recv`].
    ///
    /// # Errors
    /// See [`StreamCall::recv`].
    pub fn recv(&mut self) -> Result<Option<I>> {
        self.rt
            .block_on("StreamReceiver::recv", self.inner.recv())?
    }

    /// Drops the items not read and returns the handler's answer (the
    /// request stream is not closed here: its sender does that, when it
    /// is closed or dropped).
    ///
    /// # Errors
    /// See [`StreamCall::finish`].
    pub fn finish(self) -> Result<R> {
        let Self { inner, rt } = self;
        rt.block_on("StreamReceiver::finish", inner.finish())?
    }
}

impl<I: serde::de::DeserializeOwned, R: serde::de::DeserializeOwned> Iterator
    for StreamReceiver<I, R>
{
    type Item = Result<I>;

    fn next(&mut self) -> Option<Result<I>> {
        self.recv().transpose()
    }
}

/// A call in flight, from [`Callable::call_nonblocking`].
pub struct Request<R> {
    join: Option<JoinHandle<Result<Bytes>>>,
    rt: Arc<Rt>,
    rpc: String,
    _r: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Request<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request").field("rpc", &self.rpc).finish()
    }
}

impl<R: serde::de::DeserializeOwned> Request<R> {
    /// Whether the call has completed (so [`Request::wait`] will not block).
    /// Without a progress thread, this makes a little progress itself.
    pub fn test(&self) -> bool {
        let Some(join) = &self.join else { return true };
        if !join.is_finished() && self.rt.needs_driving {
            let _ = self.rt.block_on("test", tokio::task::yield_now());
        }
        join.is_finished()
    }

    /// Blocks until the call completes and returns its result.
    ///
    /// # Errors
    /// Those of [`Callable::call`]; [`Error::BlockingInAsync`].
    pub fn wait(mut self) -> Result<R> {
        let Some(join) = self.join.take() else {
            return Err(Error::Finalized);
        };
        let payload = match self.rt.block_on("wait", join)? {
            Ok(r) => r?,
            Err(_) => return Err(Error::Finalized),
        };
        decode_response(&self.rpc, &payload)
    }
}

impl<R> Request<R> {
    /// Cancels the call: it ends, and the server is told (its handler's
    /// token fires, an async handler is dropped). Returns once the call is
    /// given up here. Dropping a `Request` cancels it too, but without a
    /// progress thread the server hears of it only when the engine next
    /// runs.
    ///
    /// # Errors
    /// [`Error::BlockingInAsync`].
    pub fn cancel(mut self) -> Result<()> {
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        join.abort();
        // Driving the engine until the call's task is dropped sends the
        // cancel (see `Conn::cancel_call`).
        self.rt.block_on("cancel", join).map(|_| ())
    }
}

impl<R> Drop for Request<R> {
    fn drop(&mut self) {
        if let Some(join) = self.join.take() {
            join.abort();
        }
    }
}

/// The engine's raw handler for a blocking handler on the serving thread:
/// queues `run` as a job and completes with its outcome. A job whose
/// request was cancelled while it waited does not run; a panic in `run` is
/// raised again here, where the engine reports handler panics.
fn enqueue<O: HandlerOutput>(
    queue: &serve::Queue,
    h: AsyncHandle,
    rt: Arc<Rt>,
    run: impl FnOnce(Handle) -> O + Send + 'static,
) -> impl Future<Output = std::result::Result<(), String>> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // It waits for a serving thread: a `waiting` request in the statistics
    // until the thread takes it up (`mark_started` below).
    h.mark_queued();
    let job: serve::Job = Box::new(move || {
        if h.is_cancelled() {
            return;
        }
        h.mark_started();
        let token = h.cancel_token();
        let trace = h.trace_context();
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Its blocking calls carry its trace context (none if the
            // caller sent none).
            crate::trace::serve_here(trace, || {
                token.serve_here(|| run(Handle::new(h, rt)).into_result())
            })
        }));
        let _ = tx.send(out);
    });
    let queued = queue.push(job).is_ok();
    async move {
        if !queued {
            return Err("the engine is finalizing: the handler did not run".to_owned());
        }
        match rx.await {
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err("the request ended before its handler ran".to_owned()),
        }
    }
}
