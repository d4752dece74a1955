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

use std::time::Duration;

use tokio::sync::oneshot;

use crate::conn::{Conn, Reply};
use crate::error::{Error, Result};
use crate::frame::{self, Header};
use crate::peer::Peer;
use crate::state::EngineState;
use crate::timeouts::Deadline;

/// What follows the header of an outgoing message.
#[derive(Debug)]
pub(crate) enum Body<'a> {
    /// Parts sent after the encoded header.
    Parts(&'a [&'a [u8]]),
    /// A whole message whose first `HEADER_LEN` bytes are room for the
    /// header (built by `frame::with_header`): one buffer, one write.
    Encoded(&'a mut [u8]),
}

impl Body<'_> {
    /// An empty body.
    pub(crate) const EMPTY: Body<'static> = Body::Parts(&[]);

    /// Sends `header` and the body; with `flushed`, returns once the
    /// message is written to the medium, not only queued.
    async fn send(self, conn: &Conn, header: &Header, flushed: bool) -> Result<()> {
        match self {
            Body::Parts(parts) => {
                let head = header.encode();
                match parts {
                    [] => conn.send_then(&[&head], flushed).await,
                    [one] => conn.send_then(&[&head, one], flushed).await,
                    more => {
                        let mut all: Vec<&[u8]> = Vec::with_capacity(1 + more.len());
                        all.push(&head);
                        all.extend_from_slice(more);
                        conn.send_then(&all, flushed).await
                    }
                }
            }
            Body::Encoded(msg) => {
                frame::set_header(msg, header);
                conn.send_then(&[msg], flushed).await
            }
        }
    }
}

/// A call sent and not yet answered. Dropping it forgets the call: a late
/// answer is then discarded.
pub(crate) struct PendingCall<'c> {
    conn: &'c Conn,
    seq: u64,
    rx: Option<oneshot::Receiver<Reply>>,
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
            self.conn.forget_call(self.seq);
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
        body.send(self, &header, false).await?;
        Ok(pending)
    }

    /// Sends a message that expects no answer (a one-way request), with a
    /// fresh sequence number. Returns once it is written to the medium, as
    /// a one-way call promises (the engine may be finalized right after).
    ///
    /// # Errors
    /// The connection is dead; the message is too large; the send failed.
    pub(crate) async fn notify(&self, mut header: Header, body: Body<'_>) -> Result<()> {
        header.seq = self.next_seq();
        body.send(self, &header, true).await
    }
}

/// One call to `peer`, all of it within `deadline`: the connection (opened
/// if there is none), the send, and — unless `header` says no response is
/// expected (a one-way request) — the answer. `expired` makes the error
/// when the deadline passes.
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
) -> Result<Option<Reply>> {
    // The common case, no deadline, awaits the call itself: no timer, and
    // no layer of futures around it to move.
    match deadline.limit() {
        None => call_now(state, peer, header, body).await,
        Some((at, after)) => {
            match tokio::time::timeout_at(at.into(), call_now(state, peer, header, body)).await {
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
) -> Result<Option<Reply>> {
    let conn = state.connection_for(peer).await?;
    if header.no_response() {
        conn.notify(header, body).await?;
        return Ok(None);
    }
    let pending = conn.register(&mut header)?;
    body.send(&conn, &header, false).await?;
    pending.reply().await.map(Some)
}
