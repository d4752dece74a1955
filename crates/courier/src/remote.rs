//! Client side of an RPC: remote functions and the calls made through them.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use crate::address::Address;
use crate::call::{self, Body};
use crate::cancel::{self, CancelToken};
use crate::error::{Error, Result};
use crate::frame::{self, Extensions, Header, Kind, Status, FLAG_NO_RESPONSE};
use crate::handler::decode_exact;
use crate::overflow::expose;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::stats::record::{Outcome, RpcRecord, Side};
use crate::stream::{self, Opening, RawStreamCall, StreamCall};
use crate::timeouts::{self, Deadline};
use crate::trace::{self, TraceContext};

/// A remote function on raw payload bytes; see [`RemoteFunction`] for the
/// typed one. Made by [`Engine::remote_raw`](crate::Engine::remote_raw).
#[derive(Clone)]
pub struct RawRemoteFunction {
    state: Arc<EngineState>,
    name: Arc<str>,
    id: u64,
    /// The statistics of calls to provider 0, the common target (others
    /// are looked up when a callable is made).
    stats: Arc<RpcRecord>,
    disable_response: bool,
    idempotent: bool,
    timeout: Option<Duration>,
}

impl fmt::Debug for RawRemoteFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRemoteFunction")
            .field("name", &self.name)
            .field("disable_response", &self.disable_response)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RawRemoteFunction {
    pub(crate) fn new(state: Arc<EngineState>, name: &str) -> Self {
        let id = frame::rpc_id(name);
        Self {
            stats: state.stats.rpc(name, id, 0),
            state,
            name: name.into(),
            id,
            disable_response: false,
            idempotent: false,
            timeout: None,
        }
    }

    /// The RPC's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares the RPC idempotent on this side (it should be registered
    /// so at the server too, [`RpcOptions::idempotent`](crate::RpcOptions::idempotent)):
    /// [`Error::is_retry_safe`] of a failed call may then say yes even if
    /// the request reached the handler. Courier never retries by itself.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Whether calls are declared idempotent.
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The RPC's id (see [`frame::rpc_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Makes calls one-way: they return once the request is sent, and the
    /// server sends nothing back (Margo's `disable_response`).
    #[must_use]
    pub fn disable_response(mut self) -> Self {
        self.disable_response = true;
        self
    }

    /// Whether calls are one-way.
    pub fn is_response_disabled(&self) -> bool {
        self.disable_response
    }

    /// A timeout for every call made through this function (overrides the
    /// engine's `timeouts.call_ms`; a callable's own timeout overrides it).
    #[must_use]
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Targets provider 0 at `address`.
    pub fn on(&self, address: &Address) -> RawCallable {
        self.on_provider(address, 0)
    }

    /// Targets provider `provider_id` at `address`.
    pub fn on_provider(&self, address: &Address, provider_id: u16) -> RawCallable {
        let mut function = self.clone();
        if provider_id != 0 {
            function.stats = self.state.stats.rpc(&self.name, self.id, provider_id);
        }
        RawCallable {
            function,
            peer: address.peer.clone(),
            provider: provider_id,
            timeout: None,
            trace: None,
        }
    }
}

/// A raw remote function bound to an address and provider, ready to call.
#[derive(Clone)]
pub struct RawCallable {
    function: RawRemoteFunction,
    peer: Arc<Peer>,
    provider: u16,
    timeout: Option<Duration>,
    /// The trace context its calls carry, if set (`trace.rs`).
    trace: Option<TraceContext>,
}

impl fmt::Debug for RawCallable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCallable")
            .field("rpc", &self.function.name)
            .field("address", &self.peer.addr.to_string())
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .field("trace", &self.trace)
            .finish()
    }
}

impl RawCallable {
    /// A timeout for calls through this callable.
    #[must_use]
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// The trace context calls through this callable carry to the server
    /// (its span is the parent of the handler's), instead of the one they
    /// would find in their scope or handler ([`crate::trace`]).
    #[must_use]
    pub fn trace(mut self, ctx: TraceContext) -> Self {
        self.trace = Some(ctx);
        self
    }

    /// The target address, as a string.
    pub fn address(&self) -> String {
        self.peer.addr.to_string()
    }

    /// Calls the RPC with a raw payload and returns the raw response (empty
    /// for a one-way call).
    ///
    /// Awaited by a handler, the call inherits that request's deadline
    /// unless it has a timeout of its own, and is cancelled with it
    /// ([`Error::Cancelled`]); a call polled elsewhere (a task the handler
    /// spawned) inherits nothing, unless it runs under
    /// [`CancelToken::in_scope`]. Dropping the future before the answer
    /// tells the server, whose handler is then cancelled.
    ///
    /// It carries a W3C trace context to the server if it has one: its
    /// own ([`RawCallable::trace`]), else its scope's
    /// ([`trace::in_context`]) or that of the handler making it (see
    /// [`crate::trace`]).
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::DeadlineExceeded`], [`Error::Busy`],
    /// [`Error::NoSuchRpc`], [`Error::Remote`], [`Error::RemotePanic`],
    /// [`Error::NoResponse`], [`Error::OneWay`], [`Error::Cancelled`],
    /// [`Error::ConnectionLost`], [`Error::Finalized`], [`Error::TooLarge`]
    /// (the arguments over this engine's or the server's
    /// `max_payload_bytes`, the response over this engine's),
    /// [`Error::BulkRefused`] (a payload by the bulk path could not be
    /// pulled), transport errors (refused; a one-way request's message too
    /// large). [`Error::reach`] says whether the request can have reached
    /// the handler.
    ///
    /// A payload over the connection's largest message travels by the
    /// bulk path on its own, copied once into memory the engine keeps
    /// while the call lasts (see [`RawCallable::call_bytes`] for no copy);
    /// one over `max_payload_bytes` fails with [`Error::TooLarge`],
    /// unsent (`docs/bulk.md`, "Payloads of any size").
    pub async fn call(&self, payload: &[u8]) -> Result<Bytes> {
        // The request being served where the call is first polled.
        self.invoke(Body::Parts(&[payload]), cancel::current())
            .await
    }

    /// [`RawCallable::call`] with a payload the engine may keep: one over
    /// the connection's largest message is exposed as it is, without a
    /// copy, while the server pulls it.
    ///
    /// # Errors
    /// See [`RawCallable::call`].
    pub async fn call_bytes(&self, payload: Bytes) -> Result<Bytes> {
        self.invoke(Body::Shared(&payload), cancel::current()).await
    }

    pub(crate) fn rpc_name(&self) -> &str {
        &self.function.name
    }

    /// Opens a stream call with a raw payload as its arguments: the
    /// handler reads request items, sends response items, or both
    /// ([`crate::stream`]). Returns once the request is sent.
    ///
    /// Its deadline (the callable's timeout, else the function's, else
    /// the engine's `timeouts.call_ms` or the one inherited from a
    /// handler) bounds the whole stream, as for a call.
    ///
    /// # Errors
    /// [`Error::DeadlineExceeded`], [`Error::Timeout`], connection errors,
    /// arguments over the largest message.
    pub async fn stream(&self, payload: &[u8]) -> Result<RawStreamCall> {
        self.open_stream(Body::Parts(&[payload]), cancel::current())
            .await
    }

    pub(crate) async fn open_stream(
        &self,
        body: Body<'_>,
        inherited: Option<CancelToken>,
    ) -> Result<RawStreamCall> {
        let f = &self.function;
        let opening = Opening {
            state: &f.state,
            peer: &self.peer,
            rpc: f.name.clone(),
            header: self.request_header(),
            deadline: self.deadline(inherited.as_ref()),
            ext: Extensions {
                trace: self.trace.or_else(trace::current),
                ..Extensions::default()
            },
            stats: f.stats.clone(),
        };
        stream::open(opening, body).await
    }

    /// The deadline of a call made now: its own timeout, else its
    /// function's, else the engine's or the one `inherited` from the
    /// request whose handler makes it (`timeouts.rs`).
    fn deadline(&self, inherited: Option<&CancelToken>) -> Deadline {
        let f = &self.function;
        timeouts::call(
            &f.state.config.timeouts,
            self.timeout,
            f.timeout,
            inherited.and_then(CancelToken::deadline),
        )
    }

    /// The header of a request of this callable (its sequence is set
    /// when it is sent).
    fn request_header(&self) -> Header {
        Header {
            kind: Kind::Request,
            flags: 0,
            status: Status::Ok,
            provider: self.provider,
            rpc: self.function.id,
            seq: 0,
        }
    }

    /// Sends the request and interprets its answer: the client side of
    /// every RPC, typed or raw, blocking or not.
    pub(crate) async fn invoke(
        &self,
        body: Body<'_>,
        inherited: Option<CancelToken>,
    ) -> Result<Bytes> {
        let f = &self.function;
        let deadline = self.deadline(inherited.as_ref());
        let size = body.len() as u64;
        let max = f.state.config.max_payload_bytes;
        if size > max {
            f.stats.client.refused(Outcome::Invalid, 0);
            return Err(Error::TooLarge {
                what: format!("the arguments of RPC '{}'", f.name),
                size,
                max,
                whose: "this engine".to_owned(),
                why: expose::over_max(max),
                response: false,
            });
        }
        if deadline.passed() {
            // A zero budget, or an inherited one spent: nothing is sent.
            f.stats.client.refused(Outcome::Deadline, 0);
            return Err(Error::DeadlineExceeded {
                rpc: f.name.to_string(),
                address: self.peer.addr.to_string(),
            });
        }
        let span = tracing::debug_span!(
            "rpc.call",
            rpc = %f.name,
            provider = self.provider,
            peer = %self.peer.addr,
            status = tracing::field::Empty,
            duration_us = tracing::field::Empty,
        );
        // The clock is read only when the span is recorded somewhere.
        let start = (!span.is_disabled()).then(Instant::now);
        let mut header = self.request_header();
        let expired = timeouts::expired_call(&f.name, &self.peer.addr);
        // Counted as cancelled if the call's future is dropped first.
        let counted = Counted::start(&f.stats.client, body.len(), f.state.stats.now());
        if f.disable_response {
            header.flags = FLAG_NO_RESPONSE;
        }
        // Its own trace context, else its scope's or its handler's (one
        // thread-local read), else none.
        let ext = Extensions {
            trace: self.trace.or_else(trace::current),
            ..Extensions::default()
        };
        // The span wraps the call only when it is recorded somewhere: a
        // wrapper is one more move of the call's future on every call.
        let work = call::exchange(&f.state, &self.peer, header, body, deadline, expired, &ext);
        let answer = match (&inherited, start) {
            (None, None) => work.await,
            (None, Some(_)) => work.instrument(span.clone()).await,
            // Made for a request: cancelled with it, which drops the call
            // (and tells its server) even where the request's handler is
            // not what polls it. Boxed: the race is no part of the future
            // of a call made outside a handler.
            (Some(token), _) => {
                let cancelled = || Error::Cancelled {
                    rpc: f.name.to_string(),
                    address: self.peer.addr.to_string(),
                };
                Box::pin(until_cancelled(
                    work.instrument(span.clone()),
                    token,
                    cancelled,
                ))
                .await
            }
        };
        let result = answer.and_then(|reply| match reply {
            // One-way: nothing comes back.
            None => Ok(Bytes::new()),
            Some((reply, payload)) => self.interpret(reply, payload),
        });
        counted.end(match &result {
            Ok(response) => (Outcome::Ok, response.len()),
            Err(e) => (Outcome::of_error(e), 0),
        });
        if let Some(start) = start {
            span.record("status", if result.is_ok() { "ok" } else { "error" });
            span.record("duration_us", start.elapsed().as_micros() as u64);
        }
        result
    }

    fn interpret(&self, reply: Header, payload: Bytes) -> Result<Bytes> {
        call::interpret(
            reply,
            payload,
            &self.function.name,
            self.provider,
            &self.peer.addr,
            self.function.state.config.max_payload_bytes,
        )
    }
}

/// A call counted in its RPC's statistics (client side): started when
/// made, ended with its outcome, or as cancelled if dropped before.
struct Counted<'a> {
    side: &'a Side,
    bytes_out: usize,
    started: Option<Instant>,
    ended: bool,
}

impl<'a> Counted<'a> {
    fn start(side: &'a Side, bytes_out: usize, started: Option<Instant>) -> Self {
        side.begin();
        Self {
            side,
            bytes_out,
            started,
            ended: false,
        }
    }

    fn end(mut self, (outcome, bytes_in): (Outcome, usize)) {
        self.ended = true;
        self.record(outcome, bytes_in);
    }

    fn record(&self, outcome: Outcome, bytes_in: usize) {
        let phases = self.started.map(|t| [Some(t.elapsed())]);
        self.side.end(
            outcome,
            bytes_in as u64,
            self.bytes_out as u64,
            phases.as_ref().map_or(&[][..], |p| &p[..]),
        );
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.record(Outcome::Cancelled, 0);
        }
    }
}

/// Runs `work` until `token` fires; then drops it, and the result is
/// `cancelled()`.
async fn until_cancelled<T>(
    work: impl Future<Output = Result<T>>,
    token: &CancelToken,
    cancelled: impl FnOnce() -> Error,
) -> Result<T> {
    tokio::select! {
        biased;
        r = work => r,
        _ = token.fired_reason() => Err(cancelled()),
    }
}

/// A typed remote function: calls RPC `name` with arguments of type `A`
/// and decodes responses of type `R` (PyMargo's `RemoteFunction`).
///
/// Made by [`Engine::remote`](crate::Engine::remote); bind it to an address
/// with [`RemoteFunction::on`], then [`Callable::call`].
pub struct RemoteFunction<A: ?Sized, R> {
    raw: RawRemoteFunction,
    _types: PhantomData<fn(&A) -> R>,
}

impl<A: ?Sized, R> Clone for RemoteFunction<A, R> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _types: PhantomData,
        }
    }
}

impl<A: ?Sized, R> fmt::Debug for RemoteFunction<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RemoteFunction").field(&self.raw).finish()
    }
}

impl<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned> RemoteFunction<A, R> {
    pub(crate) fn new(raw: RawRemoteFunction) -> Self {
        Self {
            raw,
            _types: PhantomData,
        }
    }

    /// The RPC's name.
    pub fn name(&self) -> &str {
        self.raw.name()
    }

    /// The untyped function underneath.
    pub fn raw(&self) -> &RawRemoteFunction {
        &self.raw
    }

    /// A timeout for every call made through this function.
    #[must_use]
    pub fn timeout(self, after: Duration) -> Self {
        Self::new(self.raw.timeout(after))
    }

    /// Declares the RPC idempotent; see [`RawRemoteFunction::idempotent`].
    #[must_use]
    pub fn idempotent(self) -> Self {
        Self::new(self.raw.idempotent())
    }

    /// Targets provider 0 at `address`.
    pub fn on(&self, address: &Address) -> Callable<A, R> {
        self.on_provider(address, 0)
    }

    /// Targets provider `provider_id` at `address`.
    pub fn on_provider(&self, address: &Address, provider_id: u16) -> Callable<A, R> {
        Callable {
            raw: self.raw.on_provider(address, provider_id),
            _types: PhantomData,
        }
    }
}

impl<A: serde::Serialize + ?Sized> RemoteFunction<A, ()> {
    /// Makes calls one-way (Margo's `disable_response`): `call` returns once
    /// the request is sent. Only for functions whose response type is `()`.
    #[must_use]
    pub fn disable_response(self) -> Self {
        Self::new(self.raw.disable_response())
    }
}

/// A typed remote function bound to an address and provider.
pub struct Callable<A: ?Sized, R> {
    raw: RawCallable,
    _types: PhantomData<fn(&A) -> R>,
}

impl<A: ?Sized, R> Clone for Callable<A, R> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _types: PhantomData,
        }
    }
}

impl<A: ?Sized, R> fmt::Debug for Callable<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Callable").field(&self.raw).finish()
    }
}

impl<A: serde::Serialize + ?Sized, R: serde::de::DeserializeOwned> Callable<A, R> {
    /// A timeout for calls through this callable ([`Error::Timeout`] past it).
    #[must_use]
    pub fn timeout(self, after: Duration) -> Self {
        Self {
            raw: self.raw.timeout(after),
            _types: PhantomData,
        }
    }

    /// The trace context calls through this callable carry; see
    /// [`RawCallable::trace`].
    #[must_use]
    pub fn trace(self, ctx: TraceContext) -> Self {
        Self {
            raw: self.raw.trace(ctx),
            _types: PhantomData,
        }
    }

    /// Calls the RPC and decodes its response. Awaited by a handler, the
    /// call inherits the request's deadline and cancellation (see
    /// [`RawCallable::call`]).
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::Decode`], and those of [`RawCallable::call`].
    pub async fn call(&self, args: &A) -> Result<R> {
        let (_, mut msg) = self.encoded(args)?;
        let payload = self
            .raw
            .invoke(Body::Encoded(&mut msg), cancel::current())
            .await?;
        decode_response(self.rpc_name(), &payload)
    }

    pub(crate) fn rpc_name(&self) -> &str {
        self.raw.rpc_name()
    }

    /// Opens a stream call: request items of type `S`, response items of
    /// type `I`, and the handler's answer of type `R` at its end
    /// ([`crate::stream`] has an example). Returns once the request is
    /// sent; see [`RawCallable::stream`].
    ///
    /// # Errors
    /// [`Error::Encode`], and see [`RawCallable::stream`].
    pub async fn stream<S, I>(&self, args: &A) -> Result<StreamCall<S, I, R>>
    where
        S: serde::Serialize + ?Sized,
        I: serde::de::DeserializeOwned,
    {
        let (raw, mut msg) = self.encoded(args)?;
        let call = raw
            .open_stream(Body::Encoded(&mut msg), cancel::current())
            .await?;
        Ok(StreamCall::new(call))
    }

    /// The raw callable and a request message holding the encoded arguments.
    pub(crate) fn encoded(&self, args: &A) -> Result<(RawCallable, Vec<u8>)> {
        let placeholder = Header::new(Kind::Request);
        let msg = frame::with_header(&placeholder, |buf| postcard::to_extend(args, buf)).map_err(
            |source| Error::Encode {
                rpc: self.rpc_name().to_owned(),
                what: "arguments",
                source,
            },
        )?;
        Ok((self.raw.clone(), msg))
    }
}

/// Decodes a response of RPC `rpc`, all of it.
///
/// # Errors
/// [`Error::Decode`] when the bytes are not one `R` (bytes left over are a
/// type mismatch too).
pub(crate) fn decode_response<R: serde::de::DeserializeOwned>(
    rpc: &str,
    payload: &[u8],
) -> Result<R> {
    decode_exact(payload).map_err(|reason| Error::Decode {
        rpc: rpc.to_owned(),
        what: "response",
        reason,
    })
}
