//! Shared-memory transport plugin for Courier: processes on one host
//! exchange messages through rings in a shared memory segment, and only
//! enter the kernel when one of them sleeps.
//!
//! Addresses are `shm://<name>`. A name is looked up in Linux's abstract
//! socket namespace (no file, nothing to clean up), or, if it starts with
//! `/`, is a socket path (`shm:///run/svc.sock`; the file is made
//! owner-only and removed when the listener is dropped). Listening on
//! `shm://` picks a fresh name, `courier-<pid>-<counter>-<random>`.
//! Servers accept clients of their own user (and root) only.
//!
//! ```
//! use courier_shm::ShmTransport;
//! use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let shm = ShmTransport::new(1 << 20);
//! let mut listener = shm.listen(&"shm://".parse()?).await?;
//! let addr = listener.local_addr().clone(); // shm://courier-<pid>-...
//! let (client, server) = tokio::join!(shm.connect(&addr), listener.accept());
//! let (mut tx, _rx) = client?.split();
//! let (_tx, mut rx) = server?.split();
//! tx.send(&[b"ping"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"ping");
//! tx.close().await?;
//! assert!(rx.recv().await?.is_none());
//! # Ok(()) }
//! ```
//!
//! # Connection set-up
//!
//! The unix socket only sets connections up (and then tells each side when
//! the other is gone). The connecting client creates the connection's
//! segment: a memfd (`memfd_create`, not a file in `/dev/shm`, so nothing is
//! left behind whatever happens), sized with `ftruncate`, its header
//! written, then sealed (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) so
//! that neither side can shrink it under the other's mapping. It maps it,
//! creates four eventfds, and passes the five descriptors with
//! `SCM_RIGHTS`. The server checks, before it maps anything, the header
//! (magic, version, offsets, a ring size that is a power of two between
//! 4 KiB and 1 GiB, the total size), that the seals are there, and that the
//! file's size (`fstat`) is the one the header announces; a malformed
//! segment is refused with a reason (the client's `connect` fails with it,
//! the server's `accept` returns an error for that connection and the
//! listener keeps serving). Both sides close the memfd once mapped; the
//! mapping is unmapped when the last half of the connection is dropped.
//! A segment is only ever passed to the one server, so a client cannot reach
//! another client's.
//!
//! # Segment layout
//!
//! ```text
//! offset            size        contents
//! 0                 64          header: "CRSHMSEG", version 1, control-block offset
//!                               and length, data offset, ring size, segment size
//!                               (little-endian)
//! 64                5 x 64      ring 0 control block (client -> server)
//! 384               5 x 64      ring 1 control block (server -> client)
//! 4096              ring_size   ring 0 data
//! 4096 + ring_size  ring_size   ring 1 data
//! ```
//!
//! A control block is five cache lines (`#[repr(C, align(64))]`), so that
//! what one side writes never shares a line with what the other polls:
//! `head` (bytes published, producer-written), `tail` (bytes consumed,
//! consumer-written), `data_waiting` (the consumer sleeps), `room_waiting`
//! (the producer sleeps), and `closed` / `consumer_gone`.
//!
//! # Ring protocol
//!
//! Each direction is a single-producer single-consumer byte ring. `head` and
//! `tail` are ever-growing 64-bit byte counters; byte `i` is at offset
//! `i % ring_size`. The producer copies bytes into `[head, tail + ring_size)`
//! and publishes them with a `Release` store of `head`; the consumer reads
//! `head` with `Acquire`, copies `[tail, head)` out and gives the room back
//! with a `Release` store of `tail`. A message is `[u32 little-endian
//! length][bytes]`, written wherever the ring is, wrapping around its end.
//! A message larger than the free space goes in chunks: the producer writes
//! what fits, publishes (at least every 64 KiB, so the consumer copies out
//! while the producer copies in), waits for room and goes on; the consumer
//! checks the announced length against the maximum message size, allocates
//! the message once, and fills it as chunks arrive. Indices read from the
//! peer are checked (they only move forward, and never past what the other
//! side allows): a corrupt ring kills the connection with an error, never
//! reads outside it.
//!
//! # Notification protocol
//!
//! A side with nothing to do (a receiver facing an empty ring, a sender
//! facing a full one) first **spins** for `spin_us` microseconds
//! (`std::hint::spin_loop`), checking the ring: while the peer is busy,
//! messages flow without a single system call. Every 2 µs of spinning it
//! yields the CPU (`sched_yield`: should the peer wait for this very core,
//! it runs), and every 20 µs it yields to tokio (other tasks of the thread
//! run). Before the first check it yields once, so that what the last
//! message woke (the caller of a call, a handler) runs first; on a
//! current-thread runtime that yield goes through tokio's `yield_now`, or
//! a caller awaiting in `block_on`, which is no task, would wait for the
//! 20 µs yield. Then it **parks**: it announces it sleeps by writing a new episode
//! number into its word of the control block (`data_waiting` or
//! `room_waiting`, which only it writes), issues a `SeqCst` fence, checks the
//! ring once more, and only then waits on its eventfd (and on the socket,
//! for the peer's death). The other side, after each publication (or
//! release), issues a `SeqCst` fence, reads that word, and signals the
//! eventfd only if it holds an episode it has not signalled yet (so one
//! signal per sleep, however many publications). The two fences make it
//! impossible for the re-check to miss the publication *and* the publisher
//! to miss the announcement, so no wake-up is lost; the crate's loom model
//! (`cargo test -p courier-shm --features loom --release loom`) checks it.
//! A busy peer thus costs one fence per message; the system call (about
//! 1 µs, plus the 25-30 µs a cross-core wake-up of a sleeping thread takes on
//! small VMs) is only paid when a side really sleeps.
//!
//! Each waiter has its own eventfd (four per connection: data and room for
//! each ring), passed with the memfd: two waiters of one process (the
//! receiver half waiting for data, the sender half waiting for room, often
//! on different tasks) sharing wake-up bytes on the one socket could consume
//! each other's, unless a third task sorted them out, at the price of a
//! task hop per wake-up. The socket is left to say one thing, that the peer
//! is gone, which both halves see because nobody reads it.
//!
//! # Close and peer death
//!
//! [`MessageSender::close`](courier_transport::MessageSender::close) (or
//! dropping the sender) publishes everything and sets `closed`: the peer
//! receives every message, then `Ok(None)`. Dropping a receiver sets
//! `consumer_gone`: the peer's sends fail instead of waiting for room. A
//! peer that dies sets neither, but its end of the socket closes: a receiver
//! parked on an empty ring, or a sender waiting for room, sees the socket
//! readable and fails with an error naming the peer (after delivering the
//! whole messages that were in the ring). Sends also check the socket's
//! readiness (no system call unless tokio saw it readable). A receiver that
//! fails (a corrupt ring, an oversized message) sets `consumer_gone` and
//! wakes this side's own sender if it waits for room.
//!
//! A send that has to wait for room can leave part of its message in the
//! ring if its future is dropped: the sender is then broken (further sends
//! fail with [`TransportError::Closed`]) and the peer's receiver fails when
//! it sees the close after the partial message, as the transport contract
//! allows. A `recv` future can be dropped at any point: the message being
//! assembled is kept in the [`ShmReceiver`].
//!
//! # Options
//!
//! * `ring_size` (bytes, default 1 MiB): the size of each direction's ring,
//!   a power of two between 4 KiB and 1 GiB. Chosen by the connecting side.
//! * `spin_us` (microseconds, default 50): how long a side spins before it
//!   parks; `0` parks at once.
//!
//! The transport needs a tokio runtime with I/O and timers enabled (the
//! set-up handshake is bounded by a 10 s timeout on both sides).
//!
//! # Performance
//!
//! On the project's 2-core x86_64 VM (release build; `src/bench.rs` and
//! `tests/cross_process.rs` print these, see their docs for the commands):
//!
//! | 64 B round trip | p50 |
//! |---|---:|
//! | raw rings and wake-ups, spinning (two threads) | 0.40-0.44 µs |
//! | `Transport` trait, spinning (two threads / two processes) | 0.55-0.60 µs / 0.52 µs |
//! | the same with `spin_us = 0` (every wait parks) | 62-68 µs |
//!
//! Messages of 1 MiB move at about 16 000 MiB/s, half the single-core
//! `memcpy` bandwidth of 1 MiB buffers (31 000 MiB/s): each byte is copied
//! twice, into the ring and out of it, on two cores at once. A spin shorter
//! than the peer's turnaround (a handler's work) costs a wake-up: with 40 µs
//! of work per request, a round trip takes 41 µs with `spin_us = 50`, 71 µs
//! with 20. On a loaded machine where both sides share one core, spinning
//! yields the CPU every 2 µs, so a round trip takes about 5 µs (3.5 µs
//! without spinning).

// memfd, eventfd, `SCM_RIGHTS` over abstract sockets and
// `process_vm_readv`: Linux only. Elsewhere the crate is empty, so that a
// workspace build (`cargo test --workspace`) still compiles there; the
// `courier` crate depends on it on Linux only.
#![cfg(target_os = "linux")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod handshake;
mod listener;
mod ring;
mod segment;
mod shared;
mod sync;

#[cfg(feature = "loom")]
mod loom_model;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use courier_transport::{Address, DynTransport, Plugin, PluginContext, Transport, TransportError};
use serde::Deserialize;
use tokio::net::UnixStream;

pub use conn::{ShmConnection, ShmReceiver, ShmSender};
pub use listener::ShmListener;

use conn::Settings;
use listener::{SocketName, HANDSHAKE_TIMEOUT};
use segment::Layout;

/// The plugin name used in `protocols.toml`.
pub const PLUGIN_NAME: &str = "shm";

/// Default size of each direction's ring, in bytes.
pub const DEFAULT_RING_SIZE: usize = 1 << 20;

/// Default time a side spins before it parks.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Longest spin accepted (one second).
const MAX_SPIN_US: u64 = 1_000_000;

/// The `shm` plugin: builds [`ShmTransport`]s.
///
/// Options (see the [crate docs](crate#options)): `ring_size`, `spin_us`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShmPlugin;

/// The plugin's options; absent ones keep the transport's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ShmOptions {
    ring_size: Option<u64>,
    spin_us: Option<u64>,
}

impl Plugin for ShmPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn reach(&self) -> courier_transport::Reach {
        courier_transport::Reach::Host
    }

    /// Shared memory is the fastest way to a peer on this host.
    fn path_rank(&self) -> u8 {
        10
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        let options: ShmOptions = ctx.options(PLUGIN_NAME)?;
        let mut transport = ShmTransport::new(ctx.max_message_size);
        transport.base = Address::new(ctx.protocol, "")?;
        if let Some(size) = options.ring_size {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            transport = transport.with_ring_size(size)?;
        }
        if let Some(us) = options.spin_us {
            if us > MAX_SPIN_US {
                return Err(TransportError::invalid_options(
                    PLUGIN_NAME,
                    format!("option 'spin_us' is {us}, at most {MAX_SPIN_US} (one second)"),
                ));
            }
            transport = transport.with_spin(Duration::from_micros(us));
        }
        Ok(Arc::new(transport))
    }
}

/// Messages through shared-memory rings between processes of one host.
#[derive(Debug, Clone)]
pub struct ShmTransport {
    base: Address,
    max: usize,
    layout: Layout,
    spin: Duration,
}

impl ShmTransport {
    /// A transport for protocol `shm`, refusing messages over
    /// `max_message_size` bytes (at most `u32::MAX`, the length prefix's
    /// limit), with rings of [`DEFAULT_RING_SIZE`] and a spin of
    /// [`DEFAULT_SPIN`].
    pub fn new(max_message_size: usize) -> Self {
        Self {
            base: Address::new(PLUGIN_NAME, "")
                .unwrap_or_else(|_| unreachable!("'shm' is a valid name")),
            max: max_message_size.min(u32::MAX as usize),
            layout: Layout::new(DEFAULT_RING_SIZE)
                .unwrap_or_else(|| unreachable!("the default ring size is valid")),
            spin: DEFAULT_SPIN,
        }
    }

    /// Sets the size of each direction's ring for the connections this
    /// transport opens (a server takes the size each client chose).
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] unless `bytes` is a power of two
    /// between 4 KiB and 1 GiB.
    pub fn with_ring_size(mut self, bytes: usize) -> Result<Self, TransportError> {
        self.layout = Layout::new(bytes).ok_or_else(|| {
            TransportError::invalid_options(
                PLUGIN_NAME,
                format!(
                    "option 'ring_size' is {bytes}, it must be a power of two between {} and {}",
                    segment::MIN_RING,
                    segment::MAX_RING
                ),
            )
        })?;
        Ok(self)
    }

    /// Sets how long a side spins, checking its ring, before it parks
    /// (`Duration::ZERO`: park at once).
    #[must_use]
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self
    }

    /// The size of each direction's ring of the connections it opens.
    pub fn ring_size(&self) -> usize {
        self.layout.ring_size()
    }

    /// How long a side spins before it parks.
    pub fn spin(&self) -> Duration {
        self.spin
    }

    fn settings(&self) -> Settings {
        Settings {
            max: self.max,
            spin: self.spin,
        }
    }
}

impl Transport for ShmTransport {
    type Listener = ShmListener;
    type Connection = ShmConnection;

    fn protocol(&self) -> &str {
        self.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<ShmListener, TransportError> {
        let name = if addr.rest().is_empty() {
            SocketName::unique()
        } else {
            SocketName::parse(addr)?
        };
        let listener = listener::bind(&name)
            .await
            .map_err(|source| TransportError::Listen {
                address: addr.to_string(),
                source,
            })?;
        let local_addr = self.base.with_rest(name.rest());
        Ok(ShmListener::new(
            listener,
            &name,
            local_addr,
            self.settings(),
        ))
    }

    async fn connect(&self, addr: &Address) -> Result<ShmConnection, TransportError> {
        let name = SocketName::parse(addr)?;
        let connect_err = |source| TransportError::Connect {
            address: addr.to_string(),
            source,
        };
        let socket_addr = name.socket_addr().map_err(connect_err)?;
        let set_up = async {
            let socket = UnixStream::connect_addr(&socket_addr.into()).await?;
            handshake::client(socket, addr.clone(), self.layout, self.settings()).await
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, set_up).await {
            Ok(result) => result.map_err(connect_err),
            Err(_) => Err(connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no handshake answer within {HANDSHAKE_TIMEOUT:?}"),
            ))),
        }
    }
}
