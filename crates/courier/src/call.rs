//! The call primitive: every exchange that expects an answer — typed and
//! raw RPC calls, pings, remote shutdown requests, the chunks and grants of
//! bulk transfers — goes through here.
//!
//! On a connection, [`Conn::start`] registers the call (a sequence number
//! and a slot in the connection's table of calls in flight), sends it, and
//! returns a [`PendingCall`] that guards the slot: however the call ends
//! (answer, error, deadline, or the future being dropped), the slot is
//! freed. [`PendingCall::reply`] awaits the answer. Above the connection,
//! [`exchange`] is the whole path of one
//! call to a peer: get (or open) the connection, call, all within the
//! call's [`Deadline`] (decided in `timeouts.rs`), and the error that names
//! what ran out of time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::conn::{Conn, Reply};
use crate::error::{Error, Result};
use crate::frame::{self, Extensions, Header, Kind, Status, FLAG_EXTENSIONS, HEADER_LEN};
use crate::overflow::expose;
use crate::paths::AddressSet;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::timeouts::Deadline;

/// What follows the header of an outgoing message.
#[derive(Debug)]
pub(crate) enum Body<'a> {
    /// Parts sent after the encoded header.
    Parts(&'a [&'a [u8]]),
    /// A whole message whose first `HEADER_LEN` bytes are room for the
    /// header (built by `frame::with_header`): one buffer, one write. A
    /// request over the connection's largest message takes the buffer
    /// (its payload is exposed as it is, `overflow.rs`).
    Encoded(&'a mut Vec<u8>),
    /// A payload the engine may keep (exposed as it is, without a copy, if
    /// it is over the connection's largest message).
    Shared(&'a Bytes),
}

impl Body<'_> {
    /// An empty body.
    pub(crate) const EMPTY: Body<'static> = Body::Parts(&[]);

    /// Payload bytes (the header's room not counted).
    pub(crate) fn len(&self) -> usize {
        match self {
            Body::Parts(parts) => parts.iter().map(|p| p.len()).sum(),
            Body::Encoded(msg) => msg.len().saturating_sub(HEADER_LEN),
            Body::Shared(payload) => payload.len(),
        }
    }

    /// The payload as bytes the engine keeps: taken from an encoded
    /// message or shared as they are (no copy); parts are copied.
    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Body::Parts([one]) => Bytes::copy_from_slice(one),
            Body::Parts(parts) => Bytes::from(parts.concat()),
            Body::Encoded(msg) => Bytes::from(std::mem::take(msg)).slice(HEADER_LEN..),
            Body::Shared(payload) => payload.clone(),
        }
    }

    /// Sends `header` and the body; with `flushed`, returns once the
    /// message is written to the medium, not only queued. With a
    /// `deadline`, the header carries the budget left until it (an
    /// extension block, `frame.rs`), measured now; with other extensions
    /// in `ext` (a trace context, a stream's credit, an overflow), those
    /// too, in the same block (`ext`'s own deadline is not read).
    pub(crate) async fn send(
        self,
        conn: &Conn,
        header: &Header,
        flushed: bool,
        deadline: Option<Instant>,
        ext: &Extensions,
    ) -> Result<()> {
        // One await for every shape (a nested future for the deadline's
        // shapes would make every call's future larger, and every move of
        // it dearer).
        let mut header = *header;
        let block = (deadline.is_some() || !ext.is_empty()).then(|| {
            header.flags |= FLAG_EXTENSIONS;
            Extensions {
                deadline: deadline.map(|at| at.saturating_duration_since(Instant::now())),
                ..*ext
            }
            .block()
        });
        let head = header.encode();
        let mut all: Vec<&[u8]>;
        let few: [&[u8]; 3];
        let parts: &[&[u8]] = match (self, block.as_deref()) {
            (Body::Parts([]), None) => {
                few = [&head, &[], &[]];
                &few[..1]
            }
            (Body::Parts([one]), None) => {
                few = [&head, one, &[]];
                &few[..2]
            }
            (Body::Parts(more), block) => {
                all = Vec::with_capacity(2 + more.len());
                all.push(&head);
                if let Some(block) = block {
                    all.push(block);
                }
                all.extend_from_slice(more);
                &all
            }
            (Body::Encoded(msg), None) => {
                frame::set_header(msg, &header);
                few = [msg, &[], &[]];
                &few[..1]
            }
            (Body::Encoded(msg), Some(block)) => {
                few = [&head, block, msg.get(HEADER_LEN..).unwrap_or_default()];
                &few[..]
            }
            (Body::Shared(payload), None) => {
                few = [&head, payload, &[]];
                &few[..2]
            }
            (Body::Shared(payload), Some(block)) => {
                few = [&head, block, payload];
                &few[..]
            }
        };
        conn.send_then(parts, flushed).await
    }
}

/// A call sent and not yet answered. Dropping it forgets the call: a late
/// answer is then discarded.
pub(crate) struct PendingCall<'c> {
    conn: &'c Conn,
    seq: u64,
    rx: Option<oneshot::Receiver<Reply>>,
    /// A request: if it is given up before its answer, the peer is told
    /// (a `Cancel` frame), so that its handler stops.
    cancel_on_drop: bool,
}

impl PendingCall<'_> {
    /// The call's sequence number.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits for the answer (a `Response` or `Error` frame, or a `Pong`).
    ///
    /// # Errors
    /// The connection's death ([`Error::ConnectionLost`],
    /// [`Error::Finalized`]).
    pub(crate) async fn reply(mut self) -> Result<Reply> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(self.conn.lost());
        };
        // Polling stays on while the answer is on its way (`progress.rs`).
        let _waiting = self.conn.progress.outstanding();
        let answer = rx.await;
        // Answered: the connection already took the call out of its table.
        self.rx = None;
        answer.map_err(|_| self.conn.lost())
    }
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if self.rx.is_some() {
            if self.cancel_on_drop {
                self.conn.cancel_call(self.seq);
            } else {
                self.conn.forget_call(self.seq);
            }
        }
    }
}

impl Conn {
    /// Registers a call: its sequence number goes into `header`, and the
    /// returned guard frees its slot however the call ends.
    ///
    /// # Errors
    /// The connection is dead.
    fn register(&self, header: &mut Header) -> Result<PendingCall<'_>> {
        let (seq, rx) = self.register_call()?;
        header.seq = seq;
        Ok(PendingCall {
            conn: self,
            seq,
            rx: Some(rx),
            cancel_on_drop: header.kind == Kind::Request,
        })
    }

    /// Registers a call and sends it: `header` (its sequence number is set
    /// here) and `body`.
    ///
    /// # Errors
    /// The connection is dead; the message is too large; the send failed.
    pub(crate) async fn start(
        &self,
        mut header: Header,
        body: Body<'_>,
    ) -> Result<PendingCall<'_>> {
        let pending = self.register(&mut header)?;
        body.send(self, &header, false, None, &Extensions::default())
            .await?;
        Ok(pending)
    }
}

/// One call to `peer`, all of it within `deadline`: the connection (opened
/// if there is none), the send, and — unless `header` says no response is
/// expected (a one-way request) — the answer. `expired` makes the error
/// when the deadline passes. `ext`, for a request: the extensions it
/// carries besides its deadline (a trace context, an overflow), if any.
///
/// # Errors
/// [`Error::Finalized`], connection errors, and `expired`'s.
pub(crate) async fn exchange(
    state: &EngineState,
    peer: &Peer,
    header: Header,
    body: Body<'_>,
    deadline: Deadline,
    expired: impl FnOnce(Duration) -> Error,
    ext: &Extensions,
) -> Result<Option<Reply>> {
    // The common case, no deadline, awaits the call itself: no timer, and
    // no layer of futures around it to move.
    match deadline.limit() {
        None => call_now(state, peer, header, body, None, ext).await,
        Some((at, after)) => {
            // A request carries its deadline to the server.
            let carried = (header.kind == Kind::Request).then_some(at);
            let work = call_now(state, peer, header, body, carried, ext);
            match tokio::time::timeout_at(at.into(), work).await {
                Ok(r) => r,
                Err(_) => Err(expired(after)),
            }
        }
    }
}

/// [`exchange`] without its deadline, in one layer of future (it is on
/// every call's path: each layer would be moved, and add to the size of
/// the caller's future).
async fn call_now(
    state: &EngineState,
    peer: &Peer,
    mut header: Header,
    body: Body<'_>,
    deadline: Option<Instant>,
    ext: &Extensions,
) -> Result<Option<Reply>> {
    let conn = state.connection_for(peer).await?;
    if header.no_response() {
        header.seq = conn.next_seq();
        body.send(&conn, &header, true, deadline, ext).await?;
        return Ok(None);
    }
    if expose::over(&conn, body.len(), deadline.is_some(), ext) {
        // Rare, and a future of its own: every other call's stays small.
        return Box::pin(call_by_bulk(state, &conn, header, body, deadline, ext)).await;
    }
    let pending = conn.register(&mut header)?;
    body.send(&conn, &header, false, deadline, ext).await?;
    pending.reply().await.map(Some)
}

/// A request over the connection's largest message: its payload is
/// exposed read-only, as it is, and the request goes with an overflow
/// entry instead (`overflow.rs`); the region lives until the call ends,
/// however it ends (this future returns or is dropped).
async fn call_by_bulk(
    state: &EngineState,
    conn: &Conn,
    mut header: Header,
    body: Body<'_>,
    deadline: Option<Instant>,
    ext: &Extensions,
) -> Result<Option<Reply>> {
    let (_exposed, entry) = expose::expose(state, body.into_bytes())?;
    let ext = Extensions {
        overflow: Some(entry),
        ..*ext
    };
    let pending = conn.register(&mut header)?;
    Body::EMPTY
        .send(conn, &header, false, deadline, &ext)
        .await?;
    pending.reply().await.map(Some)
}

/// Interprets the answer to a request of RPC `rpc` at `provider` of
/// `address`: a `Response`'s payload, or the typed error of an `Error`
/// frame (for unary calls and streams alike). A `Response` that still
/// carries its overflow entry was not pulled by this engine, whose
/// `max_payload_bytes` is `max_payload` (`overflow.rs`).
///
/// # Errors
/// The error the frame reports.
pub(crate) fn interpret(
    reply: Header,
    payload: Bytes,
    rpc: &str,
    provider: u16,
    address: &AddressSet,
    max_payload: u64,
) -> Result<Bytes> {
    if reply.kind == Kind::Response {
        if reply.has_extensions() {
            return Err(unpulled(&payload, rpc, address, max_payload));
        }
        return Ok(payload);
    }
    // An error: only now name what failed (three strings per call on
    // the success path were a measurable share of a 64 B call).
    let rpc = rpc.to_owned();
    let address = address.to_string();
    let message = || String::from_utf8_lossy(&payload).into_owned();
    match (reply.kind, reply.status) {
        (Kind::Error, Status::NoSuchRpc) => Err(Error::NoSuchRpc {
            rpc,
            provider,
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
            provider,
            address,
        }),
        (Kind::Error, Status::Finalizing) => Err(Error::RemoteFinalizing { address }),
        (Kind::Error, Status::Busy) => Err(Error::Busy {
            rpc,
            provider,
            address,
            reason: message(),
        }),
        (Kind::Error, Status::TooLarge) => Err(match expose::parse_too_large(&payload) {
            Some((size, max, response, why)) => Error::TooLarge {
                what: format!(
                    "the {} of RPC '{rpc}'",
                    if response { "response" } else { "arguments" }
                ),
                size,
                max,
                whose: address,
                why,
                response,
            },
            None => Error::Protocol {
                address,
                reason: "a TooLarge error shorter than its 17-byte head".into(),
            },
        }),
        (Kind::Error, Status::BulkRefused) => Err(Error::BulkRefused {
            address,
            reason: message(),
        }),
        (Kind::Error, Status::BadExtension) => Err(Error::Protocol {
            address,
            reason: format!(
                "the server refused the request's header extensions: {}",
                message()
            ),
        }),
        (kind, status) => Err(Error::Protocol {
            address,
            reason: format!("a {kind:?} frame with status {status:?} answered a request"),
        }),
    }
}

/// The error of a response by the bulk path this engine did not pull
/// (the call got its overflow entry back, `overflow.rs`): over its
/// `max_payload_bytes`, or no memory for it.
#[cold]
fn unpulled(block: &Bytes, rpc: &str, address: &AddressSet, max: u64) -> Error {
    let address = address.to_string();
    let Some(entry) = Extensions::decode(block).ok().and_then(|(e, _)| e.overflow) else {
        return Error::Protocol {
            address,
            reason: "a response with header extensions but no payload".into(),
        };
    };
    Error::TooLarge {
        what: format!("the response of RPC '{rpc}' from {address}"),
        size: entry.len,
        max,
        whose: "this engine".to_owned(),
        why: if entry.len > max {
            expose::over_max(max)
        } else {
            format!("no memory for {} bytes", entry.len)
        },
        response: true,
    }
}
