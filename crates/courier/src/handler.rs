//! Server side of an RPC: the handle, the handler types, running a handler.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_transport::{BoxFuture, TransportError};
use tracing::Instrument;

use crate::address::Address;
use crate::admission::ProviderPermit;
use crate::cancel::{self, CancelReason, CancelToken, Serving};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::flow::{Closed, Flow};
use crate::frame::{self, Header, Kind, Status};
use crate::limits::RequestSlot;
use crate::overflow::expose;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::stats::record::{Outcome, RpcRecord};
use crate::trace::{self, TraceContext};

/// What a handler may return: `()`, or `Result<(), E>` where `E` displays
/// (the message is sent to the caller as a remote error).
pub trait HandlerOutput {
    /// `Err(message)` to report a failure to the caller.
    fn into_result(self) -> std::result::Result<(), String>;
}

impl HandlerOutput for () {
    fn into_result(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> HandlerOutput for std::result::Result<(), E> {
    fn into_result(self) -> std::result::Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A handler as the engine holds it: raw payload in, `Err(message)` for
/// the caller on failure.
pub(crate) type RawHandler =
    Arc<dyn Fn(Handle, Bytes) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync>;

pub(crate) fn boxed<F, Fut>(handler: F) -> RawHandler
where
    F: Fn(Handle, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    Arc::new(move |h, p| {
        let fut = handler(h, p);
        Box::pin(async move { fut.await.into_result() })
    })
}

/// Wraps a typed handler as a raw one: decodes the arguments first.
pub(crate) fn typed<A, F, Fut>(
    handler: F,
) -> impl Fn(Handle, Bytes) -> BoxFuture<'static, std::result::Result<(), String>> + Send + Sync + 'static
where
    A: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(Handle, A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    move |h: Handle, payload: Bytes| -> BoxFuture<'static, std::result::Result<(), String>> {
        match decode_exact::<A>(&payload) {
            Ok(args) => {
                let fut = handler(h, args);
                Box::pin(async move { fut.await.into_result() })
            }
            Err(why) => {
                let message = format!(
                    "cannot decode the arguments of RPC '{}': {why}",
                    h.rpc_name()
                );
                Box::pin(std::future::ready(Err(message)))
            }
        }
    }
}

/// Decodes a whole postcard value: bytes left over after it mean that the
/// two sides disagree on the type (a string sent where a number is
/// expected decodes its length as the number, and leaves its bytes).
///
/// # Errors
/// Why not, as a message.
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> std::result::Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!(
            "type mismatch: {} of {} bytes are left over after decoding",
            rest.len(),
            bytes.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

struct RequestState {
    engine: Arc<EngineState>,
    conn: Arc<Conn>,
    /// The RPC's statistics (and its name).
    rpc: Arc<RpcRecord>,
    /// How the request ended, as counted when it is done ([`Outcome`]).
    outcome: AtomicU8,
    /// Whether its handler runs ([`Start`]), for the statistics' count of
    /// requests waiting for theirs.
    start: AtomicU8,
    /// Payload bytes of the request, and of the response sent.
    bytes_in: u64,
    bytes_out: AtomicU64,
    /// The phases' marks, with timing on.
    timing: Option<Timing>,
    header: Header,
    idempotent: bool,
    responded: AtomicBool,
    /// The caller's deadline, if it sent one.
    deadline: Option<Instant>,
    /// The trace contexts of a request that came with one (boxed: a
    /// request without one carries 8 bytes for it).
    trace: Option<Box<Traced>>,
    /// Fires when the caller gives up or the deadline passes; made when
    /// first needed (the handler waits, asks for it, or makes a call).
    token: OnceLock<CancelToken>,
    /// Whether the connection's table of running requests holds this one
    /// (so that a `Cancel` frame finds it): set once its handler had to
    /// wait, taken out when the request is done.
    tracked: AtomicBool,
    /// The request's place among its connection's requests in flight,
    /// given back when the last handle goes.
    _slot: Option<RequestSlot>,
    /// Its place among its provider's running handlers, if the provider
    /// has limits (`admission.rs`; set when the request's turn comes):
    /// given back at the same time.
    provider: OnceLock<ProviderPermit>,
    /// The request's streams, if the caller opened them (`flow.rs`).
    stream: Option<Arc<Flow>>,
}

/// Where a request's handler stands, for the statistics' count of requests
/// waiting for theirs: new (polled at once on the progress loop: never
/// counted as waiting), waiting (handed to a task: a handler thread, its
/// provider's turn), running, or handed by its handler to a queue of a
/// binding's own ([`Handle::mark_queued`]) where it waits again for a
/// thread. Each step is taken by the one party that holds the request at
/// that point, so plain loads and stores do.
struct Start;

impl Start {
    const NEW: u8 = 0;
    const WAITING: u8 = 1;
    const RUNNING: u8 = 2;
    const QUEUED: u8 = 3;
}

/// When a request arrived, and its later marks in nanoseconds after that
/// (0: not yet). Stores, not read-modify-writes: each mark is set by the
/// one party that reaches it.
struct Timing {
    received: Instant,
    started: AtomicU64,
    responded: AtomicU64,
    sent: AtomicU64,
}

impl Timing {
    fn mark(&self, at: &AtomicU64) {
        let ns = u64::try_from(self.received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        at.store(ns.max(1), Ordering::Relaxed);
    }

    /// The phases (queue, handler, respond) of a request done now: only
    /// those it reached (a request cancelled in its queue has none; one
    /// that sent no response has no `respond`).
    fn phases(&self) -> [Option<Duration>; 3] {
        let started = self.started.load(Ordering::Relaxed);
        if started == 0 {
            return [None; 3];
        }
        let responded = self.responded.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        // A handler that sent nothing ran until now.
        let handler_end = if responded == 0 {
            u64::try_from(self.received.elapsed().as_nanos()).unwrap_or(u64::MAX)
        } else {
            responded
        };
        let respond = (responded != 0 && sent != 0)
            .then(|| Duration::from_nanos(sent.saturating_sub(responded)));
        [
            Some(Duration::from_nanos(started)),
            Some(Duration::from_nanos(handler_end.saturating_sub(started))),
            respond,
        ]
    }
}

/// The trace contexts of a request: the caller's, and the handler's own.
struct Traced {
    /// The caller's, as received.
    parent: TraceContext,
    /// The handler's (a child of the caller's), made with its span when
    /// it starts running (`run`).
    own: OnceLock<TraceContext>,
}

impl RequestState {
    fn set_outcome(&self, outcome: Outcome) {
        self.outcome.store(outcome as u8, Ordering::Relaxed);
    }

    /// Marks the handler's start (its first poll, or, for a blocking
    /// handler, when a thread takes it up), timed with timing on. Ends the
    /// request's wait, if it waited (one relaxed increment); a request
    /// polled at once pays a load and a store of its own.
    fn mark_started(&self) {
        match self.start.load(Ordering::Relaxed) {
            Start::RUNNING => {}
            Start::NEW => self.start.store(Start::RUNNING, Ordering::Relaxed),
            _ => {
                self.start.store(Start::RUNNING, Ordering::Relaxed);
                self.rpc.server.wait_ends();
            }
        }
        if let Some(t) = &self.timing {
            t.mark(&t.started);
        }
    }

    /// The request is handed to a task that will poll its handler later
    /// (a handler thread, its provider's turn): it waits until
    /// [`RequestState::mark_started`].
    fn mark_waiting(&self) {
        if self.start.load(Ordering::Relaxed) == Start::NEW {
            self.start.store(Start::WAITING, Ordering::Relaxed);
            self.rpc.server.wait_begins();
        }
    }

    /// The handler handed the request to a queue of its own: it waits
    /// again, until [`RequestState::mark_started`].
    fn mark_queued(&self) {
        if self.start.load(Ordering::Relaxed) == Start::RUNNING {
            self.start.store(Start::QUEUED, Ordering::Relaxed);
            self.rpc.server.wait_begins();
        }
    }

    /// Whether the request waits for its handler to start.
    fn waits(start: u8) -> bool {
        matches!(start, Start::WAITING | Start::QUEUED)
    }

    fn expects_response(&self) -> bool {
        !self.header.no_response()
    }

    /// Whether the caller waits for an answer that was not sent yet.
    fn unanswered(&self) -> bool {
        self.expects_response() && !self.responded.load(Ordering::Acquire)
    }

    /// Claims the right to answer; false if already answered (or one-way).
    fn claim(&self) -> bool {
        // A cancelled request's caller wants no answer any more, nor one
        // past its deadline (the clock is read only if there is one).
        self.expects_response()
            && self.reason().is_none()
            && !self.responded.swap(true, Ordering::AcqRel)
    }

    /// The request's token, made on first use.
    fn token(&self) -> CancelToken {
        self.token
            .get_or_init(|| CancelToken::new(self.deadline))
            .clone()
    }

    /// Why the request is cancelled, if it is (a passed deadline counts).
    fn reason(&self) -> Option<CancelReason> {
        match self.token.get() {
            Some(token) => token.reason(),
            None => self
                .deadline
                .filter(|at| Instant::now() >= *at)
                .map(|_| CancelReason::Deadline),
        }
    }

    /// Puts the request in its connection's table of running requests, so
    /// that a `Cancel` frame reaches it.
    fn track(&self) {
        // A one-way request has no caller waiting to cancel it.
        if self.expects_response() && !self.tracked.swap(true, Ordering::AcqRel) {
            self.conn.track_request(self.header.seq, self.token());
        }
    }

    /// The request was cancelled: its handler is dropped (or told), and
    /// nothing is sent back (the caller is gone, or has given up).
    fn cancelled(&self, reason: CancelReason) {
        self.set_outcome(match reason {
            CancelReason::Deadline => Outcome::Deadline,
            CancelReason::Caller | CancelReason::ConnectionLost => Outcome::Cancelled,
        });
        self.token().fire(reason);
        self.responded.store(true, Ordering::Release);
        tracing::info!(
            rpc = %self.rpc.name,
            provider = self.header.provider,
            peer = %self.conn.remote(),
            "handler cancelled: {reason}"
        );
    }

    async fn fail(&self, status: Status, message: &str) {
        self.set_outcome(match status {
            Status::HandlerPanicked => Outcome::Panicked,
            Status::NoResponse => Outcome::NoResponse,
            _ => Outcome::Failed,
        });
        if self.claim() {
            if let Some(flow) = &self.stream {
                flow.close_sending(Closed::Done);
            }
            let _ = self.conn.send_error(&self.header, status, message).await;
        } else if self.expects_response() {
            tracing::warn!(rpc = %self.rpc.name, "handler error after it responded: {message}");
        } else {
            tracing::warn!(rpc = %self.rpc.name, "one-way handler failed: {message}");
        }
    }
}

impl Serving for RequestState {
    fn token(&self) -> CancelToken {
        Self::token(self)
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Drop for RequestState {
    fn drop(&mut self) {
        if *self.tracked.get_mut() {
            self.conn.untrack_request(self.header.seq);
        }
        if let Some(flow) = &self.stream {
            // Its request stream's items and credit are dropped from now.
            flow.close_sending(Closed::Done);
            self.conn.unserve_stream(self.header.seq);
        }
        let outcome = Outcome::from_u8(*self.outcome.get_mut());
        let phases = self.timing.as_ref().map(Timing::phases);
        self.rpc.server.end_served(
            outcome,
            self.bytes_in,
            *self.bytes_out.get_mut(),
            phases.as_ref().map_or(&[][..], |p| &p[..]),
            Self::waits(*self.start.get_mut()),
        );
        // A handle dropped without responding, after the handler returned
        // (a deferred response that never came): tell the caller.
        if self.claim() {
            let conn = self.conn.clone();
            let header = self.header;
            let name = self.rpc.name.clone();
            if self.stream.is_some() {
                // A stream's handler that kept its handle, then let it go:
                // the response stream ends there.
                conn.send_detached(Header {
                    kind: Kind::Response,
                    flags: 0,
                    status: Status::Ok,
                    ..header
                });
                return;
            }
            self.engine.rt.spawn(async move {
                tracing::warn!(rpc = %name, "handle dropped without responding");
                let _ = conn
                    .send_error(
                        &header,
                        Status::NoResponse,
                        "the handler dropped its handle without responding",
                    )
                    .await;
            });
        }
    }
}

/// The server-side view of one request (PyMargo's `Handle`): who sent it,
/// and the way to answer it.
///
/// Respond exactly once with [`Handle::respond`] (unless the RPC is one-way).
/// A handler may keep the handle and respond later, from another task; if
/// every copy of the handle is dropped without a response, the caller gets
/// [`Error::NoResponse`] instead of waiting forever.
pub struct Handle {
    state: Arc<RequestState>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("rpc", &self.state.rpc.name)
            .field("provider", &self.state.header.provider)
            .field("peer", &self.state.conn.remote().to_string())
            .finish()
    }
}

/// What arrived with a request, for [`Handle::new`].
pub(crate) struct Arrival {
    pub(crate) header: Header,
    /// The caller's deadline, if it sent one.
    pub(crate) deadline: Option<Instant>,
    /// The caller's trace context, if it sent one.
    pub(crate) trace: Option<TraceContext>,
    /// When the request arrived, with timing on.
    pub(crate) received: Option<Instant>,
    /// Payload bytes.
    pub(crate) bytes_in: usize,
    /// Its place among the connection's requests in flight.
    pub(crate) slot: Option<RequestSlot>,
    /// Its streams, if the caller opened them.
    pub(crate) stream: Option<Arc<Flow>>,
}

impl Handle {
    pub(crate) fn new(
        engine: Arc<EngineState>,
        conn: Arc<Conn>,
        rpc: Arc<RpcRecord>,
        idempotent: bool,
        arrival: Arrival,
    ) -> Self {
        let Arrival {
            header,
            deadline,
            trace,
            received,
            bytes_in,
            slot,
            stream,
        } = arrival;
        rpc.server.begin();
        Self {
            state: Arc::new(RequestState {
                engine,
                conn,
                rpc,
                outcome: AtomicU8::new(Outcome::NoResponse as u8),
                start: AtomicU8::new(Start::NEW),
                bytes_in: bytes_in as u64,
                bytes_out: AtomicU64::new(0),
                timing: received.map(|received| Timing {
                    received,
                    started: AtomicU64::new(0),
                    responded: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                }),
                header,
                idempotent,
                responded: AtomicBool::new(false),
                deadline,
                trace: trace.map(|parent| {
                    Box::new(Traced {
                        parent,
                        own: OnceLock::new(),
                    })
                }),
                token: OnceLock::new(),
                tracked: AtomicBool::new(false),
                _slot: slot,
                provider: OnceLock::new(),
                stream,
            }),
        }
    }

    /// Marks when the handler's work starts, for the statistics (the end of
    /// the request's `queue` phase, the start of its `handler` phase, the
    /// end of its count among the requests `waiting` for their handler).
    /// The engine marks the first poll of the handler's future; a binding
    /// or framework that hands the request to a thread of its own calls
    /// [`Handle::mark_queued`] when it queues it and this when that thread
    /// takes it up, so that the wait for the thread counts as queueing.
    /// The phases are timed only with timing on.
    pub fn mark_started(&self) {
        self.state.mark_started();
    }

    /// Tells the statistics that the handler handed the request to a queue
    /// of its own (a binding's handler threads, a worker pool), where it
    /// waits for a thread: it counts among the requests `waiting` for
    /// their handler again until [`Handle::mark_started`]. Called from the
    /// handler, before the request is queued (a thread may take it up at
    /// once); nothing happens if its handler has not started.
    pub fn mark_queued(&self) {
        self.state.mark_queued();
    }

    /// The request goes to a task that polls its handler later: it counts
    /// as waiting until then (statistics).
    pub(crate) fn mark_waiting(&self) {
        self.state.mark_waiting();
    }

    /// Makes the request reachable by a `Cancel` frame before its handler
    /// first runs (one that runs on another thread, or waits for its
    /// turn).
    pub(crate) fn track(&self) {
        self.state.track();
    }

    /// Keeps the request's place among its provider's running handlers
    /// until the request is done.
    pub(crate) fn hold_place(&self, place: Option<ProviderPermit>) {
        if let Some(place) = place {
            let _ = self.state.provider.set(place);
        }
    }

    /// The sender's address: its listening address if it is a server-mode
    /// engine, else the address its connection comes from. Calls made to it
    /// go over the connection the request came on while it lives.
    pub fn address(&self) -> Address {
        let conn = &self.state.conn;
        Address::new(
            self.state.engine.clone(),
            Arc::new(Peer::new(conn.remote().clone(), Some(conn.clone()))),
        )
    }

    /// The provider id the request was sent to.
    pub fn provider_id(&self) -> u16 {
        self.state.header.provider
    }

    /// The RPC's name.
    pub fn rpc_name(&self) -> &str {
        &self.state.rpc.name
    }

    /// Whether the RPC was registered idempotent
    /// ([`RpcOptions::idempotent`](crate::RpcOptions::idempotent)).
    pub fn is_idempotent(&self) -> bool {
        self.state.idempotent
    }

    /// Whether the caller waits for a response (false for one-way RPCs).
    pub fn expects_response(&self) -> bool {
        self.state.expects_response()
    }

    /// The instant by which the caller wants its answer, if it set a
    /// deadline: the budget it sent, counted from when the request
    /// arrived here (a relative duration travels, so the two hosts' clocks
    /// need not agree). Past it the handler is cancelled.
    pub fn deadline(&self) -> Option<Instant> {
        self.state.deadline
    }

    /// The trace context the caller sent, as received: its span is the
    /// parent of this handler's. `None` if it sent none.
    pub fn parent_trace(&self) -> Option<TraceContext> {
        self.state.trace.as_ref().map(|t| t.parent)
    }

    /// This handler's own trace context, if the caller sent one: the same
    /// trace, a span id of its own (with the `otel` feature, that of the
    /// exported `rpc.handle` span), whose parent is the caller's
    /// ([`Handle::parent_trace`]). The calls the handler makes carry it.
    pub fn trace_context(&self) -> Option<TraceContext> {
        self.state.trace.as_ref()?.own.get().copied()
    }

    /// The time left before [`Handle::deadline`], if there is one (zero
    /// once it passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the request was cancelled (the caller gave up, its
    /// connection was lost, or the deadline passed). An async handler is
    /// dropped when that happens; one that blocks polls this.
    pub fn is_cancelled(&self) -> bool {
        self.state.reason().is_some()
    }

    /// Completes when the request is cancelled, with why: for a handler
    /// that hands its work to another task and wants to stop it.
    pub async fn cancelled(&self) -> CancelReason {
        self.state.token().cancelled().await
    }

    /// The request's cancellation token, to hand to threads or tasks that
    /// do the handler's work.
    pub fn cancel_token(&self) -> CancelToken {
        self.state.token()
    }

    /// The request's streams, if its caller opened them.
    pub(crate) fn flow(&self) -> Option<&Arc<Flow>> {
        self.state.stream.as_ref()
    }

    /// The engine serving the request.
    pub(crate) fn engine_state(&self) -> &Arc<EngineState> {
        &self.state.engine
    }

    /// The connection the request came on.
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.state.conn
    }

    /// The request's header.
    pub(crate) fn header(&self) -> &Header {
        &self.state.header
    }

    /// Sends `value` back to the caller (postcard-encoded). On a one-way RPC
    /// this does nothing.
    ///
    /// # Errors
    /// [`Error::AlreadyResponded`]; [`Error::Encode`]; a response over the
    /// maximum message size (the caller then gets an error too); connection
    /// errors.
    pub async fn respond<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        if !self.expects_response() {
            return Ok(());
        }
        let header = self.response_header();
        let msg = frame::with_header(&header, |buf| postcard::to_extend(value, buf)).map_err(
            |source| Error::Encode {
                rpc: self.rpc_name().to_owned(),
                what: "response",
                source,
            },
        )?;
        self.send_response(Payload::Message(msg)).await
    }

    /// Sends raw payload bytes back to the caller; see [`Handle::respond`].
    ///
    /// # Errors
    /// See [`Handle::respond`].
    pub async fn respond_raw(&self, payload: &[u8]) -> Result<()> {
        if !self.expects_response() {
            return Ok(());
        }
        self.send_response(Payload::Lent(payload)).await
    }

    fn response_header(&self) -> Header {
        Header {
            kind: Kind::Response,
            flags: 0,
            status: Status::Ok,
            ..self.state.header
        }
    }

    async fn send_response(&self, payload: Payload<'_>) -> Result<()> {
        if !self.state.claim() {
            return Err(self.not_claimed());
        }
        send_claimed(&self.state, payload).await
    }

    /// The error of a second response, or of one after the request was
    /// cancelled.
    fn not_claimed(&self) -> Error {
        if self.state.reason().is_some() {
            Error::Cancelled {
                rpc: self.rpc_name().to_owned(),
                address: self.state.conn.remote().to_string(),
            }
        } else {
            Error::AlreadyResponded {
                rpc: self.rpc_name().to_owned(),
            }
        }
    }

    /// Claims the response now and sends `payload` from a task (for the
    /// blocking API, whose handlers cannot wait for the send).
    pub(crate) fn respond_detached(&self, payload: Vec<u8>) -> Result<()> {
        if !self.expects_response() {
            return Ok(());
        }
        if !self.state.claim() {
            return Err(self.not_claimed());
        }
        if let Some(t) = &self.state.timing {
            t.mark(&t.responded);
        }
        let state = self.state.clone();
        self.state.engine.rt.spawn(async move {
            if let Err(e) = send_claimed(&state, Payload::Owned(payload)).await {
                tracing::warn!(rpc = %state.rpc.name, "cannot send the response: {e}");
            }
        });
        Ok(())
    }

    /// Refuses the request before its handler ran (its arguments, sent by
    /// the bulk path, could not be received): an `Error` frame of
    /// `status` with `payload` goes to the caller (`dispatch.rs`).
    pub(crate) async fn refuse_unstarted(&self, status: Status, payload: &[u8]) {
        let state = &self.state;
        state.set_outcome(Outcome::Invalid);
        if state.claim() {
            let _ = state
                .conn
                .send_error_payload(&state.header, status, payload)
                .await;
        }
    }

    /// The request was cancelled before its handler ran (while its
    /// arguments were being pulled): nothing goes back.
    pub(crate) fn cancel_unstarted(&self, reason: CancelReason) {
        self.state.cancelled(reason);
    }
}

/// A response's payload, as the handler gave it.
enum Payload<'a> {
    /// A whole message: its header, then the payload (the typed API's
    /// encoding, `frame::with_header`).
    Message(Vec<u8>),
    /// Bytes lent by the handler (copied if they travel by the bulk path).
    Lent(&'a [u8]),
    /// Bytes given to the engine.
    Owned(Vec<u8>),
}

impl Payload<'_> {
    /// Payload bytes (the header not counted).
    fn len(&self) -> usize {
        match self {
            Payload::Message(m) => m.len().saturating_sub(frame::HEADER_LEN),
            Payload::Lent(b) => b.len(),
            Payload::Owned(v) => v.len(),
        }
    }

    /// The payload as bytes the engine keeps (a copy only if lent).
    fn into_bytes(self) -> Bytes {
        match self {
            Payload::Message(m) => Bytes::from(m).slice(frame::HEADER_LEN..),
            Payload::Lent(b) => Bytes::copy_from_slice(b),
            Payload::Owned(v) => Bytes::from(v),
        }
    }
}

/// Sends a response whose right to be sent was claimed: in one message,
/// or by the bulk path if it is over the connection's largest
/// ([`send_by_bulk`]).
async fn send_claimed(state: &RequestState, payload: Payload<'_>) -> Result<()> {
    if let Some(flow) = &state.stream {
        // The answer ends the response stream: no item may follow it.
        flow.close_sending(Closed::Done);
    }
    if let Some(t) = &state.timing {
        if t.responded.load(Ordering::Relaxed) == 0 {
            t.mark(&t.responded);
        }
    }
    let len = payload.len();
    let sent = if len.saturating_add(frame::HEADER_LEN) > state.conn.max_message()
        || len as u64 > state.engine.config.max_payload_bytes
    {
        // Rare, and a future of its own: every other response's stays
        // small. (Over max_payload_bytes, it is refused there.)
        Box::pin(send_by_bulk(state, payload)).await
    } else {
        let head = Header {
            kind: Kind::Response,
            flags: 0,
            status: Status::Ok,
            ..state.header
        }
        .encode();
        match &payload {
            // Its header is written already.
            Payload::Message(msg) => state.conn.send(&[msg]).await,
            Payload::Lent(bytes) => state.conn.send(&[&head, bytes]).await,
            Payload::Owned(bytes) => state.conn.send(&[&head, bytes]).await,
        }
    };
    if let Some(t) = &state.timing {
        t.mark(&t.sent);
    }
    match &sent {
        Ok(()) => {
            state.set_outcome(Outcome::Ok);
            state.bytes_out.store(len as u64, Ordering::Relaxed);
        }
        Err(
            Error::Transport(TransportError::MessageTooLarge { .. })
            | Error::TooLarge { .. }
            | Error::BulkInvalid(_),
        ) => {
            state.set_outcome(Outcome::Invalid);
        }
        Err(_) => state.set_outcome(Outcome::ConnectionLost),
    }
    match sent {
        Err(Error::Transport(e @ TransportError::MessageTooLarge { .. })) => {
            let message = format!("the response could not be sent: {e}");
            let _ = state
                .conn
                .send_error(&state.header, Status::HandlerFailed, &message)
                .await;
            Err(Error::Transport(e))
        }
        other => other,
    }
}

/// A response over the connection's largest message: exposed read-only,
/// as it is (a copy only if the handler lent it), held for the caller to
/// pull, and announced by a `Response` with an overflow entry and no
/// payload (`overflow.rs`). One over this engine's `max_payload_bytes` is
/// refused: the caller gets a `TooLarge` error, the handler
/// [`Error::TooLarge`].
async fn send_by_bulk(state: &RequestState, payload: Payload<'_>) -> Result<()> {
    let engine = &state.engine;
    let size = payload.len() as u64;
    let max = engine.config.max_payload_bytes;
    if size > max {
        let why = expose::over_max(max);
        let refusal = expose::too_large(size, max, expose::RESPONSE, &why);
        let _ = state
            .conn
            .send_error_payload(&state.header, Status::TooLarge, &refusal)
            .await;
        return Err(Error::TooLarge {
            what: format!("the response of RPC '{}'", state.rpc.name),
            size,
            max,
            whose: "this engine".to_owned(),
            why,
            response: true,
        });
    }
    let seq = state.header.seq;
    let entry = expose::hold_response(engine, &state.conn, seq, payload.into_bytes())?;
    let header = Header {
        kind: Kind::Response,
        flags: frame::FLAG_EXTENSIONS,
        status: Status::Ok,
        ..state.header
    };
    let block = frame::Extensions {
        overflow: Some(entry),
        ..frame::Extensions::default()
    }
    .block();
    let sent = state.conn.send(&[&header.encode(), &block]).await;
    if sent.is_err() {
        engine.bulk.release_held(state.conn.id, seq);
    }
    sent
}

/// Runs one request's handler, catching its errors and panics, until it
/// ends or the request is cancelled.
pub(crate) async fn run(handler: RawHandler, handle: Handle, payload: Bytes) {
    let state = handle.state.clone();
    let span = tracing::debug_span!(
        "rpc.handle",
        rpc = %state.rpc.name,
        provider = state.header.provider,
        peer = %state.conn.remote(),
        status = tracing::field::Empty,
        duration_us = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    );
    // The clock is read only when the span is recorded somewhere.
    let start = (!span.is_disabled()).then(Instant::now);
    // A caller's trace context: the handler's span is its child.
    let trace = state.trace.as_ref().map(|traced| {
        let own = trace::server_span(&span, &traced.parent);
        let _ = traced.own.set(own);
        own
    });
    let guarded = Guarded {
        state: Some(state),
        start: Some((handler, handle, payload)),
        fut: None,
        cancel: None,
        trace,
    };
    let (mut ended, state) = guarded.instrument(span.clone()).await;
    let Some(state) = state else {
        // Never: the request goes back to `Guarded` after each poll.
        tracing::error!("a handler's request was lost while it ran");
        return;
    };
    if let Ended::Done(_) = ended {
        // It ended without answering after its request was cancelled (a
        // blocking handler that saw its token, or one that returned the
        // error of a call cancelled with it), or past its deadline: the
        // caller has given up, nothing goes back (an error sent now could
        // reach it before its own deadline fires).
        if state.unanswered() {
            if let Some(reason) = state.reason() {
                ended = Ended::Cancelled(reason);
            }
        }
    }
    let (status, done) = match ended {
        Ended::Cancelled(reason) => {
            state.cancelled(reason);
            ("cancelled", false)
        }
        Ended::Done(Ok(Ok(()))) => {
            if !state.expects_response() {
                state.set_outcome(Outcome::Ok);
            }
            ("ok", true)
        }
        Ended::Done(Ok(Err(message))) => {
            state.fail(Status::HandlerFailed, &message).await;
            ("error", true)
        }
        Ended::Done(Err(message)) => {
            tracing::warn!(rpc = %state.rpc.name, "handler panicked: {message}");
            state.fail(Status::HandlerPanicked, &message).await;
            ("panic", true)
        }
    };
    // The common case, answered: one load.
    if done && !state.responded.load(Ordering::Acquire) {
        if Arc::strong_count(&state) > 1 {
            // The handler returned but kept its handle, to respond later
            // (from another task or thread, as the Python binding's
            // handlers do): a `Cancel` must still reach its token.
            state.track();
        } else if state.stream.is_some() && state.claim() {
            // A stream's handler that returned without answering: its
            // response stream ends cleanly, with an empty answer.
            if let Some(flow) = &state.stream {
                flow.close_sending(Closed::Done);
            }
            let end = Header {
                kind: Kind::Response,
                flags: 0,
                status: Status::Ok,
                ..state.header
            };
            let _ = state.conn.send(&[&end.encode()]).await;
            state.set_outcome(Outcome::Ok);
        } else if state.claim() {
            // The handler is done and nobody kept its handle: no response
            // will come.
            let _ = state
                .conn
                .send_error(
                    &state.header,
                    Status::NoResponse,
                    "the handler finished without responding",
                )
                .await;
        }
    }
    if let Some(start) = start {
        span.record("status", status);
        span.record("duration_us", start.elapsed().as_micros() as u64);
    }
}

/// How a handler's run ended.
enum Ended {
    /// It returned (`Ok`), or panicked (`Err(message)`).
    Done(std::result::Result<std::result::Result<(), String>, String>),
    /// The request was cancelled first; the handler's future is dropped.
    Cancelled(CancelReason),
}

/// A handler's work as the engine polls it: made on its first poll (a
/// handler that blocks runs right there), each poll on this thread's
/// record of the request it serves (`cancel.rs`), panics caught, and,
/// once it has to wait, raced against the request's cancellation.
struct Guarded {
    /// The request: lent to this thread's record while the handler runs
    /// (moved, not shared: no reference count to pay), and given back
    /// with the outcome.
    state: Option<Arc<RequestState>>,
    /// The handler and its arguments, until the first poll.
    start: Option<(RawHandler, Handle, Bytes)>,
    /// The handler's future (boxed already: `RawHandler`).
    fut: Option<BoxFuture<'static, std::result::Result<(), String>>>,
    /// Completes when the request is cancelled; made when the handler
    /// first has to wait (one that finishes at once pays nothing for it).
    cancel: Option<BoxFuture<'static, CancelReason>>,
    /// The handler's trace context, in scope while it is polled
    /// (`trace.rs`): its calls carry it.
    trace: Option<TraceContext>,
}

impl Future for Guarded {
    type Output = (Ended, Option<Arc<RequestState>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(state) = this.state.take() else {
            return Poll::Ready((Ended::Done(Ok(Ok(()))), None));
        };
        // Cancelled (or out of time) before its first poll, while it
        // waited for its turn: it never runs. Cancelled while it waited:
        // it is not polled again, even if what woke it was that same
        // cancellation — a call it made, which inherited the request's
        // deadline or is cancelled with it, would end it with that call's
        // error first, as if the handler had failed.
        if let Some(reason) = state.reason() {
            return Poll::Ready((Ended::Cancelled(reason), Some(state)));
        }
        if this.start.is_some() {
            state.mark_started();
        }
        let (start, fut) = (&mut this.start, &mut this.fut);
        let mut serving: Option<Arc<dyn Serving>> = Some(state);
        let polled = trace::enter(this.trace, || {
            cancel::enter(&mut serving, || {
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    if let Some((handler, handle, payload)) = start.take() {
                        *fut = Some(handler(handle, payload));
                    }
                    match fut.as_mut() {
                        Some(f) => f.as_mut().poll(cx),
                        None => Poll::Ready(Ok(())),
                    }
                }))
            })
        });
        let state = serving.and_then(|s| s.into_any().downcast::<RequestState>().ok());
        match polled {
            Ok(Poll::Ready(r)) => return Poll::Ready((Ended::Done(Ok(r)), state)),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                return Poll::Ready((Ended::Done(Err(message)), state));
            }
            Ok(Poll::Pending) => {}
        }
        let Some(state) = state else {
            return Poll::Ready((Ended::Done(Ok(Ok(()))), None));
        };
        let cancel = this.cancel.get_or_insert_with(|| {
            state.track();
            let token = state.token();
            Box::pin(async move { token.cancelled().await })
        });
        let reason = cancel.as_mut().poll(cx);
        match reason {
            Poll::Ready(reason) => Poll::Ready((Ended::Cancelled(reason), Some(state))),
            Poll::Pending => {
                this.state = Some(state);
                Poll::Pending
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_exact;

    #[test]
    fn leftover_bytes_are_a_type_mismatch() {
        assert_eq!(decode_exact::<u64>(&[5]), Ok(5));
        // A string where a number is expected: its length decodes as the
        // number, its bytes are left over.
        let text = postcard::to_allocvec("notanumber").unwrap();
        let err = decode_exact::<u64>(&text).unwrap_err();
        assert!(err.contains("type mismatch: 10 of 11 bytes"), "{err}");
        assert!(decode_exact::<String>(&[]).is_err());
    }
}
