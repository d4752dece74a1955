//! Connections, listeners, senders and receivers over any tokio byte stream.
//!
//! A plugin whose medium is a byte stream (TCP, Unix sockets, a pipe, a
//! TLS stream) gets the whole message contract from this module: its
//! transport returns a [`StreamConnection`] from `connect` and a
//! [`StreamListener`] from `listen`, and their connections split into a
//! [`StreamSender`] and a [`StreamReceiver`], which frame messages on the
//! stream's two halves (see [`framing`](crate::framing) for the bytes on
//! the wire). What is left to the plugin is its addresses: binding,
//! connecting, and naming peers.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, TcpListener, TcpStream};

use crate::framing::{length_prefix, DeframeError, Deframer, MAX_FRAMED_MESSAGE, PREAMBLE};
use crate::transport::{Connection, Listener, MessageReceiver, MessageSender};
use crate::{Address, Batch, Capabilities, TransportError};

/// Messages up to this size are copied into one buffer and written with one
/// `write`; larger ones are written with vectored writes, without a copy.
const COPY_THRESHOLD: usize = 16 * 1024;

/// A sender keeps a write buffer up to this size between batches.
const MAX_KEPT_SCRATCH: usize = 1 << 20;

/// The sending half of a framed byte stream.
#[derive(Debug)]
pub struct StreamSender<W> {
    io: W,
    peer: Address,
    max: usize,
    preamble_sent: bool,
    broken: bool,
    scratch: Vec<u8>,
}

impl<W> StreamSender<W> {
    /// Wraps the write half of a stream to `peer`, refusing messages over `max`.
    pub fn new(io: W, peer: Address, max: usize) -> Self {
        Self {
            io,
            peer,
            max: max.min(MAX_FRAMED_MESSAGE),
            preamble_sent: false,
            broken: false,
            scratch: Vec::new(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamSender<W> {
    async fn write_message(&mut self, parts: &[&[u8]], len: usize) -> std::io::Result<()> {
        let prefix = length_prefix(len).unwrap_or_default();
        let preamble: &[u8] = if self.preamble_sent { &[] } else { &PREAMBLE };
        if len <= COPY_THRESHOLD {
            self.scratch.clear();
            self.scratch.extend_from_slice(preamble);
            self.scratch.extend_from_slice(&prefix);
            for p in parts {
                self.scratch.extend_from_slice(p);
            }
            self.io.write_all(&self.scratch).await?;
        } else {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() + 2);
            slices.push(IoSlice::new(preamble));
            slices.push(IoSlice::new(&prefix));
            slices.extend(parts.iter().map(|p| IoSlice::new(p)));
            let mut bufs: &mut [IoSlice<'_>] = &mut slices;
            IoSlice::advance_slices(&mut bufs, 0);
            while !bufs.is_empty() {
                let n = self.io.write_vectored(bufs).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut bufs, n);
            }
        }
        self.preamble_sent = true;
        Ok(())
    }

    /// Writes every message of `batch`, each with its length prefix, in
    /// one buffer and one write.
    async fn write_batch(&mut self, batch: &Batch) -> std::io::Result<()> {
        self.scratch.clear();
        if !self.preamble_sent {
            self.scratch.extend_from_slice(&PREAMBLE);
        }
        for message in batch {
            self.scratch
                .extend_from_slice(&length_prefix(message.len()).unwrap_or_default());
            self.scratch.extend_from_slice(message);
        }
        self.io.write_all(&self.scratch).await?;
        self.preamble_sent = true;
        if self.scratch.capacity() > MAX_KEPT_SCRATCH {
            // A burst made it large: give the memory back.
            self.scratch = Vec::new();
        }
        Ok(())
    }
}

impl<W> StreamSender<W> {
    /// Until a write completes, a dropped future leaves the stream
    /// mid-message: the stream is marked broken before it starts, and the
    /// mark cleared once it is done.
    fn begin_write(&mut self) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::Closed {
                peer: self.peer.to_string(),
            });
        }
        self.broken = true;
        Ok(())
    }

    fn end_write(&mut self, written: std::io::Result<()>) -> Result<(), TransportError> {
        match written {
            Ok(()) => {
                self.broken = false;
                Ok(())
            }
            Err(source) => Err(TransportError::Io {
                peer: self.peer.to_string(),
                source,
            }),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> MessageSender for StreamSender<W> {
    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn transmit(&mut self, parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
        self.begin_write()?;
        let written = self.write_message(parts, len).await;
        self.end_write(written)
    }

    async fn transmit_batch(&mut self, batch: &Batch) -> Result<(), TransportError> {
        self.begin_write()?;
        let written = self.write_batch(batch).await;
        self.end_write(written)
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        self.broken = true;
        self.io
            .shutdown()
            .await
            .map_err(|source| TransportError::Io {
                peer: self.peer.to_string(),
                source,
            })
    }
}

/// The receiving half of a framed byte stream.
#[derive(Debug)]
pub struct StreamReceiver<R> {
    io: R,
    peer: Address,
    deframer: Deframer,
}

impl<R> StreamReceiver<R> {
    /// Wraps the read half of a stream from `peer`, refusing messages over `max`.
    pub fn new(io: R, peer: Address, max: usize) -> Self {
        Self {
            io,
            peer,
            deframer: Deframer::new(max),
        }
    }

    fn malformed(&self, err: &DeframeError) -> TransportError {
        match *err {
            DeframeError::TooLarge { size, max } => TransportError::MessageTooLarge { size, max },
            DeframeError::BadPreamble(_) => TransportError::Malformed {
                peer: self.peer.to_string(),
                reason: err.to_string(),
            },
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> MessageReceiver for StreamReceiver<R> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            match self.deframer.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(self.malformed(&e)),
            }
            let n = self
                .io
                .read_buf(self.deframer.read_buf())
                .await
                .map_err(|source| TransportError::Io {
                    peer: self.peer.to_string(),
                    source,
                })?;
            if n == 0 {
                if self.deframer.is_idle() {
                    return Ok(None);
                }
                return Err(TransportError::Malformed {
                    peer: self.peer.to_string(),
                    reason: format!("the connection closed after {}", self.deframer.progress()),
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A connection and a listener over any byte stream.
// ---------------------------------------------------------------------------

/// A byte stream that splits into a read half and a write half, each usable
/// from its own task.
///
/// Sockets split into owned halves without a lock (`TcpStream` and, on
/// Unix, `UnixStream` implement it with `into_split`). A stream that has no
/// owned halves (a TLS stream, a `DuplexStream`) goes in as the pair that
/// [`tokio::io::split`] makes of it: a `(read, write)` pair is a
/// `SplitStream` too.
pub trait SplitStream: Send + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// Splits the stream.
    fn split_stream(self) -> (Self::Read, Self::Write);
}

impl SplitStream for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = tcp::OwnedWriteHalf;

    fn split_stream(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

#[cfg(unix)]
impl SplitStream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    fn split_stream(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl<R, W> SplitStream for (R, W)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Read = R;
    type Write = W;

    fn split_stream(self) -> (R, W) {
        self
    }
}

/// A connection over a byte stream: what a byte-stream plugin returns from
/// `connect` and `accept`. It splits into a [`StreamSender`] and a
/// [`StreamReceiver`], which frame messages on the stream's two halves.
///
/// ```
/// use courier_transport::stream::StreamConnection;
/// use courier_transport::{Address, Connection, MessageReceiver, MessageSender};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), courier_transport::TransportError> {
/// let (a, b) = tokio::io::duplex(4096);
/// let peer: Address = "pipe://demo".parse()?;
/// // A DuplexStream has no owned halves: hand over tokio's split of it.
/// let a = StreamConnection::new(tokio::io::split(a), peer.clone(), 1 << 20);
/// let b = StreamConnection::new(tokio::io::split(b), peer, 1 << 20);
/// let ((mut tx, _), (_, mut rx)) = (a.split(), b.split());
/// tx.send(&[b"hello, ", b"world"]).await?;
/// assert_eq!(&rx.recv().await?.unwrap()[..], b"hello, world");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StreamConnection<S> {
    stream: S,
    peer: Address,
    max: usize,
    capabilities: Capabilities,
}

impl<S> StreamConnection<S> {
    /// A connection over `stream` to `peer`, refusing messages over `max`
    /// bytes both ways. It offers no [capabilities](crate::capability).
    pub fn new(stream: S, peer: Address, max: usize) -> Self {
        Self {
            stream,
            peer,
            max,
            capabilities: Capabilities::default(),
        }
    }

    /// The same connection, offering `capabilities`.
    #[must_use]
    pub fn with_capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// The stream, to read its settings or peer credentials.
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

impl<S: SplitStream> Connection for StreamConnection<S> {
    type Sender = StreamSender<S::Write>;
    type Receiver = StreamReceiver<S::Read>;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (Self::Sender, Self::Receiver) {
        let (read, write) = self.stream.split_stream();
        (
            StreamSender::new(write, self.peer.clone(), self.max),
            StreamReceiver::new(read, self.peer, self.max),
        )
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
}

/// A listening socket that yields byte streams: what [`StreamListener`]
/// accepts from. Implemented for tokio's `TcpListener`; a plugin implements
/// it for its own socket type (the `unix` plugin's also removes its socket
/// file when dropped).
pub trait StreamAccept: Send + 'static {
    /// The streams it yields.
    type Stream: SplitStream;

    /// Waits for the next stream, and says who is at the other end: the
    /// plugin part of the peer's address (`127.0.0.1:50312`).
    fn accept_stream(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

impl StreamAccept for TcpListener {
    type Stream = TcpStream;

    async fn accept_stream(&mut self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = self.accept().await?;
        Ok((stream, peer.to_string()))
    }
}

/// A [`Listener`] of [`StreamConnection`]s: a listening socket, the address
/// peers connect to, and the maximum message size of its connections.
///
/// The peer of an accepted connection is named under the listener's
/// protocol (`tcp://127.0.0.1:50312`). [`StreamListener::on_accept`] sets
/// up each accepted stream before it becomes a connection (socket options
/// such as `TCP_NODELAY`).
pub struct StreamListener<L: StreamAccept> {
    socket: L,
    local_addr: Address,
    max: usize,
    setup: Option<Setup<L::Stream>>,
}

/// What [`StreamListener::on_accept`] was given.
type Setup<S> = Box<dyn Fn(&S) + Send + Sync>;

impl<L: StreamAccept> StreamListener<L> {
    /// A listener accepting from `socket`, which peers reach at
    /// `local_addr`; its connections refuse messages over `max` bytes.
    pub fn new(socket: L, local_addr: Address, max: usize) -> Self {
        Self {
            socket,
            local_addr,
            max,
            setup: None,
        }
    }

    /// The same listener, calling `setup` on every stream it accepts, before
    /// the stream becomes a connection.
    #[must_use]
    pub fn on_accept(mut self, setup: impl Fn(&L::Stream) + Send + Sync + 'static) -> Self {
        self.setup = Some(Box::new(setup));
        self
    }

    /// The listening socket.
    pub fn socket(&self) -> &L {
        &self.socket
    }
}

impl<L: StreamAccept + fmt::Debug> fmt::Debug for StreamListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamListener")
            .field("socket", &self.socket)
            .field("local_addr", &self.local_addr.to_string())
            .field("max", &self.max)
            .field("on_accept", &self.setup.is_some())
            .finish()
    }
}

impl<L: StreamAccept> Listener for StreamListener<L> {
    type Connection = StreamConnection<L::Stream>;

    fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    async fn accept(&mut self) -> Result<Self::Connection, TransportError> {
        let (stream, peer) =
            self.socket
                .accept_stream()
                .await
                .map_err(|source| TransportError::Listen {
                    address: self.local_addr.to_string(),
                    source,
                })?;
        if let Some(setup) = &self.setup {
            setup(&stream);
        }
        let peer = self.local_addr.with_rest(peer);
        Ok(StreamConnection::new(stream, peer, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Address {
        "test://pipe".parse().unwrap()
    }

    #[tokio::test]
    async fn round_trips_small_and_large_messages() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut tx = StreamSender::new(a, peer(), 1 << 22);
        let mut rx = StreamReceiver::new(b, peer(), 1 << 22);
        let big = vec![0xabu8; 1 << 21];
        let writer = tokio::spawn(async move {
            tx.send(&[b"head", b"er"]).await.unwrap();
            tx.send(&[]).await.unwrap();
            tx.send(&[&big[..10], &big[10..]]).await.unwrap();
            tx.close().await.unwrap();
        });
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"header");
        assert_eq!(rx.recv().await.unwrap().unwrap().len(), 0);
        let m = rx.recv().await.unwrap().unwrap();
        assert_eq!(m.len(), 1 << 21);
        assert!(m.iter().all(|&b| b == 0xab));
        assert!(rx.recv().await.unwrap().is_none());
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_batch_is_one_write_of_framed_messages() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut tx = StreamSender::new(a, peer(), 1 << 20);
        let mut rx = StreamReceiver::new(b, peer(), 1 << 20);
        let mut batch = Batch::new();
        batch.push(&[b"one"]);
        batch.push(&[]);
        batch.push(&[b"th", b"ree"]);
        // The first batch carries the preamble; a single message after it
        // does not repeat it.
        tx.send_batch(&batch).await.unwrap();
        tx.send(&[b"four"]).await.unwrap();
        for want in [&b"one"[..], b"", b"three", b"four"] {
            assert_eq!(&rx.recv().await.unwrap().unwrap()[..], want);
        }
        batch.push(&[&[0u8; 2 << 20]]);
        let err = tx.send_batch(&batch).await.unwrap_err();
        assert!(
            matches!(err, TransportError::MessageTooLarge { .. }),
            "{err}"
        );
        tx.send(&[b"still usable"]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"still usable");
    }

    #[tokio::test]
    async fn oversized_send_writes_nothing_and_keeps_the_stream() {
        let (a, b) = tokio::io::duplex(1024);
        let mut tx = StreamSender::new(a, peer(), 16);
        let mut rx = StreamReceiver::new(b, peer(), 16);
        let err = tx.send(&[&[0u8; 17]]).await.unwrap_err();
        assert!(matches!(
            err,
            TransportError::MessageTooLarge { size: 17, max: 16 }
        ));
        tx.send(&[b"fits"]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"fits");
    }

    #[derive(Debug)]
    struct NoMemory;

    impl crate::DirectMemory for NoMemory {
        fn read_peer(&self, _: &[crate::PeerRange], _: &mut [u8]) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn write_peer(&self, _: &[crate::PeerRange], _: &[u8]) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    #[tokio::test]
    async fn a_stream_connection_offers_what_it_is_given_and_splits_a_pair() {
        let (a, b) = tokio::io::duplex(1024);
        let plain = StreamConnection::new(tokio::io::split(a), peer(), 16);
        assert!(plain.capabilities().direct_memory.is_none());
        let offered = StreamConnection::new(tokio::io::split(b), peer(), 16).with_capabilities(
            Capabilities::with_direct_memory(std::sync::Arc::new(NoMemory)),
        );
        assert!(offered.capabilities().direct_memory.is_some());
        let ((mut tx, _), (_, mut rx)) = (plain.split(), offered.split());
        assert_eq!(tx.max_message_size(), 16);
        tx.send(&[b"through ", b"the pair"]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"through the pair");
    }

    #[tokio::test]
    async fn a_stream_listener_names_peers_under_its_protocol_and_sets_them_up() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bound = socket.local_addr().unwrap();
        let local = Address::new("demo", bound.to_string()).unwrap();
        let mut listener = StreamListener::new(socket, local, 64).on_accept(|s: &TcpStream| {
            s.set_nodelay(true).unwrap();
        });
        let (client, server) = tokio::join!(TcpStream::connect(bound), listener.accept());
        let (client, server) = (client.unwrap(), server.unwrap());
        let client_addr = client.local_addr().unwrap();
        assert_eq!(
            server.peer_addr().to_string(),
            format!("demo://{client_addr}")
        );
        assert!(server.stream().nodelay().unwrap());
        let (_, mut rx) = server.split();
        let (mut tx, _) = StreamConnection::new(client, peer(), 64).split();
        tx.send(&[b"hello"]).await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"hello");
    }

    #[tokio::test]
    async fn hang_up_mid_message_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut rx = StreamReceiver::new(b, peer(), 1024);
        let mut bytes = PREAMBLE.to_vec();
        bytes.extend_from_slice(&10u32.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        a.write_all(&bytes).await.unwrap();
        drop(a);
        let err = rx.recv().await.unwrap_err();
        assert!(err.to_string().contains("3 of 10 bytes"), "{err}");
    }
}
