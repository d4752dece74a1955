//! Recording: the counters and histograms the call path updates.
//!
//! One [`RpcRecord`] per (RPC id, provider id), shared by the RPC's entry
//! in the table (server side) and by every callable aimed at it (client
//! side), so that the call path never looks a record up: it holds it.
//! Each side counts a request when it starts (one relaxed increment) and
//! takes one uncontended lock when it ends, to count its outcome and
//! bytes and, with timing on, record its phases in histograms. Peers
//! count bytes on their connection ([`ConnCounters`]), one relaxed
//! increment per message.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::error::Error;
use crate::sync::lock;

/// How a request ended, on either side. The names are the statistics'
/// error kinds (`Stats` JSON: `errors`), stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Outcome {
    /// Answered (server), or answered with a response (client).
    Ok = 0,
    /// The handler returned an error (`Error::Remote` on the caller).
    Failed,
    /// The handler panicked.
    Panicked,
    /// The handler finished, or dropped its handle, without responding.
    NoResponse,
    /// The caller gave up (dropped or cancelled its call), or the
    /// connection to it was lost while the handler ran.
    Cancelled,
    /// The caller's deadline passed (server); the call's timeout or
    /// inherited deadline passed (client).
    Deadline,
    /// Refused by the provider's limits (load shed).
    Busy,
    /// No such RPC at that provider.
    NoSuchRpc,
    /// A call expecting an answer to an RPC registered one-way.
    OneWay,
    /// The server was finalizing.
    Finalizing,
    /// The connection died before the answer.
    ConnectionLost,
    /// The request or its answer could not be encoded, decoded or sent
    /// (transport errors, protocol errors, type mismatches).
    Invalid,
    /// This engine was finalized during the call.
    Finalized,
}

impl Outcome {
    pub(crate) const COUNT: usize = 13;

    const ALL: [Self; Self::COUNT] = [
        Self::Ok,
        Self::Failed,
        Self::Panicked,
        Self::NoResponse,
        Self::Cancelled,
        Self::Deadline,
        Self::Busy,
        Self::NoSuchRpc,
        Self::OneWay,
        Self::Finalizing,
        Self::ConnectionLost,
        Self::Invalid,
        Self::Finalized,
    ];

    /// The name in the statistics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Panicked => "panicked",
            Self::NoResponse => "no_response",
            Self::Cancelled => "cancelled",
            Self::Deadline => "deadline",
            Self::Busy => "busy",
            Self::NoSuchRpc => "no_such_rpc",
            Self::OneWay => "one_way",
            Self::Finalizing => "finalizing",
            Self::ConnectionLost => "connection_lost",
            Self::Invalid => "invalid",
            Self::Finalized => "finalized",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        Self::ALL.get(usize::from(v)).copied().unwrap_or(Self::Ok)
    }

    /// The outcome of a call that failed with `e`, on the caller's side.
    pub(crate) fn of_error(e: &Error) -> Self {
        match e {
            Error::Remote { .. } => Self::Failed,
            Error::RemotePanic { .. } => Self::Panicked,
            Error::NoResponse { .. } => Self::NoResponse,
            Error::Cancelled { .. } => Self::Cancelled,
            Error::Timeout { .. } | Error::DeadlineExceeded { .. } => Self::Deadline,
            Error::Busy { .. } => Self::Busy,
            Error::NoSuchRpc { .. } => Self::NoSuchRpc,
            Error::OneWay { .. } => Self::OneWay,
            Error::RemoteFinalizing { .. } => Self::Finalizing,
            Error::ConnectionLost { .. } | Error::ConnectTimeout { .. } | Error::NoPath { .. } => {
                Self::ConnectionLost
            }
            Error::Finalized => Self::Finalized,
            _ => Self::Invalid,
        }
    }
}

/// A latency histogram in nanoseconds: two significant figures (1%),
/// growing with the largest value recorded (it starts at a few KiB).
pub(crate) type Hist = Histogram<u64>;

/// An empty histogram: nanoseconds, two significant figures, growing.
#[allow(clippy::expect_used)]
pub(crate) fn new_histogram() -> Hist {
    // A constant argument: `new` fails only for more than five figures.
    Histogram::new(2).expect("two significant figures are valid")
}

/// What one side of one RPC counted, under its lock.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) finished: u64,
    pub(crate) outcomes: [u64; Outcome::COUNT],
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    /// Requests (served side) that ended while they waited for their
    /// handler to start ([`Side::wait_begins`]): cancelled, or dropped with
    /// the engine.
    pub(crate) ended_waiting: u64,
    /// Histograms by phase, made on first use (timing on).
    pub(crate) phases: [Option<Box<Hist>>; 3],
}

impl Tally {
    fn record(&mut self, phase: usize, d: Duration) {
        let h = self.phases[phase].get_or_insert_with(|| Box::new(new_histogram()));
        // A value past what the histogram can grow to is not recorded.
        let _ = h.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    }
}

/// Shards of a [`Side`]: each thread counts in its own (the `home` it is
/// given on first use), so that threads calling or serving the same RPC at
/// once neither wait for one lock nor pass one cache line back and forth.
const SHARDS: usize = 8;

/// One shard of a [`Side`], on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    started: AtomicU64,
    /// Waits of requests for their handler to start (served side) that
    /// began, and that ended with the start. Only requests that do wait
    /// count: those handed to a task (handler threads, a provider's turn)
    /// or to a binding's queue, which pay for a spawn or a lock anyway; a
    /// request polled at once on the progress loop counts in neither.
    waits: AtomicU64,
    waits_ended: AtomicU64,
    tally: Mutex<Tally>,
}

/// The shard of the calling thread.
fn home() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static HOME: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    HOME.with(|h| *h)
}

/// One side (server or client) of one RPC.
pub(crate) struct Side {
    /// Whether the engine counts (`stats.counters`): if not, every method
    /// returns at once.
    on: bool,
    shards: Box<[Shard; SHARDS]>,
}

impl Default for Side {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Tally {
    /// Adds `other`'s counts and histograms to these.
    fn add(&mut self, other: &Self) {
        self.finished += other.finished;
        for (a, b) in self.outcomes.iter_mut().zip(&other.outcomes) {
            *a += b;
        }
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.ended_waiting += other.ended_waiting;
        for (mine, theirs) in self.phases.iter_mut().zip(&other.phases) {
            if let Some(theirs) = theirs {
                let h = mine.get_or_insert_with(|| Box::new(new_histogram()));
                // Both grow as needed: adding cannot overflow their range.
                let _ = h.add(&**theirs);
            }
        }
    }
}

impl Side {
    pub(crate) fn new(on: bool) -> Self {
        Self {
            on,
            shards: Box::default(),
        }
    }

    fn shard(&self) -> &Shard {
        &self.shards[home()]
    }

    /// Counts a request (server) or call (client) that starts.
    #[inline]
    pub(crate) fn begin(&self) {
        if !self.on {
            return;
        }
        self.shard().started.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one that ended: its outcome, bytes, and phases (timed only;
    /// `None` for a phase it never reached).
    #[inline]
    pub(crate) fn end(
        &self,
        outcome: Outcome,
        bytes_in: u64,
        bytes_out: u64,
        phases: &[Option<Duration>],
    ) {
        self.end_served(outcome, bytes_in, bytes_out, phases, false);
    }

    /// [`Side::end`] for a request served here, which may have ended while
    /// it waited for its handler to start (`waited`): counted under the
    /// same lock ([`Side::waiting`]).
    #[inline]
    pub(crate) fn end_served(
        &self,
        outcome: Outcome,
        bytes_in: u64,
        bytes_out: u64,
        phases: &[Option<Duration>],
        waited: bool,
    ) {
        if !self.on {
            return;
        }
        let mut t = self.lock_near();
        t.finished += 1;
        t.outcomes[outcome as usize] += 1;
        t.bytes_in += bytes_in;
        t.bytes_out += bytes_out;
        t.ended_waiting += u64::from(waited);
        for (i, d) in phases.iter().enumerate() {
            if let Some(d) = d {
                t.record(i, *d);
            }
        }
    }

    /// This thread's shard's tally, or, if another thread holds it, the
    /// first free one after it: a thread never sleeps on a tally while one
    /// is free.
    fn lock_near(&self) -> std::sync::MutexGuard<'_, Tally> {
        let home = home();
        for i in 0..SHARDS {
            let shard = &self.shards[(home + i) % SHARDS];
            match shard.tally.try_lock() {
                Ok(t) => return t,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        lock(&self.shards[home].tally)
    }

    /// Counts a request refused before any handler saw it.
    pub(crate) fn refused(&self, outcome: Outcome, bytes_in: u64) {
        self.begin();
        self.end(outcome, bytes_in, 0, &[]);
    }

    /// Counts a request that begins to wait for its handler to start (one
    /// relaxed increment, on paths that spawn a task or take a lock).
    #[inline]
    pub(crate) fn wait_begins(&self) {
        if !self.on {
            return;
        }
        self.shard().waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait that ended: the handler started.
    #[inline]
    pub(crate) fn wait_ends(&self) {
        if !self.on {
            return;
        }
        self.shard().waits_ended.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Requests waiting for their handler to start now (served side):
    /// waits begun, less those ended by a start or by the request's end.
    /// The waits begun are read first, so that one that begins and ends
    /// meanwhile is not counted (it may be left out instead): a snapshot is
    /// a moment, not a transaction, and errs low, never below zero. Takes
    /// the tallies' locks: not from inside [`Side::read`].
    pub(crate) fn waiting(&self) -> u64 {
        let begun = self.sum(|s| &s.waits);
        let started = self.sum(|s| &s.waits_ended);
        let ended = self.read(|t| t.ended_waiting);
        begun.saturating_sub(started + ended)
    }

    pub(crate) fn started(&self) -> u64 {
        self.sum(|s| &s.started)
    }

    /// The shards' tallies added up (each locked in turn, briefly).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        let mut all = Tally::default();
        for shard in self.shards.iter() {
            all.add(&lock(&shard.tally));
        }
        f(&all)
    }
}

/// The statistics of one (RPC, provider).
pub(crate) struct RpcRecord {
    pub(crate) name: Arc<str>,
    pub(crate) id: u64,
    pub(crate) provider: u16,
    /// Requests served here.
    pub(crate) server: Side,
    /// Calls made from here.
    pub(crate) client: Side,
}

/// Streams' figures, kept by their flows.
#[derive(Debug, Default)]
pub(crate) struct StreamCounters {
    /// Flows alive.
    pub(crate) open: AtomicU64,
    /// Bytes of items queued, not yet read.
    pub(crate) buffered: AtomicU64,
    pub(crate) items_in: AtomicU64,
    pub(crate) items_out: AtomicU64,
}

/// Bulk transfers, engine-wide.
#[derive(Default)]
pub(crate) struct BulkCounters {
    pub(crate) transfers: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) bytes_pulled: AtomicU64,
    pub(crate) bytes_pushed: AtomicU64,
    /// Time spent in transfers, in nanoseconds (for MiB/s).
    pub(crate) busy_ns: AtomicU64,
    /// Payloads (arguments, responses) sent by the bulk path: exposed for
    /// the peer to pull (`overflow.rs`).
    pub(crate) payloads_sent: AtomicU64,
    /// Payloads received by the bulk path: pulled whole.
    pub(crate) payloads_received: AtomicU64,
    /// Payloads this engine refused to receive, before pulling or
    /// allocating anything: over its `max_payload_bytes`, or no memory.
    pub(crate) payloads_refused: AtomicU64,
}

impl BulkCounters {
    /// Counts a payload exposed for the peer to pull.
    pub(crate) fn payload_sent(&self) {
        self.payloads_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a payload pulled whole.
    pub(crate) fn payload_received(&self) {
        self.payloads_received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a payload refused before anything moved.
    pub(crate) fn payload_refused(&self) {
        self.payloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a transfer of `bytes` that took `took`.
    pub(crate) fn transfer(&self, pulled: bool, bytes: u64, took: Duration, ok: bool) {
        self.transfers.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let to = if pulled {
            &self.bytes_pulled
        } else {
            &self.bytes_pushed
        };
        to.fetch_add(bytes, Ordering::Relaxed);
        self.busy_ns.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// What a connection counts. The reader alone writes what it counts (the
/// messages it receives, the requests it dispatches): a load and a store
/// each. Messages sent are counted under the outbox's lock
/// (`conn.rs`), which every send takes anyway. The rest is on colder
/// paths.
#[derive(Default, Debug)]
pub(crate) struct ConnCounters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    /// Requests the peer sent.
    pub(crate) requests: AtomicU64,
    /// Error frames sent to the peer.
    pub(crate) errors_sent: AtomicU64,
    /// Error frames received from the peer.
    pub(crate) errors_received: AtomicU64,
    /// Times the reader stopped reading: every request slot was taken
    /// (`max_in_flight_per_connection`), or queued answers were over their
    /// budget.
    pub(crate) limit_waits: AtomicU64,
    /// The most requests in flight at once on the connection.
    pub(crate) peak_in_flight: AtomicUsize,
    /// Set while the reader waits for a request slot: it then holds none
    /// (otherwise it holds the next request's, taken before reading).
    pub(crate) at_limit: AtomicBool,
    /// Whether the engine counts (`stats.counters`).
    on: bool,
}

impl ConnCounters {
    pub(crate) fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        if !self.on {
            return;
        }
        bump(&self.messages_in, 1);
        bump(&self.bytes_in, bytes as u64);
    }

    /// The peer's requests in flight, from the slots taken on the
    /// connection (`taken`): all but the one the reader holds for the next
    /// request, unless it waits for one.
    pub(crate) fn requests_in_flight(&self, taken: usize) -> usize {
        if self.at_limit.load(Ordering::Relaxed) {
            taken
        } else {
            taken.saturating_sub(1)
        }
    }

    /// Counts a request from the peer, with `in_flight` of them now.
    #[inline]
    pub(crate) fn request(&self, in_flight: impl FnOnce() -> usize) {
        if !self.on {
            return;
        }
        let in_flight = in_flight();
        bump(&self.requests, 1);
        if in_flight > self.peak_in_flight.load(Ordering::Relaxed) {
            self.peak_in_flight.store(in_flight, Ordering::Relaxed);
        }
    }
}

/// Adds `n` to a counter only the connection's reader writes (others only
/// read it): a load and a store, no read-modify-write.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Whether a snapshot is being taken for a peer now (`serve.rs`).
#[derive(Debug, Default)]
pub(crate) struct Serving(pub(crate) AtomicBool);

/// The engine's records.
pub(crate) struct Recorder {
    /// Whether the engine counts (`stats.counting()`).
    pub(crate) counting: bool,
    /// Whether phases are timed (histograms).
    pub(crate) timing: bool,
    pub(crate) since: Instant,
    rpcs: Mutex<FxHashMap<(u64, u16), Arc<RpcRecord>>>,
    /// Requests for RPCs not registered here (not kept by name: a peer
    /// chooses the ids).
    pub(crate) unknown_rpcs: AtomicU64,
    pub(crate) bulk: BulkCounters,
    /// Streams' flows (`flow.rs`): counted always, they are what a leak
    /// would show.
    pub(crate) streams: Arc<StreamCounters>,
    /// Messages received on connections that closed.
    retired_messages_in: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(counting: bool, timing: bool) -> Self {
        Self {
            counting,
            timing: timing && counting,
            since: Instant::now(),
            rpcs: Mutex::new(FxHashMap::default()),
            unknown_rpcs: AtomicU64::new(0),
            bulk: BulkCounters::default(),
            streams: Arc::default(),
            retired_messages_in: AtomicU64::new(0),
        }
    }

    /// The record of `name` (id `id`) at `provider`, made on first use.
    pub(crate) fn rpc(&self, name: &str, id: u64, provider: u16) -> Arc<RpcRecord> {
        lock(&self.rpcs)
            .entry((id, provider))
            .or_insert_with(|| {
                Arc::new(RpcRecord {
                    name: name.into(),
                    id,
                    provider,
                    server: Side::new(self.counting),
                    client: Side::new(self.counting),
                })
            })
            .clone()
    }

    /// Every record, in no particular order.
    pub(crate) fn rpcs(&self) -> Vec<Arc<RpcRecord>> {
        lock(&self.rpcs).values().cloned().collect()
    }

    /// Keeps what a closing connection counted in the engine's totals.
    pub(crate) fn retire(&self, conn: &ConnCounters) {
        self.retired_messages_in
            .fetch_add(conn.messages_in.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Messages received on connections that closed.
    pub(crate) fn messages_in(&self) -> u64 {
        self.retired_messages_in.load(Ordering::Relaxed)
    }

    /// The clock, if phases are timed.
    #[inline]
    pub(crate) fn now(&self) -> Option<Instant> {
        self.timing.then(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip_through_their_number() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_u8(o as u8), o);
        }
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(names.len(), Outcome::COUNT, "names are distinct");
    }

    #[test]
    fn a_side_counts_outcomes_bytes_and_phases() {
        let s = Side::default();
        s.begin();
        s.begin();
        s.end(Outcome::Ok, 10, 20, &[Some(Duration::from_micros(5)), None]);
        s.refused(Outcome::Busy, 7);
        assert_eq!(s.started(), 3);
        assert_eq!(s.waiting(), 0, "none of them waited");
        s.read(|t| {
            assert_eq!(t.finished, 2);
            assert_eq!(t.ended_waiting, 0);
            assert_eq!(t.outcomes[Outcome::Ok as usize], 1);
            assert_eq!(t.outcomes[Outcome::Busy as usize], 1);
            assert_eq!((t.bytes_in, t.bytes_out), (17, 20));
            let h = t.phases[0].as_deref().map(Histogram::len);
            assert_eq!(h, Some(1));
            assert!(t.phases[1].is_none());
        });
    }

    #[test]
    fn waits_count_until_the_handler_starts_or_the_request_ends() {
        let s = Side::default();
        s.begin();
        s.wait_begins(); // Spawned on a handler thread...
        assert_eq!(s.waiting(), 1);
        s.wait_ends(); // ...which polled it.
        assert_eq!(s.waiting(), 0);
        s.wait_begins(); // Its handler queued it for a thread of its own...
        assert_eq!(s.waiting(), 1);
        s.wait_ends(); // ...which took it up.
        s.end_served(Outcome::Ok, 0, 0, &[], false);
        // One that waited and was dropped meanwhile.
        s.begin();
        s.wait_begins();
        assert_eq!(s.waiting(), 1);
        s.end_served(Outcome::Finalizing, 0, 0, &[], true);
        assert_eq!(s.waiting(), 0);
        s.read(|t| assert_eq!(t.ended_waiting, 1));
    }

    #[test]
    fn one_record_per_rpc_and_provider() {
        let r = Recorder::new(true, false);
        let a = r.rpc("a", 1, 0);
        let b = r.rpc("a", 1, 0);
        assert!(Arc::ptr_eq(&a, &b));
        let _c = r.rpc("a", 1, 2);
        assert_eq!(r.rpcs().len(), 2);
        assert!(r.now().is_none(), "no clock read with timing off");
    }
}
