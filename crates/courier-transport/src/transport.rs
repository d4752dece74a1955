//! The `Transport` trait family and its dyn-compatible twin.
//!
//! A transport moves whole messages between two endpoints. It knows nothing of
//! RPCs: the engine hands it opaque byte messages and gets the same bytes back
//! on the other side, one message at a time, in order.
//!
//! Plugin authors implement the static traits ([`Transport`], [`Listener`],
//! [`Connection`], [`MessageSender`], [`MessageReceiver`]) with plain
//! `async fn`s. Every static implementation is automatically also a
//! [`DynTransport`] (through blanket impls), which is what the engine holds
//! after it resolved a protocol name through the [`Registry`](crate::Registry).
//!
//! # What a transport may assume
//!
//! * Its futures run on a tokio runtime (multi-threaded or current-thread),
//!   and must be `Send`.
//! * After [`Connection::split`], the sender and the receiver are used from
//!   different tasks at once — each by one task at a time (`&mut self`).
//! * `listen` and `connect` may run concurrently on one transport (`&self`).
//!
//! # The contract
//!
//! The public crate `courier-testkit` checks each clause below on a
//! transport (`courier_testkit::transport`), and the engine on top of it.
//!
//! * **Message boundaries.** One `send` of parts `[a, b, c]` arrives as exactly
//!   one message `a ++ b ++ c` from one `recv`. An empty message is a message.
//! * **Order.** Messages sent on one sender arrive in the order they were sent.
//! * **Reliability.** A message either arrives whole, or the connection fails
//!   and `recv` returns an error; there is no silent loss or duplication.
//! * **Maximum size.** A transport is built with a maximum message size.
//!   `send` of a larger message fails with
//!   [`TransportError::MessageTooLarge`] *without writing anything*, and the
//!   connection stays usable. [`MessageSender::send`] keeps this clause for
//!   every transport: it checks the size before it calls the plugin's
//!   [`MessageSender::transmit`]. A peer that announces a larger message makes
//!   `recv` fail (and the connection is then dead). A transport never
//!   allocates more than the maximum for one message, whatever a peer sends.
//! * **Close.** [`MessageSender::close`] is an orderly close: messages already
//!   sent are delivered, then the peer's `recv` returns `Ok(None)`. A peer that
//!   vanishes without closing makes `recv` return `Ok(None)` or an error —
//!   which one depends on the medium (a socket hung up between messages
//!   reads as a clean end; a shared-memory peer that died without closing is
//!   an error) — and both end the connection. Either way `recv` never hangs
//!   on a dead peer.
//! * **Cancellation.** Dropping a `recv` future loses no data. Dropping a
//!   `send` future part way may leave a partial message on the wire: the
//!   caller must treat the connection as broken (the engine does).
//! * **Addresses.** `listen` on an address whose plugin part is empty binds a
//!   default, loopback-only address. [`Listener::local_addr`] is the string a
//!   peer passes to `connect`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::{Address, Batch, TransportError};

/// A boxed, `Send` future, as the dyn-compatible traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to reach peers: listen for connections and open them.
pub trait Transport: Send + Sync + 'static {
    /// What [`Transport::listen`] returns.
    type Listener: Listener<Connection = Self::Connection>;
    /// An established, message-oriented connection.
    type Connection: Connection;

    /// The canonical protocol name this transport serves (e.g. `"tcp"`).
    fn protocol(&self) -> &str;

    /// The maximum size of one message, in bytes.
    fn max_message_size(&self) -> usize;

    /// Starts listening. An empty plugin part means "the default loopback
    /// address with an ephemeral port / a private name".
    fn listen(
        &self,
        addr: &Address,
    ) -> impl Future<Output = Result<Self::Listener, TransportError>> + Send;

    /// Opens a connection to a listening peer.
    fn connect(
        &self,
        addr: &Address,
    ) -> impl Future<Output = Result<Self::Connection, TransportError>> + Send;
}

/// Accepts incoming connections. Dropping it stops listening and releases
/// what it holds (a unix socket file is removed, for instance).
pub trait Listener: Send + 'static {
    /// The connections it yields.
    type Connection: Connection;

    /// The address peers connect to, with the canonical protocol name.
    fn local_addr(&self) -> &Address;

    /// Waits for the next connection. An error concerns one attempt (a peer
    /// that failed a handshake, a full file table); the listener stays usable.
    fn accept(&mut self) -> impl Future<Output = Result<Self::Connection, TransportError>> + Send;
}

/// An established connection, split into its two directions before use.
pub trait Connection: Send + 'static {
    /// The sending direction.
    type Sender: MessageSender;
    /// The receiving direction.
    type Receiver: MessageReceiver;

    /// The peer's address as this transport sees it (for a connection that
    /// was accepted, it may not be an address one can connect to).
    fn peer_addr(&self) -> &Address;

    /// Splits the connection so the two directions can be used from different
    /// tasks.
    fn split(self) -> (Self::Sender, Self::Receiver);

    /// Optional abilities beyond messages ([`crate::capability`]); none by default.
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::default()
    }
}

/// The sending direction of a connection.
///
/// A plugin implements [`MessageSender::transmit`], which hands a message to
/// the medium, and [`MessageSender::max_message_size`]; callers call
/// [`MessageSender::send`] (or [`DynSender::send_dyn`], which calls it).
/// `send` is provided: it checks the size of the message against the
/// maximum, and refuses an oversized one with
/// [`TransportError::MessageTooLarge`] without calling `transmit`, so
/// nothing is written and the connection stays usable. That part of the
/// contract is kept here, once for every transport: `transmit` only ever
/// sees messages that fit, and a plugin must not override `send`.
///
/// ```
/// use courier_transport::{MessageSender, TransportError};
///
/// /// Counts the bytes it is given.
/// struct Counter { max: usize, bytes: usize }
///
/// impl MessageSender for Counter {
///     fn max_message_size(&self) -> usize {
///         self.max
///     }
///     async fn transmit(&mut self, _parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
///         self.bytes += len;
///         Ok(())
///     }
///     async fn close(&mut self) -> Result<(), TransportError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut tx = Counter { max: 4, bytes: 0 };
/// tx.send(&[b"ab", b"cd"]).await.unwrap();
/// let err = tx.send(&[b"abcde"]).await.unwrap_err();
/// assert!(matches!(err, TransportError::MessageTooLarge { size: 5, max: 4 }));
/// assert_eq!(tx.bytes, 4); // the oversized message never reached `transmit`
/// # }
/// ```
pub trait MessageSender: Send + 'static {
    /// The largest message this sender sends, in bytes: the maximum the
    /// transport was built with (or less, if the medium cannot carry more).
    fn max_message_size(&self) -> usize;

    /// Hands one message made of `parts`, concatenated, to the medium
    /// (writes it to the socket, stores it in the ring), waiting for the peer
    /// to make room if need be (backpressure). `len` is the total length of
    /// `parts`, already checked to be at most
    /// [`max_message_size`](MessageSender::max_message_size).
    ///
    /// Called by [`MessageSender::send`]; call `send` instead.
    fn transmit(
        &mut self,
        parts: &[&[u8]],
        len: usize,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends one message made of `parts`, concatenated. Returns once the
    /// message is handed to the medium, which may wait for the peer to make
    /// room (backpressure).
    ///
    /// A message over [`max_message_size`](MessageSender::max_message_size)
    /// fails with [`TransportError::MessageTooLarge`], without anything
    /// written: the connection stays usable. Provided; not to be overridden.
    fn send(&mut self, parts: &[&[u8]]) -> impl Future<Output = Result<(), TransportError>> + Send {
        let len = message_len(parts);
        let max = self.max_message_size();
        async move {
            if len > max {
                return Err(TransportError::MessageTooLarge {
                    size: len as u64,
                    max,
                });
            }
            self.transmit(parts, len).await
        }
    }

    /// Hands every message of `batch` to the medium, in order, as one
    /// operation where the medium allows it: one write on a byte stream,
    /// one publish and one wake-up on a ring. Each message arrives as
    /// itself. Every message is already checked to be at most
    /// [`max_message_size`](MessageSender::max_message_size).
    ///
    /// Provided: calls [`transmit`](MessageSender::transmit) once per
    /// message, which keeps the contract but saves nothing. A plugin whose
    /// medium can take several messages at once overrides it. A batch
    /// dropped part way leaves the connection as a dropped `transmit` does.
    ///
    /// Called by [`MessageSender::send_batch`]; call that instead.
    fn transmit_batch(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        async move {
            for message in batch {
                self.transmit(&[message], message.len()).await?;
            }
            Ok(())
        }
    }

    /// Sends every message of `batch`, in order (see
    /// [`transmit_batch`](MessageSender::transmit_batch)). A batch holding a
    /// message over [`max_message_size`](MessageSender::max_message_size)
    /// fails with [`TransportError::MessageTooLarge`] before anything is
    /// written. Provided; not to be overridden.
    fn send_batch(
        &mut self,
        batch: &Batch,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let largest = batch.largest();
        let max = self.max_message_size();
        async move {
            if largest > max {
                return Err(TransportError::MessageTooLarge {
                    size: largest as u64,
                    max,
                });
            }
            self.transmit_batch(batch).await
        }
    }

    /// Whether the engine should hold back messages that come together, to
    /// hand them over as one batch ([`Pacing`]). Provided:
    /// [`Pacing::Coalesce`], right for a medium where each hand-over costs
    /// a system call.
    fn pacing(&self) -> Pacing {
        Pacing::Coalesce
    }

    /// Orderly close of this direction: what was sent is delivered, then the
    /// peer's `recv` returns `Ok(None)`.
    fn close(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// How the engine paces the messages it hands a sender
/// ([`MessageSender::pacing`]).
///
/// Either way, messages that queue while a write is under way go out
/// together when it ends. The choice is about holding messages back *when
/// nothing is being written*.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Each hand-over is costly (a system call, a packet): when the engine
    /// reads several messages at once, it holds back their answers until it
    /// has read them all, and hands them over as one batch. Measured on
    /// tcp with 32 calls in flight: four times the calls per second of one
    /// write per answer.
    #[default]
    Coalesce,
    /// A hand-over is a store in memory that the peer sees at once (a
    /// shared ring, a channel): the engine hands each message over as soon
    /// as it is made, since holding it back only keeps the peer waiting.
    Eager,
}

/// The receiving direction of a connection.
pub trait MessageReceiver: Send + 'static {
    /// Waits for the next whole message. `Ok(None)` means the peer closed the
    /// connection cleanly; any error means the connection is dead.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;
}

// ---------------------------------------------------------------------------
// The dyn-compatible twin.
// ---------------------------------------------------------------------------

/// Object-safe form of [`Transport`], implemented for every `Transport`.
///
/// The engine holds an `Arc<dyn DynTransport>` because it picks the transport
/// by name at run time. Each call returns a boxed future (one allocation per
/// call); see `docs/benchmarks-journal.md` ("Static or dyn dispatch") for
/// what that costs per message.
pub trait DynTransport: Send + Sync + 'static {
    /// See [`Transport::protocol`].
    fn protocol(&self) -> &str;
    /// See [`Transport::max_message_size`].
    fn max_message_size(&self) -> usize;
    /// See [`Transport::listen`].
    fn listen_dyn<'a>(
        &'a self,
        addr: &'a Address,
    ) -> BoxFuture<'a, Result<Box<dyn DynListener>, TransportError>>;
    /// See [`Transport::connect`].
    fn connect_dyn<'a>(
        &'a self,
        addr: &'a Address,
    ) -> BoxFuture<'a, Result<Box<dyn DynConnection>, TransportError>>;
}

/// Object-safe form of [`Listener`].
pub trait DynListener: Send + 'static {
    /// See [`Listener::local_addr`].
    fn local_addr(&self) -> &Address;
    /// See [`Listener::accept`].
    fn accept_dyn(&mut self) -> BoxFuture<'_, Result<Box<dyn DynConnection>, TransportError>>;
}

/// Object-safe form of [`Connection`].
pub trait DynConnection: Send + 'static {
    /// See [`Connection::peer_addr`].
    fn peer_addr(&self) -> &Address;
    /// See [`Connection::split`].
    fn split_dyn(self: Box<Self>) -> (Box<dyn DynSender>, Box<dyn DynReceiver>);
    /// See [`Connection::capabilities`].
    fn capabilities_dyn(&self) -> crate::Capabilities;
}

/// Object-safe form of [`MessageSender`].
pub trait DynSender: Send + 'static {
    /// See [`MessageSender::send`], which it calls: the size check holds
    /// here too.
    fn send_dyn<'a>(
        &'a mut self,
        parts: &'a [&'a [u8]],
    ) -> BoxFuture<'a, Result<(), TransportError>>;
    /// See [`MessageSender::send_batch`], which it calls. The future owns
    /// the sender and the batch, and gives both back with the outcome
    /// ([`BatchSent`]), so that it can finish on a task of its own.
    fn send_batch_dyn(self: Box<Self>, batch: Batch) -> BoxFuture<'static, BatchSent>;
    /// See [`MessageSender::close`].
    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), TransportError>>;
    /// See [`MessageSender::max_message_size`].
    fn max_message_size_dyn(&self) -> usize;
    /// See [`MessageSender::pacing`].
    fn pacing_dyn(&self) -> Pacing;
}

/// What [`DynSender::send_batch_dyn`] gives back: the sender, the batch (to
/// be cleared and reused), and the outcome.
pub struct BatchSent {
    /// The sender the batch was sent on.
    pub sender: Box<dyn DynSender>,
    /// The batch, as it was given.
    pub batch: Batch,
    /// Whether it was sent.
    pub result: Result<(), TransportError>,
}

impl fmt::Debug for BatchSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSent")
            .field("batch", &self.batch)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

/// Object-safe form of [`MessageReceiver`].
pub trait DynReceiver: Send + 'static {
    /// See [`MessageReceiver::recv`].
    fn recv_dyn(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>>;
}

impl<T: Transport> DynTransport for T {
    fn protocol(&self) -> &str {
        Transport::protocol(self)
    }

    fn max_message_size(&self) -> usize {
        Transport::max_message_size(self)
    }

    fn listen_dyn<'a>(
        &'a self,
        addr: &'a Address,
    ) -> BoxFuture<'a, Result<Box<dyn DynListener>, TransportError>> {
        Box::pin(async move {
            let l = self.listen(addr).await?;
            Ok(Box::new(l) as Box<dyn DynListener>)
        })
    }

    fn connect_dyn<'a>(
        &'a self,
        addr: &'a Address,
    ) -> BoxFuture<'a, Result<Box<dyn DynConnection>, TransportError>> {
        Box::pin(async move {
            let c = self.connect(addr).await?;
            Ok(Box::new(c) as Box<dyn DynConnection>)
        })
    }
}

impl<L: Listener> DynListener for L {
    fn local_addr(&self) -> &Address {
        Listener::local_addr(self)
    }

    fn accept_dyn(&mut self) -> BoxFuture<'_, Result<Box<dyn DynConnection>, TransportError>> {
        Box::pin(async move {
            let c = self.accept().await?;
            Ok(Box::new(c) as Box<dyn DynConnection>)
        })
    }
}

impl<C: Connection> DynConnection for C {
    fn peer_addr(&self) -> &Address {
        Connection::peer_addr(self)
    }

    fn split_dyn(self: Box<Self>) -> (Box<dyn DynSender>, Box<dyn DynReceiver>) {
        let (s, r) = (*self).split();
        (Box::new(s), Box::new(r))
    }

    fn capabilities_dyn(&self) -> crate::Capabilities {
        Connection::capabilities(self)
    }
}

impl<S: MessageSender> DynSender for S {
    fn send_dyn<'a>(
        &'a mut self,
        parts: &'a [&'a [u8]],
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(self.send(parts))
    }

    fn send_batch_dyn(self: Box<Self>, batch: Batch) -> BoxFuture<'static, BatchSent> {
        Box::pin(async move {
            let mut sender = self;
            let result = sender.send_batch(&batch).await;
            BatchSent {
                sender,
                batch,
                result,
            }
        })
    }

    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.close())
    }

    fn max_message_size_dyn(&self) -> usize {
        self.max_message_size()
    }

    fn pacing_dyn(&self) -> Pacing {
        self.pacing()
    }
}

impl<R: MessageReceiver> DynReceiver for R {
    fn recv_dyn(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(self.recv())
    }
}

impl fmt::Debug for dyn DynTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynTransport")
            .field("protocol", &self.protocol())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for dyn DynListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynListener")
            .field("local_addr", &self.local_addr().to_string())
            .finish()
    }
}

/// Total length of a message made of `parts`.
pub fn message_len(parts: &[&[u8]]) -> usize {
    parts.iter().map(|p| p.len()).sum()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records the length of each message that reaches `transmit`.
    struct Recorder {
        max: usize,
        transmitted: Arc<Mutex<Vec<usize>>>,
    }

    impl MessageSender for Recorder {
        fn max_message_size(&self) -> usize {
            self.max
        }

        async fn transmit(&mut self, _parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
            self.transmitted.lock().unwrap().push(len);
            Ok(())
        }

        async fn close(&mut self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    fn is_too_large(result: Result<(), TransportError>, size: u64, max: usize) -> bool {
        matches!(result, Err(TransportError::MessageTooLarge { size: s, max: m }) if (s, m) == (size, max))
    }

    #[tokio::test]
    async fn send_refuses_an_oversized_message_before_transmit_on_both_paths() {
        let transmitted = Arc::new(Mutex::new(Vec::new()));
        let mut tx = Recorder {
            max: 4,
            transmitted: transmitted.clone(),
        };
        // The static path.
        assert!(is_too_large(tx.send(&[b"abc", b"de"]).await, 5, 4));
        tx.send(&[b"ab", b"", b"cd"]).await.unwrap();
        tx.send(&[]).await.unwrap();
        // The dyn path the engine takes.
        let mut tx: Box<dyn DynSender> = Box::new(tx);
        assert!(is_too_large(tx.send_dyn(&[b"abcdefgh"]).await, 8, 4));
        tx.send_dyn(&[b"abc"]).await.unwrap();
        assert_eq!(*transmitted.lock().unwrap(), [4, 0, 3]);
    }

    #[tokio::test]
    async fn a_batch_goes_message_by_message_unless_one_is_too_large() {
        let transmitted = Arc::new(Mutex::new(Vec::new()));
        let tx = Recorder {
            max: 4,
            transmitted: transmitted.clone(),
        };
        let mut batch = Batch::new();
        batch.push(&[b"ab"]);
        batch.push(&[b"abcde"]);
        let tx: Box<dyn DynSender> = Box::new(tx);
        assert_eq!(tx.max_message_size_dyn(), 4);
        let sent = tx.send_batch_dyn(batch).await;
        assert!(is_too_large(sent.result, 5, 4));
        assert!(transmitted.lock().unwrap().is_empty(), "nothing written");
        let mut batch = sent.batch;
        batch.clear();
        batch.push(&[b"ab", b"c"]);
        batch.push(&[]);
        let sent = sent.sender.send_batch_dyn(batch).await;
        sent.result.unwrap();
        assert_eq!(*transmitted.lock().unwrap(), [3, 0]);
    }
}
