//! In-process transport plugin for Courier: messages over tokio channels.
//!
//! `mem` connects engines that live in the same process, with no socket and
//! no system call: a fast transport for the unit tests of code built on
//! Courier, and the smallest complete plugin — the one to copy when writing
//! your own (`docs/writing-a-transport.md` walks through it).
//!
//! Addresses are `mem://<name>`. Listening on `mem://` picks a fresh name;
//! listening on a name in use fails with "address in use". Names live in a
//! process-wide table, so any engine of the process can connect to any
//! other; a dropped listener frees its name and refuses new connections.
//!
//! Each direction of a connection is a bounded channel of whole messages
//! (option `queue_messages`, default [`DEFAULT_QUEUE_MESSAGES`]): a sender
//! whose peer does not read waits for room, as on a socket.
//!
//! ```
//! use courier_mem::MemTransport;
//! use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let mem = MemTransport::new(1 << 20);
//! let mut listener = mem.listen(&"mem://".parse()?).await?;
//! let addr = listener.local_addr().clone();
//! let (client, server) = tokio::join!(mem.connect(&addr), listener.accept());
//! let (mut tx, _rx) = client?.split();
//! let (_tx, mut rx) = server?.split();
//! tx.send(&[b"ping"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"ping");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use courier_transport::{
    Address, Batch, Connection, DynTransport, Listener, MessageReceiver, MessageSender, Pacing,
    Plugin, PluginContext, Reach, Transport, TransportError,
};
use serde::Deserialize;
use tokio::sync::mpsc;

/// The plugin name used in `protocols.toml`.
pub const PLUGIN_NAME: &str = "mem";

/// Messages a direction holds before its sender waits.
pub const DEFAULT_QUEUE_MESSAGES: usize = 128;

/// The `mem` plugin: builds [`MemTransport`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemPlugin;

impl Plugin for MemPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        // Unknown options (typos) are refused.
        let MemOptions { queue_messages } = ctx.options(PLUGIN_NAME)?;
        if queue_messages == 0 {
            return Err(TransportError::invalid_options(
                PLUGIN_NAME,
                "option 'queue_messages' must be at least 1, not 0",
            ));
        }
        Ok(Arc::new(MemTransport {
            base: Address::new(ctx.protocol, "")?,
            max: ctx.max_message_size,
            queue: queue_messages,
        }))
    }

    fn reach(&self) -> Reach {
        Reach::Process
    }
}

/// The plugin's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MemOptions {
    /// Messages a direction holds before its sender waits.
    queue_messages: usize,
}

impl Default for MemOptions {
    fn default() -> Self {
        Self {
            queue_messages: DEFAULT_QUEUE_MESSAGES,
        }
    }
}

/// Messages over in-process channels.
#[derive(Debug, Clone)]
pub struct MemTransport {
    /// `<protocol>://`, the template of every address this transport prints.
    base: Address,
    max: usize,
    queue: usize,
}

impl MemTransport {
    /// A transport for protocol `mem`, refusing messages over
    /// `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            base: Address::new(PLUGIN_NAME, "")
                .unwrap_or_else(|_| unreachable!("'mem' is a valid name")),
            max: max_message_size,
            queue: DEFAULT_QUEUE_MESSAGES,
        }
    }
}

/// The two channel ends one side of a connection holds.
type Half = (mpsc::Sender<Packet>, mpsc::Receiver<Packet>);

/// A connection on its way to a listener: the listener's half, and the
/// address the connecting side goes by.
type Incoming = (Half, Address);

/// Listening names: each with its listener's generation and the channel
/// that takes connections to it.
type Names = HashMap<String, (u64, mpsc::UnboundedSender<Incoming>)>;

/// The process-wide table of listening names.
fn names() -> &'static Mutex<Names> {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    NAMES.get_or_init(Mutex::default)
}

/// Unique numbers for fresh names, listener generations and client names.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A random number drawn once per process. Fresh names carry it, so a
/// name printed in an address set (`docs/transports.md`, "Address sets")
/// and read by another process, where it means nothing, cannot name one
/// of that process's own listeners by chance.
fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

fn check_name(addr: &Address) -> Result<(), TransportError> {
    let bad = addr
        .rest()
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')));
    match bad {
        None => Ok(()),
        Some(c) => Err(TransportError::invalid_address(
            addr,
            format!("a mem name holds letters, digits and -_./ only, not '{c}'"),
        )),
    }
}

impl Transport for MemTransport {
    type Listener = MemListener;
    type Connection = MemConnection;

    fn protocol(&self) -> &str {
        self.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<MemListener, TransportError> {
        check_name(addr)?;
        let name = if addr.rest().is_empty() {
            format!("anon-{}-{:016x}", next_id(), process_nonce())
        } else {
            addr.rest().to_owned()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = next_id();
        let mut table = names().lock().unwrap_or_else(|p| p.into_inner());
        // A name whose listener is gone (its channel closed) is free again.
        if table.get(&name).is_some_and(|(_, t)| !t.is_closed()) {
            return Err(TransportError::Listen {
                address: addr.to_string(),
                source: io::Error::new(io::ErrorKind::AddrInUse, "the mem name is in use"),
            });
        }
        table.insert(name.clone(), (generation, tx));
        Ok(MemListener {
            local: self.base.with_rest(name),
            generation,
            incoming: rx,
            max: self.max,
        })
    }

    async fn connect(&self, addr: &Address) -> Result<MemConnection, TransportError> {
        check_name(addr)?;
        let refused = |why: &str| TransportError::Connect {
            address: addr.to_string(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned()),
        };
        let listener = names()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(addr.rest())
            .map(|(_, tx)| tx.clone())
            .ok_or_else(|| refused("no mem listener of that name"))?;
        // Two channels, one per direction; each side keeps one sender and
        // the other direction's receiver.
        let (to_server, server_rx) = mpsc::channel(self.queue);
        let (to_client, client_rx) = mpsc::channel(self.queue);
        let client_name = self.base.with_rest(format!("client-{}", next_id()));
        listener
            .send(((to_client, server_rx), client_name))
            .map_err(|_| refused("the mem listener was dropped"))?;
        Ok(MemConnection::new(
            addr.with_protocol(self.base.protocol()),
            (to_server, client_rx),
            self.max,
        ))
    }
}

/// A listening name; dropping it frees the name.
#[derive(Debug)]
pub struct MemListener {
    local: Address,
    generation: u64,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    max: usize,
}

impl Listener for MemListener {
    type Connection = MemConnection;

    fn local_addr(&self) -> &Address {
        &self.local
    }

    async fn accept(&mut self) -> Result<MemConnection, TransportError> {
        // The table holds a sender, so the channel never ends while we live.
        match self.incoming.recv().await {
            Some((half, peer)) => Ok(MemConnection::new(peer, half, self.max)),
            None => Err(TransportError::Closed {
                peer: self.local.to_string(),
            }),
        }
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        let mut table = names().lock().unwrap_or_else(|p| p.into_inner());
        // Remove the name only if it is still ours (not re-bound since).
        if table
            .get(self.local.rest())
            .is_some_and(|(g, _)| *g == self.generation)
        {
            table.remove(self.local.rest());
        }
    }
}

/// One end of an in-process connection.
#[derive(Debug)]
pub struct MemConnection {
    peer: Address,
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
    max: usize,
}

impl MemConnection {
    fn new(peer: Address, (tx, rx): Half, max: usize) -> Self {
        Self { peer, tx, rx, max }
    }
}

impl Connection for MemConnection {
    type Sender = MemSender;
    type Receiver = MemReceiver;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (MemSender, MemReceiver) {
        (
            MemSender {
                peer: self.peer.clone(),
                tx: Some(self.tx),
                max: self.max,
            },
            MemReceiver {
                rx: self.rx,
                max: self.max,
                batch: None,
            },
        )
    }
}

/// The sending direction: `None` once closed.
#[derive(Debug)]
pub struct MemSender {
    peer: Address,
    tx: Option<mpsc::Sender<Packet>>,
    max: usize,
}

impl MessageSender for MemSender {
    fn max_message_size(&self) -> usize {
        self.max
    }

    /// A message handed over is a packet on a channel, which the peer sees at once:
    /// holding it back to batch it would only keep the peer waiting.
    fn pacing(&self) -> Pacing {
        Pacing::Eager
    }

    // `send` has refused a message over the maximum before this is called.
    async fn transmit(&mut self, parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
        let mut message = BytesMut::with_capacity(len);
        for part in parts {
            message.extend_from_slice(part);
        }
        self.put(Packet::One(message.freeze())).await
    }

    /// A batch is one packet: one copy, one channel operation, one wake-up.
    async fn transmit_batch(&mut self, batch: &Batch) -> Result<(), TransportError> {
        if let (1, Some(message)) = (batch.len(), batch.iter().next()) {
            return self.transmit(&[message], message.len()).await;
        }
        let mut data = BytesMut::with_capacity(batch.bytes());
        let mut ends = Vec::with_capacity(batch.len());
        for message in batch {
            data.extend_from_slice(message);
            ends.push(data.len());
        }
        self.put(Packet::Many {
            data: data.freeze(),
            ends,
        })
        .await
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        // Dropping the channel's sender: the peer reads what was sent, then
        // `None`.
        self.tx = None;
        Ok(())
    }
}

impl MemSender {
    /// Hands a packet to the channel. Waiting here is the backpressure;
    /// dropping this future part way sends nothing (tokio's `Sender::send`
    /// is cancel-safe).
    async fn put(&mut self, packet: Packet) -> Result<(), TransportError> {
        let tx = self.tx.as_ref().ok_or_else(|| TransportError::Closed {
            peer: self.peer.to_string(),
        })?;
        tx.send(packet).await.map_err(|_| TransportError::Io {
            peer: self.peer.to_string(),
            source: io::Error::new(io::ErrorKind::BrokenPipe, "the peer dropped the connection"),
        })
    }
}

/// What travels on a direction's channel: one message, or a batch of them
/// in one buffer (`ends` are their ends in `data`).
#[derive(Debug)]
enum Packet {
    One(Bytes),
    Many { data: Bytes, ends: Vec<usize> },
}

/// The receiving direction.
#[derive(Debug)]
pub struct MemReceiver {
    rx: mpsc::Receiver<Packet>,
    max: usize,
    /// The rest of a batch received: its buffer, the ends of its messages,
    /// and how many were taken.
    batch: Option<(Bytes, Vec<usize>, usize)>,
}

impl MemReceiver {
    /// The next message of the batch being read, if one is left.
    fn next_of_batch(&mut self) -> Option<Bytes> {
        let (data, ends, taken) = self.batch.as_mut()?;
        let start = taken.checked_sub(1).map_or(0, |i| ends[i]);
        let Some(&end) = ends.get(*taken) else {
            self.batch = None;
            return None;
        };
        *taken += 1;
        Some(data.slice(start..end))
    }
}

impl MessageReceiver for MemReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let message = loop {
            if let Some(m) = self.next_of_batch() {
                break m;
            }
            // Cancel-safe: a packet is only taken out by a completed `recv`,
            // and the rest of a batch stays here.
            match self.rx.recv().await {
                Some(Packet::One(m)) => break m,
                Some(Packet::Many { data, ends }) => self.batch = Some((data, ends, 0)),
                // The peer closed, or dropped its end: a clean end either way.
                None => return Ok(None),
            }
        };
        // The two ends may have been built with different maxima.
        if message.len() > self.max {
            return Err(TransportError::MessageTooLarge {
                size: message.len() as u64,
                max: self.max,
            });
        }
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_name_in_use_is_refused_and_freed_by_its_listener() {
        let mem = MemTransport::new(1024);
        let first = mem.listen(&addr("mem://taken-name")).await.unwrap();
        let err = mem.listen(&addr("mem://taken-name")).await.unwrap_err();
        assert!(
            matches!(err, TransportError::Listen { .. }) && err.to_string().contains("in use"),
            "{err}"
        );
        drop(first);
        let again = mem.listen(&addr("mem://taken-name")).await.unwrap();
        assert_eq!(again.local_addr().to_string(), "mem://taken-name");
    }

    #[tokio::test]
    async fn unknown_names_are_refused_and_bad_names_are_invalid() {
        let mem = MemTransport::new(1024);
        let err = mem.connect(&addr("mem://nobody-here")).await.unwrap_err();
        assert!(
            err.to_string().contains("mem://nobody-here")
                && err.to_string().contains("no mem listener"),
            "{err}"
        );
        for bad in ["mem://a b", "mem://x?y"] {
            let err = mem.listen(&addr(bad)).await.unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidAddress { .. }),
                "{bad}: {err}"
            );
            let err = mem.connect(&addr(bad)).await.unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidAddress { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_sender_waits_for_room_when_the_peer_does_not_read() {
        let mem = MemTransport {
            queue: 2,
            ..MemTransport::new(1024)
        };
        let mut listener = mem.listen(&addr("mem://")).await.unwrap();
        let target = listener.local_addr().clone();
        let (client, server) = tokio::join!(mem.connect(&target), listener.accept());
        let (mut tx, _crx) = client.unwrap().split();
        let (_stx, mut rx) = server.unwrap().split();
        tx.send(&[b"1"]).await.unwrap();
        tx.send(&[b"2"]).await.unwrap();
        // The queue is full: a third send does not complete until a read.
        let mut third = Box::pin(tx.send(&[b"3"]));
        assert!(futures_poll_once(&mut third).await.is_none());
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"1");
        third.await.unwrap();
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"2");
        assert_eq!(&rx.recv().await.unwrap().unwrap()[..], b"3");
    }

    /// Polls `fut` once: `Some` if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
