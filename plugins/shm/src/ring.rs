//! The single-producer single-consumer byte ring and its wake-up protocol.
//!
//! This file holds no `unsafe` and knows nothing of shared memory, sockets or
//! tokio: it is the protocol, written against two small traits
//! ([`ProducerMem`], [`ConsumerMem`]) that copy bytes in and out of a ring's
//! data area and hand out its [`RingCtl`]. The transport implements them on a
//! shared mapping (`shared.rs`); the loom model (`loom_model.rs`) compiles this
//! same file a second time on loom's atomics and implements them on the heap.
//!
//! # Indices
//!
//! `head` (written by the producer only) and `tail` (written by the consumer
//! only) are byte counters that only grow (`u64`, wrapping arithmetic, so they
//! never overflow in practice). The bytes in `[tail, head)` are published and
//! not yet consumed; position `i` lives at offset `i & (capacity - 1)` of the
//! data area, so a record may wrap around its end. Each side keeps its own
//! index in a local variable and only *publishes* it (a `Release` store);
//! it *reads* the other side's index with an `Acquire` load, which makes the
//! bytes the other side copied before its store visible.
//!
//! Each side owns the bytes the indices give it: the producer
//! `[head, tail + capacity)`, the consumer `[tail, head)`. Neither touches the
//! other's range, so the copies need no lock.
//!
//! A peer is not trusted: an index it publishes must move forward and stay
//! within what the protocol allows (`head <= released tail + capacity`,
//! `tail <= published head`), or the side that reads it reports a
//! [`RingError`] and the connection dies. Lengths are never read back from
//! shared memory for our own bounds: the capacity is a local copy.
//!
//! # Sleeping and waking (no lost wake-ups)
//!
//! A consumer that finds the ring empty (after spinning, which the caller
//! does) must sleep without missing a publication that races with it. It
//! uses the `data_waiting` word of the ring, the same way the producer uses
//! `room_waiting` when the ring is full:
//!
//! ```text
//! consumer (wants data)                     producer (publishes)
//! 1. drain its wake-up channel              a. store head (Release)
//! 2. data_waiting = e (a new episode        b. fence(SeqCst)
//!    number, never 0)                       c. v = data_waiting
//! 3. fence(SeqCst)                          d. if v != 0 and v != the last
//! 4. re-check head and `closed`                episode it signalled:
//! 5. if still nothing: park on the channel     remember v, signal
//! 6. data_waiting = 0 (after waking, or at 5 if something came)
//! ```
//!
//! The two `SeqCst` fences order 2-before-4 and a-before-c in one total
//! order, so either the consumer's re-check (4) sees the new head, or the
//! producer's read (c) sees episode `e` and signals: both may happen (a
//! spurious wake-up, harmless), never neither. Draining the channel *before*
//! announcing means a signal that matters always arrives after the drain.
//!
//! Each word has a single writer (the side that sleeps): the other side
//! only reads it and remembers, locally, which episode it already signalled,
//! so a burst of publications while the consumer sleeps costs one signal,
//! not one per publication, without a read-modify-write on a shared line.
//! (An earlier version had the waker clear the word with a `swap`. Loom
//! reported a lost wake-up for it, in an execution that is only excluded if
//! the waker's `swap` is ordered before the sleeper's next announcement,
//! which loom's partial view of the modification order does not give; the
//! single-writer scheme needs no such argument.)
//!
//! A producer that is busy costs the consumer nothing, and a busy consumer
//! costs the producer one fence and a load of a cache line that nobody
//! writes: the signal (a system call) is only paid when the other side
//! really announced it sleeps. `loom_model.rs` checks all this under the
//! interleavings loom explores.

use bytes::BytesMut;

use super::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// One cache line: keeps fields written by different sides apart, so that a
/// write by one side does not invalidate a line the other side polls.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Line<T>(pub(crate) T);

/// The words that change only at the end of a ring's life.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Status {
    /// Set by the producer after its last publication (orderly close).
    pub(crate) closed: AtomicU32,
    /// Set by the consumer when it stops consuming (dropped, or failed).
    pub(crate) consumer_gone: AtomicU32,
}

/// The control block of one ring: five cache lines.
///
/// In the transport it is laid over the shared segment (see `shared.rs`):
/// it holds only atomics, for which every bit pattern is a valid value, so
/// whatever the peer writes there is at worst a wrong value, never undefined
/// behaviour.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct RingCtl {
    /// Bytes published by the producer (written by the producer only).
    pub(crate) head: Line<AtomicU64>,
    /// Bytes released by the consumer (written by the consumer only).
    pub(crate) tail: Line<AtomicU64>,
    /// Non-zero (an episode number) while the consumer announces it sleeps
    /// waiting for data (written by the consumer only).
    pub(crate) data_waiting: Line<AtomicU64>,
    /// Non-zero (an episode number) while the producer announces it sleeps
    /// waiting for room (written by the producer only).
    pub(crate) room_waiting: Line<AtomicU64>,
    /// End-of-life flags.
    pub(crate) status: Line<Status>,
}

impl RingCtl {
    /// A control block of an empty, open ring (for the heap rings of tests;
    /// the transport's are zero-filled shared memory, which is the same).
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self {
            head: Line(AtomicU64::new(0)),
            tail: Line(AtomicU64::new(0)),
            data_waiting: Line(AtomicU64::new(0)),
            room_waiting: Line(AtomicU64::new(0)),
            status: Line(Status {
                closed: AtomicU32::new(0),
                consumer_gone: AtomicU32::new(0),
            }),
        }
    }
}

/// The producer's access to a ring: its control block and writes into its
/// data area.
pub(crate) trait ProducerMem {
    /// The ring's control block.
    fn ctl(&self) -> &RingCtl;
    /// Size of the data area in bytes: a power of two.
    fn capacity(&self) -> u64;
    /// Copies `src` to offset `at` of the data area; `at + src.len()` is at
    /// most the capacity (the ring splits copies that wrap).
    fn write(&mut self, at: usize, src: &[u8]);
}

/// The consumer's access to a ring: its control block and reads from its
/// data area.
pub(crate) trait ConsumerMem {
    /// The ring's control block.
    fn ctl(&self) -> &RingCtl;
    /// Size of the data area in bytes: a power of two.
    fn capacity(&self) -> u64;
    /// Copies `dst.len()` bytes from offset `at` of the data area.
    fn read(&mut self, at: usize, dst: &mut [u8]);
    /// Appends `len` bytes from offset `at` of the data area to `dst`.
    fn read_append(&mut self, at: usize, len: usize, dst: &mut BytesMut);
}

/// The peer broke the ring protocol: the connection cannot be trusted any
/// more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RingError {
    /// The producer's index moved backwards or past the room it was given.
    Head {
        /// The value read.
        got: u64,
        /// The consumer's index.
        tail: u64,
        /// The ring's capacity.
        capacity: u64,
    },
    /// The consumer's index moved backwards or past what was published.
    Tail {
        /// The value read.
        got: u64,
        /// The producer's published index.
        head: u64,
    },
}

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Head {
                got,
                tail,
                capacity,
            } => write!(
                f,
                "the ring's write index is {got}, outside the {capacity} bytes after \
                 the read index {tail} (corrupt or hostile peer)"
            ),
            Self::Tail { got, head } => write!(
                f,
                "the ring's read index is {got}, beyond the published write index {head} \
                 or behind its previous value (corrupt or hostile peer)"
            ),
        }
    }
}

/// Reads a sleep announcement (after the caller's `SeqCst` fence): true if
/// the other side announced an episode not signalled yet, in which case the
/// caller must signal it. `signalled` is the caller's memory of the last
/// episode it signalled.
fn must_wake(flag: &AtomicU64, signalled: &mut u64) -> bool {
    let episode = flag.load(Ordering::Relaxed);
    if episode != 0 && episode != *signalled {
        *signalled = episode;
        true
    } else {
        false
    }
}

/// Announces a new sleep episode in `flag` (the caller's own word).
fn announce(flag: &AtomicU64, episode: &mut u64) {
    // Never 0, which means "not sleeping"; 2^64 episodes never wrap.
    *episode = episode.wrapping_add(1).max(1);
    flag.store(*episode, Ordering::Relaxed);
    fence(Ordering::SeqCst);
}

/// The writing end of a ring.
#[derive(Debug)]
pub(crate) struct Producer<M> {
    mem: M,
    capacity: u64,
    /// Next byte to write.
    head: u64,
    /// What the consumer was last told (`ctl.head`).
    published: u64,
    /// The consumer's index as last read.
    tail: u64,
    /// The last sleep episode of the consumer this side signalled.
    signalled: u64,
    /// This side's last sleep episode (waiting for room).
    episode: u64,
}

impl<M: ProducerMem> Producer<M> {
    /// The producer of a fresh ring (both indices at 0).
    pub(crate) fn new(mem: M) -> Self {
        let capacity = mem.capacity();
        debug_assert!(capacity.is_power_of_two());
        Self {
            mem,
            capacity,
            head: 0,
            published: 0,
            tail: 0,
            signalled: 0,
            episode: 0,
        }
    }

    /// Bytes free as far as this side knows (reload with [`Self::refresh`]).
    pub(crate) fn free(&self) -> u64 {
        self.capacity - self.head.wrapping_sub(self.tail)
    }

    /// Bytes written but not yet published.
    pub(crate) fn unpublished(&self) -> u64 {
        self.head.wrapping_sub(self.published)
    }

    /// Reads the consumer's index and returns the free space.
    ///
    /// # Errors
    /// The consumer's index is not within what the protocol allows.
    pub(crate) fn refresh(&mut self) -> Result<u64, RingError> {
        let got = self.mem.ctl().tail.0.load(Ordering::Acquire);
        // It may only move forward, up to what was published.
        if got.wrapping_sub(self.tail) > self.published.wrapping_sub(self.tail) {
            return Err(RingError::Tail {
                got,
                head: self.published,
            });
        }
        self.tail = got;
        Ok(self.free())
    }

    /// Copies as much of `src` as fits into the ring, without publishing it;
    /// returns how much (0 when the ring is full).
    ///
    /// # Errors
    /// See [`Self::refresh`].
    pub(crate) fn write(&mut self, src: &[u8]) -> Result<usize, RingError> {
        if self.free() < src.len() as u64 {
            self.refresh()?;
        }
        // Fits in usize: at most the capacity, which is a mapped size.
        let n = src.len().min(self.free() as usize);
        if n == 0 {
            return Ok(0);
        }
        let at = (self.head & (self.capacity - 1)) as usize;
        let first = n.min(self.capacity as usize - at);
        self.mem.write(at, &src[..first]);
        if first < n {
            self.mem.write(0, &src[first..n]);
        }
        self.head = self.head.wrapping_add(n as u64);
        Ok(n)
    }

    /// Publishes what was written. Returns true if the consumer announced it
    /// sleeps: the caller must signal it.
    pub(crate) fn publish(&mut self) -> bool {
        if self.head == self.published {
            return false;
        }
        self.published = self.head;
        let ctl = self.mem.ctl();
        ctl.head.0.store(self.head, Ordering::Release);
        fence(Ordering::SeqCst);
        must_wake(&ctl.data_waiting.0, &mut self.signalled)
    }

    /// Publishes what was written and marks the ring closed: once the
    /// consumer has read everything, it sees the end. Returns true if the
    /// consumer must be signalled.
    pub(crate) fn close(&mut self) -> bool {
        self.published = self.head;
        let ctl = self.mem.ctl();
        ctl.head.0.store(self.head, Ordering::Release);
        ctl.status.0.closed.store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        must_wake(&ctl.data_waiting.0, &mut self.signalled)
    }

    /// Whether the consumer said it stopped consuming.
    pub(crate) fn consumer_gone(&self) -> bool {
        self.mem
            .ctl()
            .status
            .0
            .consumer_gone
            .load(Ordering::Acquire)
            != 0
    }

    /// Announces that the producer is about to sleep until there is room,
    /// then checks again. Returns true if it must indeed sleep (the ring is
    /// still full and the consumer still there); false if it can go on, in
    /// which case the announcement is withdrawn. Call
    /// [`Self::end_wait_room`] after sleeping.
    ///
    /// # Errors
    /// See [`Self::refresh`].
    pub(crate) fn prepare_wait_room(&mut self) -> Result<bool, RingError> {
        announce(&self.mem.ctl().room_waiting.0, &mut self.episode);
        let gone = self.consumer_gone();
        let free = self.refresh()?;
        if free > 0 || gone {
            self.end_wait_room();
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws the announcement of [`Self::prepare_wait_room`].
    pub(crate) fn end_wait_room(&self) {
        self.mem.ctl().room_waiting.0.store(0, Ordering::Relaxed);
    }
}

/// The reading end of a ring.
#[derive(Debug)]
pub(crate) struct Consumer<M> {
    mem: M,
    capacity: u64,
    /// Next byte to read.
    tail: u64,
    /// What the producer was last told (`ctl.tail`).
    released: u64,
    /// The producer's index as last read.
    head: u64,
    /// The last sleep episode of the producer this side signalled.
    signalled: u64,
    /// This side's last sleep episode (waiting for data).
    episode: u64,
}

impl<M: ConsumerMem> Consumer<M> {
    /// The consumer of a fresh ring (both indices at 0).
    pub(crate) fn new(mem: M) -> Self {
        let capacity = mem.capacity();
        debug_assert!(capacity.is_power_of_two());
        Self {
            mem,
            capacity,
            tail: 0,
            released: 0,
            head: 0,
            signalled: 0,
            episode: 0,
        }
    }

    /// Bytes available as far as this side knows.
    fn cached(&self) -> u64 {
        self.head.wrapping_sub(self.tail)
    }

    /// Reads the producer's index and returns the bytes available.
    ///
    /// # Errors
    /// The producer's index is not within what the protocol allows.
    pub(crate) fn refresh(&mut self) -> Result<u64, RingError> {
        let got = self.mem.ctl().head.0.load(Ordering::Acquire);
        // It may only move forward, and at most `capacity` past the last
        // index we released.
        let limit = self
            .released
            .wrapping_add(self.capacity)
            .wrapping_sub(self.head);
        if got.wrapping_sub(self.head) > limit {
            return Err(RingError::Head {
                got,
                tail: self.released,
                capacity: self.capacity,
            });
        }
        self.head = got;
        Ok(self.cached())
    }

    /// Bytes available: the cached count, or a fresh one when it is zero.
    ///
    /// # Errors
    /// See [`Self::refresh`].
    pub(crate) fn available(&mut self) -> Result<u64, RingError> {
        match self.cached() {
            0 => self.refresh(),
            n => Ok(n),
        }
    }

    /// Copies up to `dst.len()` available bytes into `dst` (call
    /// [`Self::available`] first); returns how many.
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.cached() as usize);
        let at = (self.tail & (self.capacity - 1)) as usize;
        let first = n.min(self.capacity as usize - at);
        self.mem.read(at, &mut dst[..first]);
        if first < n {
            self.mem.read(0, &mut dst[first..n]);
        }
        self.tail = self.tail.wrapping_add(n as u64);
        n
    }

    /// Appends up to `len` available bytes to `dst`; returns how many.
    pub(crate) fn read_append(&mut self, len: usize, dst: &mut BytesMut) -> usize {
        let n = len.min(self.cached() as usize);
        let at = (self.tail & (self.capacity - 1)) as usize;
        let first = n.min(self.capacity as usize - at);
        self.mem.read_append(at, first, dst);
        if first < n {
            self.mem.read_append(0, n - first, dst);
        }
        self.tail = self.tail.wrapping_add(n as u64);
        n
    }

    /// Bytes read but not yet released to the producer.
    pub(crate) fn unreleased(&self) -> u64 {
        self.tail.wrapping_sub(self.released)
    }

    /// Gives the bytes read back to the producer. Returns true if the
    /// producer announced it sleeps: the caller must signal it.
    pub(crate) fn release(&mut self) -> bool {
        if self.tail == self.released {
            return false;
        }
        self.released = self.tail;
        let ctl = self.mem.ctl();
        ctl.tail.0.store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        must_wake(&ctl.room_waiting.0, &mut self.signalled)
    }

    /// Whether the producer closed the ring (there may be bytes left).
    pub(crate) fn closed(&self) -> bool {
        self.mem.ctl().status.0.closed.load(Ordering::Acquire) != 0
    }

    /// True once the producer closed the ring and every byte it published
    /// has been read.
    ///
    /// # Errors
    /// See [`Self::refresh`].
    pub(crate) fn closed_and_drained(&mut self) -> Result<bool, RingError> {
        // `closed` is stored after the last head: seeing it (Acquire) makes
        // that head visible to the refresh below.
        if self.mem.ctl().status.0.closed.load(Ordering::Acquire) == 0 {
            return Ok(false);
        }
        Ok(self.refresh()? == 0)
    }

    /// Announces that the consumer is about to sleep until data comes (or
    /// the ring is closed), then checks again. Returns true if it must
    /// indeed sleep; false if it can go on, in which case the announcement is
    /// withdrawn. Call [`Self::end_park`] after sleeping.
    ///
    /// # Errors
    /// See [`Self::refresh`].
    pub(crate) fn prepare_park(&mut self) -> Result<bool, RingError> {
        announce(&self.mem.ctl().data_waiting.0, &mut self.episode);
        let closed = self.closed();
        let available = self.refresh()?;
        if available > 0 || closed {
            self.end_park();
            return Ok(false);
        }
        Ok(true)
    }

    /// Withdraws the announcement of [`Self::prepare_park`].
    pub(crate) fn end_park(&self) {
        self.mem.ctl().data_waiting.0.store(0, Ordering::Relaxed);
    }

    /// Tells the producer this side stops consuming (it will fail instead of
    /// waiting for room). Returns true if the producer must be signalled.
    pub(crate) fn mark_gone(&mut self) -> bool {
        let ctl = self.mem.ctl();
        ctl.status.0.consumer_gone.store(1, Ordering::Release);
        fence(Ordering::SeqCst);
        must_wake(&ctl.room_waiting.0, &mut self.signalled)
    }
}

/// A ring on the heap, for the unit and model tests: each byte is an atomic
/// accessed with `Relaxed` ordering, so a protocol that failed to order the
/// copies (a missing `Release`/`Acquire`) shows up as wrong bytes under loom,
/// without any `unsafe`.
#[cfg(test)]
pub(crate) mod heap {
    use bytes::BytesMut;

    use super::super::sync::atomic::{AtomicU8, Ordering};
    use super::super::sync::Arc;
    use super::{Consumer, ConsumerMem, Producer, ProducerMem, RingCtl};

    #[derive(Debug)]
    pub(crate) struct HeapRing {
        pub(crate) ctl: RingCtl,
        data: Box<[AtomicU8]>,
    }

    /// One end's handle on a [`HeapRing`].
    #[derive(Debug, Clone)]
    pub(crate) struct HeapMem(pub(crate) Arc<HeapRing>);

    impl ProducerMem for HeapMem {
        fn ctl(&self) -> &RingCtl {
            &self.0.ctl
        }
        fn capacity(&self) -> u64 {
            self.0.data.len() as u64
        }
        fn write(&mut self, at: usize, src: &[u8]) {
            for (cell, b) in self.0.data[at..at + src.len()].iter().zip(src) {
                cell.store(*b, Ordering::Relaxed);
            }
        }
    }

    impl ConsumerMem for HeapMem {
        fn ctl(&self) -> &RingCtl {
            &self.0.ctl
        }
        fn capacity(&self) -> u64 {
            self.0.data.len() as u64
        }
        fn read(&mut self, at: usize, dst: &mut [u8]) {
            for (cell, b) in self.0.data[at..at + dst.len()].iter().zip(dst) {
                *b = cell.load(Ordering::Relaxed);
            }
        }
        fn read_append(&mut self, at: usize, len: usize, dst: &mut BytesMut) {
            for cell in &self.0.data[at..at + len] {
                dst.extend_from_slice(&[cell.load(Ordering::Relaxed)]);
            }
        }
    }

    /// A fresh ring of `capacity` bytes (a power of two) and its two ends.
    pub(crate) fn ring(capacity: usize) -> (Producer<HeapMem>, Consumer<HeapMem>, HeapMem) {
        let ring = Arc::new(HeapRing {
            ctl: RingCtl::new(),
            data: (0..capacity).map(|_| AtomicU8::new(0)).collect(),
        });
        let mem = HeapMem(ring);
        (Producer::new(mem.clone()), Consumer::new(mem.clone()), mem)
    }
}
