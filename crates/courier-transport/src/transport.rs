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
//!   connection stays usable. A peer that announces a larger message makes
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

use crate::{Address, TransportError};

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
pub trait MessageSender: Send + 'static {
    /// Sends one message made of `parts`, concatenated. Returns once the
    /// message is handed to the medium (written to the socket, stored in the
    /// ring), which may wait for the peer to make room (backpressure).
    fn send(&mut self, parts: &[&[u8]]) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Orderly close of this direction: what was sent is delivered, then the
    /// peer's `recv` returns `Ok(None)`.
    fn close(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;
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
/// call); see `docs/benchmarks.md` for what that costs per message.
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
    /// See [`MessageSender::send`].
    fn send_dyn<'a>(
        &'a mut self,
        parts: &'a [&'a [u8]],
    ) -> BoxFuture<'a, Result<(), TransportError>>;
    /// See [`MessageSender::close`].
    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), TransportError>>;
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

    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.close())
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
