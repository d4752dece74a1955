//! The UDP socket of a client connection, connected to its server so that
//! the kernel tells us when the server's port is closed.
//!
//! When a process that had a UDP port open dies and its host is alive, the
//! host answers every datagram sent to that port with ICMP "port
//! unreachable". An unconnected socket, such as a shared endpoint's, never
//! hears of it; a *connected* one gets `ECONNREFUSED` from its next send
//! or receive (in practice the next send: tokio wakes a receiver for
//! data, not for a pending socket error). quinn's own tokio socket ignores that error, so each client
//! connection has its own endpoint on a [`ClientSocket`]: the same calls
//! into `quinn-udp` as quinn's socket, except that `ECONNREFUSED` is
//! recorded in an [`Unreachable`] that the connection watches. quinn's own
//! packets (handshake, keep-alives, data, retransmissions) are the probes:
//! nothing extra goes on the wire.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::sync::Notify;

/// Set once the server's host answered "port unreachable".
#[derive(Debug, Default)]
pub(crate) struct Unreachable {
    refused: AtomicBool,
    notify: Notify,
    /// The connection's reader, while it waits for data: woken when the
    /// port is reported closed, so that it ends once it has read what had
    /// arrived (`streams.rs`).
    reader: Mutex<Option<Waker>>,
}

impl Unreachable {
    /// Whether the server's port was reported closed.
    pub(crate) fn is_set(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    fn set(&self) {
        if !self.refused.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
            let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(reader) = reader {
                reader.wake();
            }
        }
    }

    /// Registers the reader that waits for data (see the field).
    pub(crate) fn register_reader(&self, waker: &Waker) {
        let mut reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        match reader.as_ref() {
            Some(w) if w.will_wake(waker) => {}
            _ => *reader = Some(waker.clone()),
        }
    }

    /// Completes once the server's port is reported closed.
    pub(crate) async fn wait(&self) {
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// The error of a connection whose server's port was reported closed.
pub(crate) fn unreachable_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        "the server's host answered 'port unreachable': nothing listens on its UDP port any \
         more (the server process exited or was killed)",
    )
}

/// A UDP socket connected to one server, for one client endpoint.
pub(crate) struct ClientSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    unreachable: Arc<Unreachable>,
}

impl fmt::Debug for ClientSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSocket")
            .field("local", &self.io.local_addr().ok())
            .field("remote", &self.io.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl ClientSocket {
    /// Binds `bind` and connects to `remote` (on the current tokio runtime).
    pub(crate) fn connected(
        bind: SocketAddr,
        remote: SocketAddr,
        unreachable: Arc<Unreachable>,
    ) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(bind)?;
        socket.connect(remote)?;
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
            state,
            unreachable,
        })
    }

    /// Records a "port unreachable" report; true if `e` was one.
    fn refused(&self, e: &io::Error) -> bool {
        let refused = e.kind() == io::ErrorKind::ConnectionRefused;
        if refused {
            self.unreachable.set();
        }
        refused
    }
}

impl AsyncUdpSocket for ClientSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable {
            socket: self,
            ready: None,
        })
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let sent = self.io.try_io(Interest::WRITABLE, || {
            self.state.try_send((&self.io).into(), transmit)
        });
        match sent {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                // As quinn's own socket does: a datagram that could not be
                // sent is lost, and QUIC recovers lost datagrams.
                if !self.refused(&e) {
                    tracing::debug!("QUIC client socket: sending failed: {e}");
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_io(Interest::READABLE, || {
                self.state.recv((&self.io).into(), bufs, meta)
            }) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // Would block: wait for readiness again. Any other error is
                // ignored, as quinn's own socket does, once recorded.
                Err(e) => {
                    self.refused(&e);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

type Ready = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// Waits for the socket to be writable, for one task (quinn makes one per
/// task that may wait).
struct Writable {
    socket: Arc<ClientSocket>,
    ready: Option<Ready>,
}

impl fmt::Debug for Writable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writable").finish_non_exhaustive()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ready = this.ready.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let outcome = ready!(ready.as_mut().poll(cx));
        this.ready = None;
        Poll::Ready(outcome)
    }
}
