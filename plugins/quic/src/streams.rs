//! quinn's stream halves as the tokio byte streams that
//! [`StreamSender`](courier_transport::stream::StreamSender) and
//! [`StreamReceiver`](courier_transport::stream::StreamReceiver) frame
//! messages on.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use courier_transport::framing::PREAMBLE;
use quinn::{ConnectionError, ReadError, StoppedError, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;

use crate::socket::{unreachable_error, Unreachable};

type Stopped = Pin<Box<dyn Future<Output = Result<Option<VarInt>, StoppedError>> + Send + Sync>>;

/// What the stream halves of one connection need to say why it ended.
#[derive(Debug, Clone)]
pub(crate) struct Why {
    /// The idle timeout, for a connection that timed out.
    pub(crate) idle: Duration,
    /// On the dialing side: whether the server's port was reported closed,
    /// and the task that closes the connection when it is (ended when both
    /// halves are gone).
    pub(crate) unreachable: Option<(Arc<Unreachable>, Arc<Watcher>)>,
}

impl Why {
    /// Why the connection ended, as an I/O error.
    fn lost(&self, e: &ConnectionError) -> io::Error {
        match &self.unreachable {
            Some((u, _)) if u.is_set() => unreachable_error(),
            _ => connection_lost(e, self.idle),
        }
    }
}

/// A task that lives as long as the halves of a connection: aborted when
/// the last one holding it is dropped.
#[derive(Debug)]
pub(crate) struct Watcher(pub(crate) AbortHandle);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The sending half of a connection's QUIC stream, as a byte stream.
///
/// Besides mapping quinn's errors to messages that say what happened, it
/// does two things a plain `SendStream` does not:
///
/// * on the dialing side the stream preamble is written when the connection
///   is opened (QUIC announces a stream to the acceptor only once bytes flow
///   on it), so the preamble the framing writes before the first message is
///   dropped here instead of being sent twice;
/// * shutting down finishes the stream *and waits until the peer has
///   acknowledged everything*, so an orderly close followed by dropping the
///   connection still delivers every message.
pub struct QuicSendStream {
    stream: quinn::SendStream,
    /// Bytes of the preamble, already sent, still to drop from the writes.
    skip: usize,
    closing: Option<Stopped>,
    why: Why,
}

impl fmt::Debug for QuicSendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicSendStream")
            .field("stream", &self.stream.id())
            .field("closing", &self.closing.is_some())
            .finish_non_exhaustive()
    }
}

impl QuicSendStream {
    pub(crate) fn new(stream: quinn::SendStream, preamble_sent: bool, why: Why) -> Self {
        Self {
            stream,
            skip: if preamble_sent { PREAMBLE.len() } else { 0 },
            closing: None,
            why,
        }
    }
}

impl AsyncWrite for QuicSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.skip > 0 && !buf.is_empty() {
            let n = this.skip.min(buf.len());
            let sent = &PREAMBLE[PREAMBLE.len() - this.skip..][..n];
            if buf[..n] != *sent {
                return Poll::Ready(Err(io::Error::other(
                    "internal error: the first bytes written are not the stream preamble",
                )));
            }
            this.skip -= n;
            return Poll::Ready(Ok(n));
        }
        let why = &this.why;
        quinn::SendStream::poll_write(Pin::new(&mut this.stream), cx, buf)
            .map_err(|e| write_error(e, why))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends as soon as it can; nothing is held back to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let why = &this.why;
        let stream = &mut this.stream;
        let closing = this.closing.get_or_insert_with(|| {
            // An error means it was already finished (or reset): either way
            // nothing more will be sent, which is what shutdown asks.
            let _ = stream.finish();
            Box::pin(stream.stopped())
        });
        match ready!(closing.as_mut().poll(cx)) {
            // Everything acknowledged, or the peer stopped reading (it wants
            // no more, so there is nothing left to deliver).
            Ok(_) => Poll::Ready(Ok(())),
            Err(StoppedError::ConnectionLost(e)) => Poll::Ready(Err(why.lost(&e))),
            Err(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    }
}

/// The receiving half of a connection's QUIC stream, as a byte stream.
pub struct QuicRecvStream {
    stream: quinn::RecvStream,
    why: Why,
}

impl fmt::Debug for QuicRecvStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicRecvStream")
            .field("stream", &self.stream.id())
            .finish_non_exhaustive()
    }
}

impl QuicRecvStream {
    pub(crate) fn new(stream: quinn::RecvStream, why: Why) -> Self {
        Self { stream, why }
    }
}

impl AsyncRead for QuicRecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let why = &this.why;
        match this.stream.poll_read_buf(cx, buf) {
            // Nothing more has arrived: if the server's port is reported
            // closed, the connection ends here, after everything that had
            // arrived was read (a response sent just before the server
            // exited is not lost).
            Poll::Pending => match &why.unreachable {
                Some((u, _)) => {
                    u.register_reader(cx.waker());
                    if u.is_set() {
                        Poll::Ready(Err(unreachable_error()))
                    } else {
                        Poll::Pending
                    }
                }
                None => Poll::Pending,
            },
            ready => ready.map_err(|e| read_error(e, why)),
        }
    }
}

fn write_error(e: WriteError, why: &Why) -> io::Error {
    match e {
        WriteError::ConnectionLost(c) => why.lost(&c),
        WriteError::Stopped(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("the peer stopped reading the QUIC stream (code {code})"),
        ),
        other => io::Error::other(other),
    }
}

fn read_error(e: ReadError, why: &Why) -> io::Error {
    match e {
        ReadError::ConnectionLost(c) => why.lost(&c),
        ReadError::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("the peer reset the QUIC stream (code {code})"),
        ),
        other => io::Error::other(other),
    }
}

/// Why a QUIC connection ended, as an I/O error that says so.
pub(crate) fn connection_lost(e: &ConnectionError, idle: Duration) -> io::Error {
    let (kind, what) = match e {
        ConnectionError::TimedOut => (
            io::ErrorKind::TimedOut,
            format!(
                "the QUIC connection timed out: nothing heard from the peer for the idle \
                 timeout (the shorter of both sides' idle_timeout_ms; this side's is {} ms)",
                idle.as_millis()
            ),
        ),
        ConnectionError::ApplicationClosed(c) => (
            io::ErrorKind::ConnectionAborted,
            format!("the peer closed the QUIC connection ({c})"),
        ),
        ConnectionError::ConnectionClosed(c) => (
            io::ErrorKind::ConnectionAborted,
            format!("the peer's QUIC stack closed the connection ({c})"),
        ),
        ConnectionError::Reset => (
            io::ErrorKind::ConnectionReset,
            "the peer reset the QUIC connection (it may have restarted)".to_owned(),
        ),
        ConnectionError::LocallyClosed => (
            io::ErrorKind::NotConnected,
            "the QUIC connection was closed on this side".to_owned(),
        ),
        other => (
            io::ErrorKind::Other,
            format!("the QUIC connection failed: {other}"),
        ),
    };
    io::Error::new(kind, what)
}
