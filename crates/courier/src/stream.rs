//! Streams: RPCs whose caller sends a stream of items, receives one, or
//! both, with flow control (`docs/streams.md`).
//!
//! A stream is an RPC call opened with [`Callable::stream`](crate::Callable::stream) (typed) or
//! [`RawCallable::stream`](crate::RawCallable::stream) (raw bytes) instead of `call`. Its handler is an
//! ordinary handler, registered as any other: it reads the caller's items
//! with [`Handle::recv_item`], sends its own with [`Handle::send_item`],
//! and ends the call as any handler does — by responding, by returning
//! (an empty response), or by failing (the caller's next read returns the
//! error, after the items sent before it). So one RPC can be
//! server-streaming (the handler sends items), client-streaming (the
//! caller does), or bidirectional (both, at once).
//!
//! Each direction has its own flow control: a receiver grants credit
//! (`streams.window_bytes`, 4 MiB by default), and a producer whose credit
//! is used up waits in `send` until its consumer takes items. A slow
//! consumer slows its producer down; memory stays bounded by the window
//! (plus one item).
//!
//! Either side can cancel: a caller that drops its [`StreamCall`] (or whose
//! deadline passes) cancels the handler, whose next stream operation
//! returns [`Error::Cancelled`] (an async handler's future is dropped); a
//! caller can also abort its request stream with a message
//! ([`StreamCall::abort`]), which the handler reads as
//! [`Error::StreamAborted`]. A handler cancels by failing.
//!
//! ```
//! use courier::{Engine, Handle};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> courier::Result<()> {
//! let server = Engine::builder("mem").build().await?;
//! // Server-streaming: the numbers below `n`, one item each.
//! server.register("count", |h: Handle, n: u32| async move {
//!     for i in 0..n {
//!         h.send_item(&i).await?;
//!     }
//!     Ok::<(), courier::Error>(())
//! })?;
//! // Client-streaming: the sum of the caller's items.
//! server.register("sum", |h: Handle, (): ()| async move {
//!     let mut total = 0u64;
//!     while let Some(x) = h.recv_item::<u64>().await? {
//!         total += x;
//!     }
//!     h.respond(&total).await
//! })?;
//!
//! let client = Engine::builder("mem").client().build().await?;
//! let addr = client.lookup(&server.address().to_string()).await?;
//!
//! let count = client.remote::<u32, ()>("count");
//! let mut stream = count.on(&addr).stream::<(), u32>(&5).await?;
//! let mut got = Vec::new();
//! while let Some(i) = stream.recv().await? {
//!     got.push(i);
//! }
//! stream.finish().await?;
//! assert_eq!(got, [0, 1, 2, 3, 4]);
//!
//! let sum = client.remote::<(), u64>("sum");
//! let mut stream = sum.on(&addr).stream::<u64, ()>(&()).await?;
//! for x in 1..=100 {
//!     stream.send(&x).await?;
//! }
//! assert_eq!(stream.finish().await?, 5050);
//! # client.finalize().await; server.finalize().await;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{poll_fn, Future};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::bulk::handle::Bulk;
use crate::call::{self, Body};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::flow::{Closed, End, Flow, Taken};
use crate::frame::{self, Extensions, Header, Kind, Status, HEADER_LEN};
use crate::handler::{decode_exact, Handle};
use crate::overflow::expose;
use crate::paths::AddressSet;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::stats::record::{Outcome, RpcRecord};
use crate::timeouts::Deadline;

/// What opening a stream needs from its callable (`remote.rs`).
pub(crate) struct Opening<'a> {
    pub(crate) state: &'a Arc<EngineState>,
    pub(crate) peer: &'a Arc<Peer>,
    pub(crate) rpc: Arc<str>,
    pub(crate) header: Header,
    pub(crate) deadline: Deadline,
    pub(crate) ext: Extensions,
    pub(crate) stats: Arc<RpcRecord>,
}

/// Opens a stream: the connection, the flow in its table, the request
/// (with the stream extension, the credit for the response stream).
///
/// # Errors
/// [`Error::DeadlineExceeded`] (a spent budget: nothing sent), connection
/// errors, arguments over `max_payload_bytes`.
pub(crate) async fn open(opening: Opening<'_>, body: Body<'_>) -> Result<RawStreamCall> {
    let Opening {
        state,
        peer,
        rpc,
        mut header,
        deadline,
        mut ext,
        stats,
    } = opening;
    if deadline.passed() {
        stats.client.refused(Outcome::Deadline, 0);
        return Err(Error::DeadlineExceeded {
            rpc: rpc.to_string(),
            address: peer.addr.to_string(),
        });
    }
    let limit = deadline.limit();
    let bytes_out = body.len() as u64;
    let max = state.config.max_payload_bytes;
    if bytes_out > max {
        stats.client.refused(Outcome::Invalid, 0);
        return Err(Error::TooLarge {
            what: format!("the arguments of RPC '{rpc}'"),
            size: bytes_out,
            max,
            whose: "this engine".to_owned(),
            why: expose::over_max(max),
            response: false,
        });
    }
    let opened = async {
        let conn = state.connection_for(peer).await?;
        let window = state.config.streams.window_bytes;
        let (seq, flow) = conn.open_stream(window, state.stats.streams.clone())?;
        header.seq = seq;
        ext.stream = Some(window);
        // Arguments over the largest message wait to be pulled (as a
        // call's do, `overflow.rs`), exposed while the call lives.
        let (body, exposed) = if expose::over(&conn, body.len(), limit.is_some(), &ext) {
            let (exposed, entry) = expose::expose(state, body.into_bytes())?;
            ext.overflow = Some(entry);
            (Body::EMPTY, Some(exposed))
        } else {
            (body, None)
        };
        stats.client.begin();
        let core = Arc::new(Core {
            conn: conn.clone(),
            flow,
            header,
            rpc: rpc.clone(),
            address: peer.addr.clone(),
            deadline: limit,
            max_item: max_item(state, &conn),
            max_payload: state.config.max_payload_bytes,
            stats: stats.clone(),
            outcome: AtomicU8::new(Outcome::Cancelled as u8),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(bytes_out),
            _exposed: exposed,
        });
        // Sent by the caller's future: dropped part way, the core's drop
        // forgets the stream and tells the peer.
        body.send(&conn, &header, false, limit.map(|(at, _)| at), &ext)
            .await?;
        Ok::<_, Error>(core)
    };
    let core = match limit {
        None => opened.await?,
        Some((at, after)) => match tokio::time::timeout_at(at.into(), opened).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    rpc: rpc.to_string(),
                    address: peer.addr.to_string(),
                    after,
                })
            }
        },
    };
    Ok(RawStreamCall {
        receiver: RawStreamReceiver {
            core: core.clone(),
            sleep: None,
        },
        sender: RawStreamSender {
            core,
            closed: false,
        },
    })
}

/// The largest item this engine sends on `conn`: `streams.max_item_bytes`,
/// at most the connection's largest message less the header.
fn max_item(state: &EngineState, conn: &Conn) -> u64 {
    let medium = conn.max_message().saturating_sub(HEADER_LEN) as u64;
    state
        .config
        .streams
        .max_item_bytes
        .map_or(medium, |m| m.min(medium))
}

/// What both halves of a caller's stream share; dropped with the last of
/// them, it forgets the stream (telling the handler, if its answer has not
/// come: the handler is cancelled).
struct Core {
    conn: Arc<Conn>,
    flow: Arc<Flow>,
    /// The request's header (its sequence, provider and RPC id).
    header: Header,
    rpc: Arc<str>,
    address: AddressSet,
    /// The call's deadline and the duration it was set from.
    deadline: Option<(Instant, Duration)>,
    max_item: u64,
    /// This engine's `max_payload_bytes` (an answer by the bulk path over
    /// it is not pulled).
    max_payload: u64,
    stats: Arc<RpcRecord>,
    /// How the call ended ([`Outcome`]), for the statistics.
    outcome: AtomicU8,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// The arguments, while the handler's engine may pull them (when
    /// they were over the largest message).
    _exposed: Option<Bulk>,
}

impl Drop for Core {
    fn drop(&mut self) {
        // Ended here (answer or lost connection): forgotten; not ended:
        // the handler is told to stop.
        let ended = self.flow.ended();
        self.conn.close_stream(self.header.seq, !ended);
        let outcome = Outcome::from_u8(*self.outcome.get_mut());
        self.stats.client.end(
            outcome,
            *self.bytes_in.get_mut(),
            *self.bytes_out.get_mut(),
            &[],
        );
    }
}

impl Core {
    /// Runs `work` within the call's deadline.
    async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T> {
        match self.deadline {
            None => Ok(work.await),
            Some((at, after)) => tokio::time::timeout_at(at.into(), work)
                .await
                .map_err(|_| self.timed_out(after)),
        }
    }

    fn timed_out(&self, after: Duration) -> Error {
        self.outcome
            .store(Outcome::Deadline as u8, Ordering::Relaxed);
        Error::Timeout {
            rpc: self.rpc.to_string(),
            address: self.address.to_string(),
            after,
        }
    }

    /// Sends an item (`parts` after the header: `len` bytes), once there
    /// is credit for it.
    async fn send_item(&self, msg: Item<'_>) -> Result<()> {
        let len = msg.len();
        if len as u64 > self.max_item {
            return Err(Error::StreamItemTooLarge {
                rpc: self.rpc.to_string(),
                size: len as u64,
                max: self.max_item,
            });
        }
        let credit = match self.flow.try_credit(len) {
            Some(r) => r,
            None => {
                self.within(poll_fn(|cx| self.flow.poll_credit(cx, len)))
                    .await?
            }
        };
        credit.map_err(|closed| self.closed(closed))?;
        let header = Header {
            kind: Kind::RequestItem,
            flags: 0,
            status: Status::Ok,
            ..self.header
        };
        self.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
        msg.send(&self.conn, &header).await
    }

    fn closed(&self, closed: Closed) -> Error {
        match closed {
            Closed::Done => Error::StreamEnded {
                rpc: self.rpc.to_string(),
                side: "request",
                why: "this caller closed it",
            },
            Closed::PeerFinished => Error::StreamEnded {
                rpc: self.rpc.to_string(),
                side: "request",
                why: "the handler has answered (its answer is in `finish`)",
            },
            Closed::Lost => self.conn.lost(),
        }
    }

    /// Ends the request stream: cleanly, or aborted with a message.
    async fn end_requests(&self, aborted: Option<&str>) -> Result<()> {
        if !self.flow.close_sending(Closed::Done) {
            return Ok(());
        }
        let (status, message) = match aborted {
            None => (Status::Ok, ""),
            Some(m) => (Status::StreamAborted, m),
        };
        let end = Header {
            kind: Kind::RequestEnd,
            flags: 0,
            status,
            ..self.header
        };
        self.conn.send(&[&end.encode(), message.as_bytes()]).await
    }

    /// What a read that took `taken` returns: an item (after granting
    /// credit back if it is time), or the end.
    fn took(&self, taken: std::result::Result<Taken, End>) -> Result<Option<Bytes>> {
        match taken {
            Ok(Taken { item, grant }) => {
                if let Some(grant) = grant {
                    self.grant(grant);
                }
                self.bytes_in
                    .fetch_add(item.len() as u64, Ordering::Relaxed);
                Ok(Some(item))
            }
            Err(end) => self.answer(end).map(|_| None),
        }
    }

    fn grant(&self, grant: u64) {
        let credit = Header {
            kind: Kind::ResponseCredit,
            flags: 0,
            status: Status::Ok,
            ..self.header
        };
        self.conn.send_detached_with(credit, &grant.to_le_bytes());
    }

    /// The call's answer, from the end of its response stream.
    fn answer(&self, end: End) -> Result<Bytes> {
        let result = match end {
            End::Reply(reply, payload) => call::interpret(
                reply,
                payload,
                &self.rpc,
                self.header.provider,
                &self.address,
                self.max_payload,
            ),
            End::Lost => Err(self.conn.lost()),
            // A caller's response stream ends only with the answer.
            End::Finished | End::Aborted(_) => Err(Error::Protocol {
                address: self.address.to_string(),
                reason: "a response stream ended without an answer".into(),
            }),
        };
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        };
        self.outcome.store(outcome as u8, Ordering::Relaxed);
        result
    }

    /// Waits for the next item or the end.
    async fn next(&self) -> Result<std::result::Result<Taken, End>> {
        if let Some(taken) = self.flow.try_take() {
            return Ok(taken);
        }
        // Polling stays on while the peer's items are on their way.
        let _waiting = self.conn.progress.outstanding();
        self.within(poll_fn(|cx| self.flow.poll_take(cx))).await
    }
}

/// An item to send: raw parts, or a message encoded behind room for its
/// header.
enum Item<'a> {
    Raw(&'a [u8]),
    Encoded(Vec<u8>),
}

impl Item<'_> {
    fn len(&self) -> usize {
        match self {
            Item::Raw(b) => b.len(),
            Item::Encoded(m) => m.len() - HEADER_LEN,
        }
    }

    async fn send(self, conn: &Conn, header: &Header) -> Result<()> {
        match self {
            Item::Raw(b) => conn.send_item(&[&header.encode(), b]).await,
            Item::Encoded(mut m) => {
                frame::set_header(&mut m, header);
                conn.send_item(&[&m]).await
            }
        }
    }
}

/// Encodes `item` behind room for a header.
fn encoded<T: serde::Serialize + ?Sized>(rpc: &str, item: &T) -> Result<Vec<u8>> {
    frame::with_header(&Header::new(Kind::RequestItem), |buf| {
        postcard::to_extend(item, buf)
    })
    .map_err(|source| Error::Encode {
        rpc: rpc.to_owned(),
        what: "stream item",
        source,
    })
}

/// Decodes a whole item.
fn decoded<T: serde::de::DeserializeOwned>(rpc: &str, item: &[u8]) -> Result<T> {
    decode_exact(item).map_err(|reason| Error::Decode {
        rpc: rpc.to_owned(),
        what: "stream item",
        reason,
    })
}

/// A stream call in progress, raw bytes both ways: made by
/// [`RawCallable::stream`](crate::RawCallable::stream).
///
/// Send request items with [`send`](Self::send) and end them with
/// [`close`](Self::close) (or [`abort`](Self::abort)); read response items
/// with [`recv`](Self::recv) until it returns `None`; take the handler's
/// answer with [`finish`](Self::finish). To send and receive at once from
/// two tasks, [`split`](Self::split) it. Dropped before the answer came,
/// it cancels the call.
pub struct RawStreamCall {
    // The receiver first: dropped before the sender, which then holds the
    // last reference and does not close the request stream (a dropped
    // call is cancelled, never ended as if the upload were complete).
    receiver: RawStreamReceiver,
    sender: RawStreamSender,
}

impl fmt::Debug for RawStreamCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.receiver.fmt(f)
    }
}

impl RawStreamCall {
    /// Sends a request item, once the handler's side has credit for it.
    ///
    /// # Errors
    /// [`Error::StreamItemTooLarge`] (nothing sent, the stream goes on);
    /// [`Error::StreamEnded`] once the request stream is closed or the
    /// handler has answered; [`Error::Timeout`]; connection errors.
    pub async fn send(&mut self, item: &[u8]) -> Result<()> {
        self.sender.send(item).await
    }

    /// Ends the request stream: the handler's next read returns `None`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn close(&mut self) -> Result<()> {
        self.sender.close().await
    }

    /// Ends the request stream with an error: the handler's next read
    /// returns [`Error::StreamAborted`] with `message`.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn abort(&mut self, message: &str) -> Result<()> {
        self.sender.abort(message).await
    }

    /// The next response item; `None` once the handler has answered (the
    /// answer is then in [`finish`](Self::finish)).
    ///
    /// # Errors
    /// The handler's error ([`Error::Remote`], ...), which ends the
    /// stream after the items sent before it; [`Error::Timeout`];
    /// connection errors.
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        self.receiver.recv().await
    }

    /// Ends the call: closes the request stream if it is open, drops the
    /// response items not read, and returns the handler's answer.
    ///
    /// # Errors
    /// As [`RawCallable::call`](crate::RawCallable::call).
    pub async fn finish(mut self) -> Result<Bytes> {
        self.sender.close().await?;
        self.receiver.finish().await
    }

    /// The two halves, to send from one task and receive from another.
    pub fn split(self) -> (RawStreamSender, RawStreamReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a caller's stream ([`RawStreamCall::split`]).
/// Dropped while its receiver lives, it closes the request stream; the
/// last half dropped before the answer came cancels the call.
pub struct RawStreamSender {
    core: Arc<Core>,
    closed: bool,
}

impl fmt::Debug for RawStreamSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStreamSender")
            .field("rpc", &self.core.rpc)
            .field("address", &self.core.address.to_string())
            .field("closed", &self.closed)
            .finish()
    }
}

impl RawStreamSender {
    /// See [`RawStreamCall::send`].
    ///
    /// # Errors
    /// See [`RawStreamCall::send`].
    pub async fn send(&mut self, item: &[u8]) -> Result<()> {
        self.core.send_item(Item::Raw(item)).await
    }

    /// See [`RawStreamCall::close`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn close(&mut self) -> Result<()> {
        self.closed = true;
        self.core.end_requests(None).await
    }

    /// See [`RawStreamCall::abort`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn abort(&mut self, message: &str) -> Result<()> {
        self.closed = true;
        self.core.end_requests(Some(message)).await
    }
}

impl Drop for RawStreamSender {
    fn drop(&mut self) {
        // The last half: the core's drop cancels the call (if its answer
        // has not come), which an end sent first would belie.
        let last = Arc::strong_count(&self.core) == 1;
        if !self.closed && !last && self.core.flow.close_sending(Closed::Done) {
            self.core.conn.send_detached(Header {
                kind: Kind::RequestEnd,
                flags: 0,
                status: Status::Ok,
                ..self.core.header
            });
        }
    }
}

/// The receiving half of a caller's stream ([`RawStreamCall::split`]);
/// also a [`futures_core::Stream`] of items.
pub struct RawStreamReceiver {
    core: Arc<Core>,
    /// The deadline's timer, for [`futures_core::Stream::poll_next`].
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl fmt::Debug for RawStreamReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawStreamReceiver")
            .field("rpc", &self.core.rpc)
            .field("address", &self.core.address.to_string())
            .field("flow", &self.core.flow)
            .finish()
    }
}

impl RawStreamReceiver {
    /// See [`RawStreamCall::recv`].
    ///
    /// # Errors
    /// See [`RawStreamCall::recv`].
    pub async fn recv(&mut self) -> Result<Option<Bytes>> {
        let taken = self.core.next().await?;
        self.core.took(taken)
    }

    /// Drops the items not read and returns the handler's answer (the
    /// request stream is not closed here: its sender does that).
    ///
    /// # Errors
    /// See [`RawStreamCall::finish`].
    pub async fn finish(self) -> Result<Bytes> {
        if let Some(grant) = self.core.flow.discard() {
            self.core.grant(grant);
        }
        loop {
            match self.core.next().await? {
                Ok(_) => {} // came after the discard: dropped
                Err(end) => return self.core.answer(end),
            }
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>>> {
        if let Poll::Ready(taken) = self.core.flow.poll_take(cx) {
            return Poll::Ready(self.core.took(taken));
        }
        if let Some((at, after)) = self.core.deadline {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(self.core.timed_out(after)));
            }
        }
        Poll::Pending
    }
}

impl Drop for RawStreamReceiver {
    fn drop(&mut self) {
        // Nobody reads any more: what arrives is dropped and its credit
        // given back, so the handler is not left waiting for it (the call
        // itself goes on while its sender lives).
        if let Some(grant) = self.core.flow.discard() {
            self.core.grant(grant);
        }
    }
}

impl futures_core::Stream for RawStreamReceiver {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx).map(Result::transpose)
    }
}

/// A typed stream call in progress: request items of type `S`, response
/// items of type `I`, answer of type `R`. Made by
/// [`Callable::stream`](crate::Callable::stream); see [`RawStreamCall`]
/// for the protocol and the [module docs](self) for an example.
pub struct StreamCall<S: ?Sized, I, R> {
    raw: RawStreamCall,
    types: Types<S, I, R>,
}

/// The item and answer types of a [`StreamCall`] (a marker).
type Types<S, I, R> = PhantomData<fn(&S) -> (I, R)>;

impl<S: ?Sized, I, R> fmt::Debug for StreamCall<S, I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw.fmt(f)
    }
}

impl<S, I, R> StreamCall<S, I, R>
where
    S: serde::Serialize + ?Sized,
    I: serde::de::DeserializeOwned,
    R: serde::de::DeserializeOwned,
{
    pub(crate) fn new(raw: RawStreamCall) -> Self {
        Self {
            raw,
            types: PhantomData,
        }
    }

    /// Sends a request item; see [`RawStreamCall::send`].
    ///
    /// # Errors
    /// [`Error::Encode`], and see [`RawStreamCall::send`].
    pub async fn send(&mut self, item: &S) -> Result<()> {
        self.raw.sender.send_typed(item).await
    }

    /// Ends the request stream; see [`RawStreamCall::close`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn close(&mut self) -> Result<()> {
        self.raw.close().await
    }

    /// Aborts the request stream; see [`RawStreamCall::abort`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn abort(&mut self, message: &str) -> Result<()> {
        self.raw.abort(message).await
    }

    /// The next response item; see [`RawStreamCall::recv`].
    ///
    /// # Errors
    /// [`Error::Decode`], and see [`RawStreamCall::recv`].
    pub async fn recv(&mut self) -> Result<Option<I>> {
        let item = self.raw.recv().await?;
        item.map(|b| decoded(&self.raw.receiver.core.rpc, &b))
            .transpose()
    }

    /// Ends the call and decodes the handler's answer; see
    /// [`RawStreamCall::finish`].
    ///
    /// # Errors
    /// [`Error::Decode`], and see [`RawStreamCall::finish`].
    pub async fn finish(self) -> Result<R> {
        let rpc = self.raw.receiver.core.rpc.clone();
        let answer = self.raw.finish().await?;
        decoded(&rpc, &answer)
    }

    /// The two halves, to send from one task and receive from another.
    pub fn split(self) -> (StreamSender<S>, StreamReceiver<I, R>) {
        let (sender, receiver) = self.raw.split();
        (
            StreamSender {
                raw: sender,
                types: PhantomData,
            },
            StreamReceiver {
                raw: receiver,
                types: PhantomData,
            },
        )
    }

    /// The raw call underneath.
    pub fn raw(&mut self) -> &mut RawStreamCall {
        &mut self.raw
    }
}

impl RawStreamSender {
    async fn send_typed<T: serde::Serialize + ?Sized>(&mut self, item: &T) -> Result<()> {
        let msg = encoded(&self.core.rpc, item)?;
        self.core.send_item(Item::Encoded(msg)).await
    }
}

/// The typed sending half of a stream call ([`StreamCall::split`]).
/// Dropped while its receiver lives, it closes the request stream.
pub struct StreamSender<S: ?Sized> {
    raw: RawStreamSender,
    types: PhantomData<fn(&S)>,
}

impl<S: ?Sized> fmt::Debug for StreamSender<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw.fmt(f)
    }
}

impl<S: serde::Serialize + ?Sized> StreamSender<S> {
    /// See [`StreamCall::send`].
    ///
    /// # Errors
    /// See [`StreamCall::send`].
    pub async fn send(&mut self, item: &S) -> Result<()> {
        self.raw.send_typed(item).await
    }

    /// See [`StreamCall::close`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn close(&mut self) -> Result<()> {
        self.raw.close().await
    }

    /// See [`StreamCall::abort`].
    ///
    /// # Errors
    /// Connection errors.
    pub async fn abort(&mut self, message: &str) -> Result<()> {
        self.raw.abort(message).await
    }
}

/// The typed receiving half of a stream call ([`StreamCall::split`]);
/// also a [`futures_core::Stream`] of items.
pub struct StreamReceiver<I, R> {
    raw: RawStreamReceiver,
    types: PhantomData<fn() -> (I, R)>,
}

impl<I, R> fmt::Debug for StreamReceiver<I, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw.fmt(f)
    }
}

impl<I: serde::de::DeserializeOwned, R: serde::de::DeserializeOwned> StreamReceiver<I, R> {
    /// See [`StreamCall::recv`].
    ///
    /// # Errors
    /// See [`StreamCall::recv`].
    pub async fn recv(&mut self) -> Result<Option<I>> {
        let item = self.raw.recv().await?;
        item.map(|b| decoded(&self.raw.core.rpc, &b)).transpose()
    }

    /// Drops the items not read and decodes the handler's answer.
    ///
    /// # Errors
    /// See [`StreamCall::finish`].
    pub async fn finish(self) -> Result<R> {
        let rpc = self.raw.core.rpc.clone();
        let answer = self.raw.finish().await?;
        decoded(&rpc, &answer)
    }
}

impl<I: serde::de::DeserializeOwned, R> futures_core::Stream for StreamReceiver<I, R> {
    type Item = Result<I>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.raw.poll_recv(cx).map(|r| match r {
            Ok(Some(b)) => Some(decoded(&this.raw.core.rpc, &b)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }
}

// The handler's side.
impl Handle {
    /// Whether the caller opened streams with this request (called it with
    /// `stream`, not `call`).
    pub fn is_stream(&self) -> bool {
        self.flow().is_some()
    }

    fn stream_flow(&self) -> Result<&Arc<Flow>> {
        self.flow().ok_or_else(|| Error::NotAStream {
            rpc: self.rpc_name().to_owned(),
        })
    }

    /// Sends an item of the response stream (postcard-encoded), once the
    /// caller has credit for it: a slow caller slows the handler down
    /// here.
    ///
    /// # Errors
    /// [`Error::NotAStream`]; [`Error::StreamItemTooLarge`] (nothing sent);
    /// [`Error::StreamEnded`] after the handler answered;
    /// [`Error::Cancelled`] when the caller gave up (or the deadline
    /// passed); connection errors.
    pub async fn send_item<T: serde::Serialize + ?Sized>(&self, item: &T) -> Result<()> {
        self.stream_flow()?;
        let msg = encoded(self.rpc_name(), item)?;
        self.send_response_item(Item::Encoded(msg)).await
    }

    /// Sends raw bytes as an item of the response stream; see
    /// [`Handle::send_item`].
    ///
    /// # Errors
    /// See [`Handle::send_item`].
    pub async fn send_item_raw(&self, item: &[u8]) -> Result<()> {
        self.send_response_item(Item::Raw(item)).await
    }

    async fn send_response_item(&self, msg: Item<'_>) -> Result<()> {
        let flow = self.stream_flow()?;
        let len = msg.len();
        let max = max_item(self.engine_state(), self.conn());
        if len as u64 > max {
            return Err(Error::StreamItemTooLarge {
                rpc: self.rpc_name().to_owned(),
                size: len as u64,
                max,
            });
        }
        let credit = match flow.try_credit(len) {
            Some(r) => r,
            None => {
                self.unless_cancelled(poll_fn(|cx| flow.poll_credit(cx, len)))
                    .await?
            }
        };
        credit.map_err(|closed| match closed {
            Closed::Lost => self.conn().lost(),
            Closed::Done | Closed::PeerFinished => Error::StreamEnded {
                rpc: self.rpc_name().to_owned(),
                side: "response",
                why: "the handler has answered",
            },
        })?;
        let header = Header {
            kind: Kind::ResponseItem,
            flags: 0,
            status: Status::Ok,
            ..*self.header()
        };
        msg.send(self.conn(), &header).await
    }

    /// The caller's next request item, decoded; `None` once the caller
    /// closed its request stream.
    ///
    /// # Errors
    /// [`Error::NotAStream`]; [`Error::Decode`]; [`Error::StreamAborted`]
    /// when the caller aborted its stream; [`Error::Cancelled`] when it
    /// gave up (or the deadline passed); connection errors.
    pub async fn recv_item<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let item = self.recv_item_raw().await?;
        item.map(|b| decoded(self.rpc_name(), &b)).transpose()
    }

    /// The caller's next request item, raw; see [`Handle::recv_item`].
    ///
    /// # Errors
    /// See [`Handle::recv_item`].
    pub async fn recv_item_raw(&self) -> Result<Option<Bytes>> {
        let flow = self.stream_flow()?;
        let taken = match flow.try_take() {
            Some(t) => t,
            None => {
                self.unless_cancelled(poll_fn(|cx| flow.poll_take(cx)))
                    .await?
            }
        };
        match taken {
            Ok(Taken { item, grant }) => {
                if let Some(grant) = grant {
                    let credit = Header {
                        kind: Kind::RequestCredit,
                        flags: 0,
                        status: Status::Ok,
                        ..*self.header()
                    };
                    self.conn().send_detached_with(credit, &grant.to_le_bytes());
                }
                Ok(Some(item))
            }
            Err(End::Finished | End::Reply(..)) => Ok(None),
            Err(End::Aborted(message)) => Err(Error::StreamAborted {
                rpc: self.rpc_name().to_owned(),
                address: self.conn().remote().to_string(),
                message,
            }),
            Err(End::Lost) => Err(self.conn().lost()),
        }
    }

    /// Runs `work` until the request is cancelled (the caller gave up, or
    /// the deadline passed).
    async fn unless_cancelled<T>(&self, work: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            biased;
            r = work => Ok(r),
            _ = self.cancelled() => Err(Error::Cancelled {
                rpc: self.rpc_name().to_owned(),
                address: self.conn().remote().to_string(),
            }),
        }
    }
}
