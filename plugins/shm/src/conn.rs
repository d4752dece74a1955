//! An established connection: its two halves, and how they spin, park and
//! wake each other.
//!
//! # Parking: eventfds, with the socket as the liveness channel
//!
//! A side that must wait (a receiver for data, a sender for room) parks on
//! an eventfd registered with tokio (`AsyncFd`), *and* on the connection's
//! unix socket, which carries nothing after the handshake: when it becomes
//! readable, the peer hung up (end of file, reset — its process died, or it
//! dropped the connection) or broke the protocol.
//!
//! Why an eventfd per waiter rather than a wake-up byte on the socket: there
//! are two independent waiters per process and connection (the receiver
//! half waiting for data, the sender half waiting for room), usually on
//! different tasks. Bytes on one socket would have to be read by one of them
//! and could be consumed by the wrong one — a lost wake-up — unless a third
//! task demultiplexed them, which costs a task hop per wake-up. With one
//! eventfd per waiter (four per connection: data and room for each ring),
//! each waiter owns its channel, a burst of signals coalesces into one
//! counter, and writing an eventfd is cheaper than sending a byte. The
//! socket, never read after the handshake, stays readable once the peer is
//! gone, so both halves see the hang-up however they race (we only `peek`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_transport::{
    Address, Batch, Capabilities, Connection, DirectMemory, MessageReceiver, MessageSender, Pacing,
    PeerRange, TransportError,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::ring::{Consumer, Producer, RingError};
use crate::segment;
use crate::shared::{self, Direction, LocalBytes, RingReader, RingWriter};

/// A sender publishes at least every this many bytes of a large message, so
/// the receiver can copy one chunk while the next is written (both copies
/// run in parallel on two cores).
pub(crate) const PUBLISH_EVERY: usize = 64 * 1024;
/// Bytes of the length in front of each message.
const PREFIX_LEN: usize = 4;
/// A receiver gives room back at least every this many bytes.
pub(crate) const RELEASE_EVERY: usize = 64 * 1024;
/// While spinning, the clock is read once per this many checks of the ring.
const SPIN_CHECKS: u32 = 16;
/// While spinning, the thread yields the CPU (`sched_yield`) this often: if
/// the peer's thread waits for this core (a loaded machine, both sides on
/// one core), it runs instead of watching us spin. When the peer is on
/// another core it costs one cheap system call.
const THREAD_YIELD_EVERY: Duration = Duration::from_micros(2);
/// While spinning, the task yields to tokio this often, so that other tasks
/// of the same runtime thread (possibly the peer, in one process) run.
const TASK_YIELD_EVERY: Duration = Duration::from_micros(20);

/// Spins (checking `ready` with `spin_loop` hints in between) until it says
/// yes or `spin` has passed; returns whether it said yes.
async fn spin_until(
    spin: Duration,
    mut ready: impl FnMut() -> Result<bool, Broken>,
) -> Result<bool, Broken> {
    if spin.is_zero() {
        return Ok(false);
    }
    if ready()? {
        return Ok(true);
    }
    // Let what this thread just woke run first (in an engine: the caller
    // whose response was delivered, the handler of the request): it is what
    // produces the next message, and spinning before it would only delay it.
    yield_to_woken().await;
    let start = Instant::now();
    let mut next_thread_yield = start + THREAD_YIELD_EVERY;
    let mut next_task_yield = start + TASK_YIELD_EVERY;
    loop {
        for _ in 0..SPIN_CHECKS {
            if ready()? {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let now = Instant::now();
        if now.duration_since(start) >= spin {
            return Ok(false);
        }
        if now >= next_thread_yield {
            std::thread::yield_now();
            next_thread_yield = now + THREAD_YIELD_EVERY;
        }
        if now >= next_task_yield {
            // Not `tokio::task::yield_now` on a multi-thread runtime: it
            // defers the wake-up until this worker parks, and a worker that
            // then runs a task which blocks (a handler, a slow `BulkMemory`)
            // would hold this connection's reader with it. A task at the
            // back of the run queue can be stolen by an idle worker.
            yield_to_woken().await;
            next_task_yield = Instant::now() + TASK_YIELD_EVERY;
        }
    }
}

/// Yields once so that what this thread just woke runs before the spin.
///
/// On a multi-thread runtime, a task woken from this worker waits in its
/// local queue: [`YieldToTasks`] lets it run without a system call. On a
/// current-thread runtime, the caller may instead be the future given to
/// `block_on` (`#[tokio::main(flavor = "current_thread")]` awaiting
/// `engine.pull` in `main`), which is no task: tokio polls it only once the
/// run queue is empty, so a spinner that keeps re-queueing itself would
/// hold it back until the next [`TASK_YIELD_EVERY`]. Measured: 21 µs of a
/// 64 KiB direct bulk transfer's 26 µs went there. There, `yield_now`
/// defers this task behind the scheduler's next I/O driver poll, and the
/// `block_on` future runs first.
async fn yield_to_woken() {
    let current_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
    if current_thread {
        tokio::task::yield_now().await;
    } else {
        YieldToTasks(false).await;
    }
}

/// Yields once to the other tasks of this thread, without the I/O driver
/// poll that `tokio::task::yield_now` asks for (a system call, which would
/// cost more than the whole round trip here). Waking itself puts the task
/// at the back of the run queue; the scheduler still polls the driver on
/// its own schedule, so nothing starves.
struct YieldToTasks(bool);

impl std::future::Future for YieldToTasks {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// How a connection behaves, from the transport's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Largest message, in bytes (at most `u32::MAX`, the prefix's limit).
    pub(crate) max: usize,
    /// How long a side spins before it parks.
    pub(crate) spin: Duration,
}

/// What both halves of a connection share: the socket, the peer's name,
/// and what is known of the peer's death.
#[derive(Debug)]
struct Link {
    socket: UnixStream,
    peer: Address,
    /// The eventfd this side's sender parks on when it waits for room, so
    /// that a failing receiver can wake it (it then sees `gone`).
    sender_room: Arc<OwnedFd>,
    /// Why the peer is known to be gone, once it is.
    gone: OnceLock<(io::ErrorKind, String)>,
}

impl Link {
    fn gone(&self, kind: io::ErrorKind, what: String) -> io::Error {
        let (kind, what) = self.gone.get_or_init(|| (kind, what));
        io::Error::new(*kind, what.clone())
    }

    /// Checks the socket without blocking: `Err` once the peer is known to
    /// be gone. Costs no system call unless tokio saw the socket readable.
    fn check(&self) -> io::Result<()> {
        if let Some((kind, what)) = self.gone.get() {
            return Err(io::Error::new(*kind, what.clone()));
        }
        match self
            .socket
            .try_io(Interest::READABLE, || segment::peek(&self.socket))
        {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Ok(0) => Err(self.gone(
                io::ErrorKind::ConnectionAborted,
                "the peer hung up (its process exited or was killed, \
                 or it dropped the connection)"
                    .into(),
            )),
            Ok(_) => Err(self.gone(
                io::ErrorKind::InvalidData,
                "the peer wrote on the control socket, which carries nothing \
                 after the handshake"
                    .into(),
            )),
            Err(e) => Err(self.gone(e.kind(), format!("the control socket failed: {e}"))),
        }
    }
}

/// Registers an eventfd with tokio's reactor, for readability.
///
/// `AsyncFd::with_interest` is deprecated since tokio 1.54 in favour of an
/// `unsafe` constructor, because a generic `T: AsRawFd` could change or close
/// its descriptor behind tokio's back. An `OwnedFd` cannot: it keeps one
/// descriptor open until dropped, which is exactly what the new constructor's
/// safety contract asks. Using the safe form keeps `unsafe` out of this
/// module and works with every tokio the workspace allows (>= 1.40).
#[allow(deprecated)]
fn watch<T: AsRawFd>(efd: T) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(efd, Interest::READABLE)
}

/// Waits until `efd` is signalled or the socket becomes readable. `Ok` means
/// "look again" (it may be spurious); `Err` means the peer is gone.
async fn park<T: AsRawFd>(efd: &AsyncFd<T>, link: &Link) -> io::Result<()> {
    tokio::select! {
        biased;
        ready = efd.readable() => {
            // Reset the counter. If it was zero (stale readiness), `try_io`
            // clears tokio's readiness and the caller parks again.
            let _ = ready?.try_io(segment::drain);
            Ok(())
        }
        ready = link.socket.readable() => {
            ready?;
            link.check()
        }
    }
}

/// A failure of one half, before it is named after the peer.
#[derive(Debug)]
pub(crate) enum Broken {
    Ring(RingError),
    Io(io::Error),
    TooLarge(usize),
    Truncated { got: usize, len: usize },
}

impl From<RingError> for Broken {
    fn from(e: RingError) -> Self {
        Self::Ring(e)
    }
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Broken {
    fn named(self, peer: &Address, max: usize) -> TransportError {
        match self {
            Self::Ring(e) => TransportError::Malformed {
                peer: peer.to_string(),
                reason: e.to_string(),
            },
            Self::Io(source) => TransportError::Io {
                peer: peer.to_string(),
                source,
            },
            Self::TooLarge(size) => TransportError::MessageTooLarge {
                size: size as u64,
                max,
            },
            Self::Truncated { got, len } => TransportError::Malformed {
                peer: peer.to_string(),
                reason: format!("the peer closed its side after {got} of {len} bytes of a message"),
            },
        }
    }
}

/// An established shared-memory connection, before it is split.
///
/// Dropping it (or its halves) closes it in order: the peer receives what
/// was sent, then `Ok(None)`.
#[derive(Debug)]
pub struct ShmConnection {
    peer: Address,
    segment_id: u64,
    /// The peer's process id (from the socket's credentials), for the bulk
    /// fast path.
    peer_pid: Option<i32>,
    sender: ShmSender,
    receiver: ShmReceiver,
}

/// The four eventfds of a connection, in the order the client passes them:
/// data and room of ring 0 (client to server), data and room of ring 1.
pub(crate) type EventFds = [OwnedFd; 4];

impl ShmConnection {
    /// Builds the connection of one side: it produces ring `produce` (0 for
    /// the client, 1 for the server) and consumes the other.
    pub(crate) fn new(
        socket: UnixStream,
        peer: Address,
        rings: (RingWriter, RingReader, u64),
        efds: EventFds,
        produce: usize,
        settings: Settings,
    ) -> io::Result<Self> {
        let (writer, reader, segment_id) = rings;
        let peer_pid = socket.peer_cred().ok().and_then(|c| c.pid());
        let [data0, room0, data1, room1] = efds;
        // (wait for room, signal data) for the ring we produce;
        // (wait for data, signal room) for the ring we consume.
        let ((room, wake_data), (data, wake_room)) = if produce == 0 {
            ((room0, data0), (data1, room1))
        } else {
            ((room1, data1), (data0, room0))
        };
        let room = Arc::new(room);
        let link = Arc::new(Link {
            socket,
            peer: peer.clone(),
            gone: OnceLock::new(),
            sender_room: room.clone(),
        });
        let sender = ShmSender {
            link: link.clone(),
            producer: Producer::new(writer),
            room: watch(room)?,
            wake_data,
            max: settings.max,
            spin: settings.spin,
            broken: false,
            closed: false,
        };
        let receiver = ShmReceiver {
            link,
            consumer: Consumer::new(reader),
            data: watch(data)?,
            wake_room,
            max: settings.max,
            spin: settings.spin,
            partial: Partial::IDLE,
            state: RxState::Open,
            hung_up: None,
        };
        Ok(Self {
            peer,
            segment_id,
            peer_pid,
            sender,
            receiver,
        })
    }

    /// Identifies the connection's shared segment (the inode number of its
    /// memfd): the same on both ends of a connection, different for every
    /// segment alive on the host.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }
}

impl Connection for ShmConnection {
    type Sender = ShmSender;
    type Receiver = ShmReceiver;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (ShmSender, ShmReceiver) {
        (self.sender, self.receiver)
    }

    /// Direct copies with the peer process (`process_vm_readv` /
    /// `process_vm_writev`) for the engine's bulk transfers, when its pid is
    /// known. Whether the kernel allows them (ptrace policy) shows on the
    /// first copy: a refusal is an error the engine falls back from.
    fn capabilities(&self) -> Capabilities {
        match self.peer_pid {
            Some(pid) if pid > 0 => Capabilities::with_direct_memory(Arc::new(ProcessVm { pid })),
            _ => Capabilities::default(),
        }
    }
}

/// The peer process's memory, through `process_vm_readv` / `writev`.
#[derive(Debug)]
struct ProcessVm {
    pid: i32,
}

impl DirectMemory for ProcessVm {
    fn read_peer(&self, ranges: &[PeerRange], dst: &mut [u8]) -> io::Result<()> {
        shared::copy_peer(
            self.pid,
            Direction::FromPeer,
            ranges,
            LocalBytes::Write(dst),
        )
    }

    fn write_peer(&self, ranges: &[PeerRange], src: &[u8]) -> io::Result<()> {
        shared::copy_peer(self.pid, Direction::ToPeer, ranges, LocalBytes::Read(src))
    }
}

/// The sending half of a shared-memory connection: writes messages into the
/// ring this side produces.
///
/// Dropping it closes this direction in order, like
/// [`MessageSender::close`].
///
/// # Cancellation
///
/// A message larger than the free space of the ring is written in chunks,
/// waiting for the receiver to make room. Dropping a `send` future while it
/// waits leaves the part already written in the ring: the sender is then
/// broken (later sends fail with [`TransportError::Closed`]) and the peer's
/// receiver fails once it sees the close after a partial message.
#[derive(Debug)]
pub struct ShmSender {
    link: Arc<Link>,
    producer: Producer<RingWriter>,
    /// Signalled by the peer when it makes room in our ring.
    room: AsyncFd<Arc<OwnedFd>>,
    /// Wakes the peer's receiver.
    wake_data: OwnedFd,
    max: usize,
    spin: Duration,
    /// A send is (or was left) part way through a message.
    broken: bool,
    closed: bool,
}

impl ShmSender {
    fn error(&self, b: Broken) -> TransportError {
        b.named(&self.link.peer, self.max)
    }

    /// Publishes what was written and wakes the peer if it sleeps.
    pub(crate) fn publish(&mut self) {
        if self.producer.publish() {
            segment::signal(&self.wake_data);
        }
    }

    /// Fails if the peer is known to be gone or stopped receiving.
    fn check_peer(&self) -> Result<(), Broken> {
        if self.producer.consumer_gone() {
            return Err(Broken::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer stopped receiving (its receiver was dropped or failed)",
            )));
        }
        Ok(self.link.check()?)
    }

    /// Writes all of `src` into the ring, publishing every
    /// [`PUBLISH_EVERY`] bytes and waiting for room when it is full. Does
    /// not publish the last piece.
    pub(crate) async fn write_all(&mut self, mut src: &[u8]) -> Result<(), Broken> {
        while !src.is_empty() {
            let n = self.producer.write(&src[..src.len().min(PUBLISH_EVERY)])?;
            src = &src[n..];
            if n == 0 {
                self.publish();
                self.wait_for_room().await?;
            } else if self.producer.unpublished() >= PUBLISH_EVERY as u64 {
                self.publish();
            }
        }
        Ok(())
    }

    /// Waits until the ring has room: spins for the configured time, then
    /// parks (see `ring.rs` for why no wake-up is lost).
    async fn wait_for_room(&mut self) -> Result<(), Broken> {
        let producer = &mut self.producer;
        spin_until(self.spin, || {
            Ok(producer.refresh()? > 0 || producer.consumer_gone())
        })
        .await?;
        loop {
            self.check_peer()?;
            if self.producer.refresh()? > 0 {
                return Ok(());
            }
            // Drain before announcing: a signal that matters comes after.
            let _ = segment::drain(self.room.get_ref());
            if !self.producer.prepare_wait_room()? {
                continue;
            }
            let woke = park(&self.room, &self.link).await;
            self.producer.end_wait_room();
            woke?;
        }
    }
}

impl MessageSender for ShmSender {
    fn max_message_size(&self) -> usize {
        self.max
    }

    /// A message handed over is a record in the shared ring, which the peer sees at once:
    /// holding it back to batch it would only keep the peer waiting.
    fn pacing(&self) -> Pacing {
        Pacing::Eager
    }

    async fn transmit(&mut self, parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
        self.begin_write()?;
        let written = self.write_record(parts, len).await;
        self.end_write(written)
    }

    /// Every record of the batch goes into the ring before one publish and
    /// at most one wake-up of the peer (more only when the batch is larger
    /// than the ring, or than `PUBLISH_EVERY`, 64 KiB).
    async fn transmit_batch(&mut self, batch: &Batch) -> Result<(), TransportError> {
        self.begin_write()?;
        let mut written = Ok(());
        for message in batch {
            written = self.write_record(&[message], message.len()).await;
            if written.is_err() {
                break;
            }
            if self.producer.unpublished() >= PUBLISH_EVERY as u64 {
                self.publish();
            }
        }
        self.end_write(written)
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        self.close_now();
        Ok(())
    }
}

impl ShmSender {
    /// Until a message is whole in the ring, a dropped future leaves a
    /// partial message: the sender is marked broken before a write starts,
    /// and the mark cleared once it is done.
    fn begin_write(&mut self) -> Result<(), TransportError> {
        if self.broken || self.closed {
            return Err(TransportError::Closed {
                peer: self.link.peer.to_string(),
            });
        }
        self.check_peer().map_err(|b| self.error(b))?;
        self.broken = true;
        Ok(())
    }

    /// Publishes what was written and clears the mark, or names the error.
    fn end_write(&mut self, written: Result<(), Broken>) -> Result<(), TransportError> {
        written.map_err(|b| self.error(b))?;
        self.publish();
        self.broken = false;
        Ok(())
    }

    /// Writes one record (length prefix and message) into the ring, without
    /// publishing its end.
    async fn write_record(&mut self, parts: &[&[u8]], len: usize) -> Result<(), Broken> {
        // `len <= max <= u32::MAX`.
        let prefix = (len as u32).to_le_bytes();
        // Fast path: the whole record fits now, written without waiting.
        let record = (PREFIX_LEN + len) as u64;
        if self.producer.free() >= record || self.producer.refresh()? >= record {
            for piece in std::iter::once(&prefix[..]).chain(parts.iter().copied()) {
                let n = self.producer.write(piece)?;
                debug_assert_eq!(n, piece.len());
            }
            return Ok(());
        }
        self.write_all(&prefix).await?;
        for part in parts {
            self.write_all(part).await?;
        }
        Ok(())
    }

    fn close_now(&mut self) {
        if !self.closed {
            self.closed = true;
            if self.producer.close() {
                segment::signal(&self.wake_data);
            }
        }
    }
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        self.close_now();
    }
}

/// A message being received, kept in the receiver (not in the `recv`
/// future) so that dropping a `recv` future loses nothing.
#[derive(Debug)]
enum Partial {
    /// Reading the 4-byte little-endian length.
    Prefix { buf: [u8; 4], have: usize },
    /// Reading `len` bytes into `buf`.
    Body { len: usize, buf: BytesMut },
}

impl Partial {
    const IDLE: Self = Self::Prefix {
        buf: [0; 4],
        have: 0,
    };

    fn is_idle(&self) -> bool {
        matches!(self, Self::Prefix { have: 0, .. })
    }

    fn progress(&self) -> (usize, usize) {
        match self {
            Self::Prefix { have, .. } => (*have, 4),
            Self::Body { len, buf } => (buf.len(), *len),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxState {
    Open,
    /// The peer closed in order and everything was received.
    Done,
    /// A fatal error was returned.
    Failed,
}

/// The receiving half of a shared-memory connection: reads messages from
/// the ring the peer produces.
///
/// Dropping it tells the peer (its sends fail instead of waiting for room).
#[derive(Debug)]
pub struct ShmReceiver {
    link: Arc<Link>,
    consumer: Consumer<RingReader>,
    /// Signalled by the peer when it publishes into our ring.
    data: AsyncFd<OwnedFd>,
    /// Wakes the peer's sender.
    wake_room: OwnedFd,
    max: usize,
    spin: Duration,
    partial: Partial,
    state: RxState,
    /// The peer hung up: reported once the ring is drained.
    hung_up: Option<io::Error>,
}

impl ShmReceiver {
    /// Gives consumed bytes back and wakes the peer if it waits for room.
    pub(crate) fn release(&mut self) {
        if self.consumer.release() {
            segment::signal(&self.wake_room);
        }
    }

    /// Moves what the ring holds into the partial message; returns the
    /// message once whole. Synchronous, so it cannot be cancelled half way.
    fn assemble(&mut self) -> Result<Option<Bytes>, Broken> {
        let message = loop {
            match &mut self.partial {
                Partial::Prefix { buf, have } => {
                    if self.consumer.available()? == 0 {
                        break None;
                    }
                    *have += self.consumer.read(&mut buf[*have..]);
                    if *have < buf.len() {
                        continue;
                    }
                    let len = u32::from_le_bytes(*buf) as usize;
                    if len > self.max {
                        return Err(Broken::TooLarge(len));
                    }
                    // Never more than `max`, whatever the peer announces.
                    let mut buf = BytesMut::with_capacity(len);
                    // Fast path: a small message published whole.
                    if len <= RELEASE_EVERY && self.consumer.available()? >= len as u64 {
                        self.consumer.read_append(len, &mut buf);
                        self.partial = Partial::IDLE;
                        break Some(buf.freeze());
                    }
                    self.partial = Partial::Body { len, buf };
                }
                Partial::Body { len, buf } => {
                    let missing = *len - buf.len();
                    if missing == 0 {
                        let message = std::mem::take(buf).freeze();
                        self.partial = Partial::IDLE;
                        break Some(message);
                    }
                    // At most the capacity: fits in usize.
                    let available = self.consumer.available()? as usize;
                    if available == 0 {
                        break None;
                    }
                    self.consumer
                        .read_append(missing.min(available).min(RELEASE_EVERY), buf);
                    if self.consumer.unreleased() >= RELEASE_EVERY as u64 {
                        self.release();
                    }
                }
            }
        };
        self.release();
        Ok(message)
    }

    /// Waits until the ring has data or is closed (or the peer is gone):
    /// spins for the configured time, then parks (see `ring.rs` for why no
    /// wake-up is lost).
    pub(crate) async fn wait_for_data(&mut self) -> Result<(), Broken> {
        let consumer = &mut self.consumer;
        if spin_until(self.spin, || {
            Ok(consumer.refresh()? > 0 || consumer.closed())
        })
        .await?
        {
            return Ok(());
        }
        loop {
            // Drain before announcing: a signal that matters comes after.
            let _ = segment::drain(self.data.get_ref());
            if !self.consumer.prepare_park()? {
                return Ok(());
            }
            let woke = park(&self.data, &self.link).await;
            self.consumer.end_park();
            woke?;
            if self.consumer.refresh()? > 0 || self.consumer.closed() {
                return Ok(());
            }
        }
    }

    fn fail(&mut self, b: Broken) -> TransportError {
        self.state = RxState::Failed;
        // The connection is dead: the peer's sends must fail, not wait.
        if self.consumer.mark_gone() {
            segment::signal(&self.wake_room);
        }
        let _ = self.link.gone(
            io::ErrorKind::ConnectionAborted,
            "the connection failed on the receiving side".into(),
        );
        // A send of ours waiting for room must not wait for a dead peer.
        segment::signal(&self.link.sender_room);
        b.named(&self.link.peer, self.max)
    }

    async fn recv_inner(&mut self) -> Result<Option<Bytes>, Broken> {
        loop {
            if let Some(message) = self.assemble()? {
                return Ok(Some(message));
            }
            if self.consumer.closed_and_drained()? {
                if self.partial.is_idle() {
                    self.state = RxState::Done;
                    return Ok(None);
                }
                let (got, len) = self.partial.progress();
                return Err(Broken::Truncated { got, len });
            }
            if let Some(e) = self.hung_up.take() {
                return Err(Broken::Io(e));
            }
            if let Err(b) = self.wait_for_data().await {
                match b {
                    // Deliver what the ring still holds first.
                    Broken::Io(e) => self.hung_up = Some(e),
                    other => return Err(other),
                }
            }
        }
    }
}

impl MessageReceiver for ShmReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self.state {
            RxState::Open => {}
            RxState::Done => return Ok(None),
            RxState::Failed => {
                return Err(TransportError::Closed {
                    peer: self.link.peer.to_string(),
                })
            }
        }
        match self.recv_inner().await {
            Ok(m) => Ok(m),
            Err(b) => Err(self.fail(b)),
        }
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if self.state != RxState::Failed && self.consumer.mark_gone() {
            segment::signal(&self.wake_room);
        }
    }
}

/// Internals for the in-crate benchmark of the raw ring floor.
#[cfg(test)]
impl ShmSender {
    pub(crate) fn producer_mut(&mut self) -> &mut Producer<RingWriter> {
        &mut self.producer
    }
}

#[cfg(test)]
impl ShmReceiver {
    pub(crate) fn consumer_mut(&mut self) -> &mut Consumer<RingReader> {
        &mut self.consumer
    }
}

#[cfg(test)]
mod spin_tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::spin_until;

    /// A reader delivers a message to the caller, then spins for the next
    /// one, which only the caller can cause. Returns how many times the
    /// spinner checked before the caller had run: 2 means the caller ran
    /// at the first yield (one check before it, one after).
    async fn checks_before_caller_runs() -> u32 {
        let (deliver, delivered) = tokio::sync::oneshot::channel::<()>();
        let caller_ran = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicU32::new(0));
        let (flag, count) = (caller_ran.clone(), checks.clone());
        let reader = tokio::spawn(async move {
            let _ = deliver.send(());
            spin_until(Duration::from_secs(10), || {
                count.fetch_add(1, Ordering::Relaxed);
                Ok(flag.load(Ordering::Acquire))
            })
            .await
        });
        // The caller: woken by the delivery, it produces the next message.
        let _ = delivered.await;
        caller_ran.store(true, Ordering::Release);
        assert!(matches!(reader.await, Ok(Ok(true))));
        checks.load(Ordering::Relaxed)
    }

    /// The caller is the `block_on` future of a current-thread runtime
    /// (not a task): the spinner must let it run at its first yield, not
    /// after its periodic one.
    #[test]
    fn block_on_caller_runs_before_the_spin() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(checks_before_caller_runs()), 2);
    }

    /// The caller is a task on the same worker of a multi-thread runtime.
    #[test]
    fn task_caller_runs_before_the_spin() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let checks = rt.block_on(async { tokio::spawn(checks_before_caller_runs()).await });
        assert_eq!(checks.unwrap(), 2);
    }
}
