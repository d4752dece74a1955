//! Client side of an RPC: remote functions and the calls made through them.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use crate::address::{Address, Peer};
use crate::conn::Conn;
use crate::engine::Inner;
use crate::frame::{self, Header, Kind, Status, FLAG_NO_RESPONSE};
use crate::{Error, Result};

/// Removes a call from its connection's table when the call ends, however
/// it ends (response, error, timeout, or the future being dropped).
pub(crate) struct ForgetOnDrop<'a> {
    pub(crate) conn: &'a Conn,
    pub(crate) seq: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.conn.forget_call(self.seq);
    }
}

/// A remote function on raw payload bytes; see [`RemoteFunction`] for the
/// typed one. Made by [`Engine::remote_raw`](crate::Engine::remote_raw).
#[derive(Clone)]
pub struct RawRemoteFunction {
    inner: Arc<Inner>,
    name: Arc<str>,
    id: u64,
    disable_response: bool,
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
    pub(crate) fn new(inner: Arc<Inner>, name: &str) -> Self {
        Self {
            inner,
            name: name.into(),
            id: frame::rpc_id(name),
            disable_response: false,
            timeout: None,
        }
    }

    /// The RPC's name.
    pub fn name(&self) -> &str {
        &self.name
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
    /// engine's `default_timeout_ms`; a callable's own timeout overrides it).
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
        RawCallable {
            function: self.clone(),
            peer: address.peer.clone(),
            provider: provider_id,
            timeout: None,
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
}

impl fmt::Debug for RawCallable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCallable")
            .field("rpc", &self.function.name)
            .field("address", &self.peer.addr.to_string())
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A request message: raw payload bytes, or a buffer that already holds
/// header space and the encoded arguments.
pub(crate) enum Request<'a> {
    Raw(&'a [u8]),
    Encoded(Vec<u8>),
}

impl RawCallable {
    /// A timeout for calls through this callable.
    #[must_use]
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// The target address, as a string.
    pub fn address(&self) -> String {
        self.peer.addr.to_string()
    }

    /// Calls the RPC with a raw payload and returns the raw response (empty
    /// for a one-way call).
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::NoSuchRpc`], [`Error::Remote`],
    /// [`Error::RemotePanic`], [`Error::NoResponse`], [`Error::OneWay`],
    /// [`Error::ConnectionLost`], [`Error::Finalized`], transport errors
    /// (refused, message too large).
    pub async fn call(&self, payload: &[u8]) -> Result<Bytes> {
        self.invoke(Request::Raw(payload)).await
    }

    pub(crate) fn rpc_name(&self) -> &str {
        &self.function.name
    }

    pub(crate) async fn invoke(&self, request: Request<'_>) -> Result<Bytes> {
        let f = &self.function;
        let inner = &f.inner;
        let timeout = self
            .timeout
            .or(f.timeout)
            .or_else(|| inner.config.default_timeout());
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
        let work = self.exchange(request);
        let result = match timeout {
            None => work.instrument(span.clone()).await,
            Some(after) => match tokio::time::timeout(after, work)
                .instrument(span.clone())
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    rpc: f.name.to_string(),
                    address: self.peer.addr.to_string(),
                    after,
                }),
            },
        };
        if let Some(start) = start {
            span.record("status", if result.is_ok() { "ok" } else { "error" });
            span.record("duration_us", start.elapsed().as_micros() as u64);
        }
        result
    }

    async fn exchange(&self, request: Request<'_>) -> Result<Bytes> {
        let f = &self.function;
        let conn = f.inner.connection_for(&self.peer).await?;
        let mut header = Header {
            kind: Kind::Request,
            flags: 0,
            status: Status::Ok,
            provider: self.provider,
            rpc: f.id,
            seq: 0,
        };
        if f.disable_response {
            header.flags = FLAG_NO_RESPONSE;
            header.seq = conn.next_seq();
            send_request(&conn, &header, request).await?;
            return Ok(Bytes::new());
        }
        let (seq, rx) = conn.register_call()?;
        let _forget = ForgetOnDrop { conn: &conn, seq };
        header.seq = seq;
        send_request(&conn, &header, request).await?;
        let (reply, payload) = rx.await.map_err(|_| conn.lost())?;
        self.interpret(reply, payload)
    }

    fn interpret(&self, reply: Header, payload: Bytes) -> Result<Bytes> {
        let rpc = self.function.name.to_string();
        let address = self.peer.addr.to_string();
        let message = || String::from_utf8_lossy(&payload).into_owned();
        match (reply.kind, reply.status) {
            (Kind::Response, _) => Ok(payload),
            (Kind::Error, Status::NoSuchRpc) => Err(Error::NoSuchRpc {
                rpc,
                provider: self.provider,
                address,
            }),
            (Kind::Error, Status::HandlerFailed | Status::BadRequest) => Err(Error::Remote {
                rpc,
                address,
                message: message(),
            }),
            (Kind::Error, Status::HandlerPanicked) => Err(Error::RemotePanic {
                rpc,
                address,
                message: message(),
            }),
            (Kind::Error, Status::NoResponse) => Err(Error::NoResponse { rpc, address }),
            (Kind::Error, Status::OneWay) => Err(Error::OneWay {
                rpc,
                provider: self.provider,
                address,
            }),
            (Kind::Error, Status::Finalizing) => Err(Error::RemoteFinalizing { address }),
            (kind, status) => Err(Error::Protocol {
                address,
                reason: format!("a {kind:?} frame with status {status:?} answered a request"),
            }),
        }
    }
}

async fn send_request(conn: &Conn, header: &Header, request: Request<'_>) -> Result<()> {
    match request {
        Request::Raw(payload) => conn.send(&[&header.encode(), payload]).await,
        Request::Encoded(mut msg) => {
            frame::set_header(&mut msg, header);
            conn.send(&[&msg]).await
        }
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

    /// Calls the RPC and decodes its response.
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::Decode`], and those of [`RawCallable::call`].
    pub async fn call(&self, args: &A) -> Result<R> {
        let (_, msg) = self.encoded(args)?;
        let payload = self.raw.invoke(Request::Encoded(msg)).await?;
        postcard::from_bytes(&payload).map_err(|source| Error::Decode {
            rpc: self.rpc_name().to_owned(),
            what: "response",
            source,
        })
    }

    pub(crate) fn rpc_name(&self) -> &str {
        self.raw.rpc_name()
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
