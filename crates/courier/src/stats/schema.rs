//! The statistics' types: the snapshot [`Stats`] and its parts, and its
//! JSON (schema version [`SCHEMA`]).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The version of the [`Stats`] schema this engine writes. A change that
/// removes or renames a field bumps it; new fields do not.
pub const SCHEMA: u32 = 1;

/// The name of the built-in statistics RPC (at provider 65535, reserved).
pub const STATS_RPC: &str = "courier.stats";

/// A snapshot of an engine's statistics. Serializes to JSON with
/// [`Stats::to_json`]; parses back with [`Stats::from_json`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// The schema version ([`SCHEMA`]).
    pub schema: u32,
    /// The engine's protocol (`tcp`, `unix`, `shm`, …).
    pub protocol: String,
    /// The engine's listening address (empty for a client-only engine).
    pub address: String,
    /// Milliseconds since the engine started counting.
    pub uptime_ms: u64,
    /// Whether the engine counts (`stats.counters`, or timing or serving
    /// on). Without it, the per-request counts are zero (`rpcs` is empty,
    /// a peer's `messages_in`, `bytes_in`, `requests` and peak are zero);
    /// what is counted off the per-request path is kept (messages sent,
    /// error frames, limit waits, providers, bulk, parks, unknown RPCs).
    /// Snapshots of versions that always counted read as true.
    #[serde(default = "yes")]
    pub counters: bool,
    /// Whether latencies are timed (`stats.timing`); without it, every
    /// [`SideStats::phases`] is empty.
    pub timing: bool,
    /// The settings the advice is about.
    pub settings: Settings,
    /// The polling-before-parking loop.
    pub progress: ProgressStats,
    /// Per (RPC, provider), sorted by name then provider.
    pub rpcs: Vec<RpcStats>,
    /// Requests for RPCs not registered here (counted, not named: the ids
    /// are the peers' choice).
    pub unknown_rpc_requests: u64,
    /// Providers with limits or a pool (`providers` in the configuration).
    pub providers: Vec<ProviderStats>,
    /// Open connections, by peer.
    pub peers: Vec<PeerStats>,
    /// Bulk transfers made by this engine.
    pub bulk: BulkStats,
    /// Streams, both ways (snapshots of versions without streams read as
    /// zeros).
    #[serde(default)]
    pub streams: StreamStats,
}

/// Settings of the engine that the figures depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Settings {
    /// `progress_spin_us`: the polling window after activity.
    pub progress_spin_us: u64,
    /// `progress_spin_busy_us`: the window while calls wait.
    pub progress_spin_busy_us: u64,
    /// `use_progress_thread`.
    pub use_progress_thread: bool,
    /// `rpc_thread_count`.
    pub rpc_thread_count: usize,
    /// `max_in_flight_per_connection`.
    pub max_in_flight_per_connection: usize,
    /// `max_queued_response_bytes`.
    pub max_queued_response_bytes: usize,
}

/// The progress loop: how often it polled, and how often it gave up and
/// let the engine's threads sleep.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProgressStats {
    /// Messages received (every connection).
    pub messages_in: u64,
    /// Polling windows that ended without activity, after which the
    /// engine's runtime may park (sleep in the kernel). With
    /// `progress_spin_us = 0` the engine parks whenever it is idle and this
    /// counts nothing.
    pub parks: u64,
    /// Parks that a message received ended within [`SHORT_PARK_US`]
    /// microseconds: the message came soon after the window closed, and
    /// paid the wake-up the window is there to save (a longer window would
    /// have bridged the gap). Parks that this engine's own sends ended are
    /// not counted. Counted by the polling loop when it wakes, from the
    /// clock reads it makes anyway.
    #[serde(default)]
    pub short_parks: u64,
    /// The time those short parks lasted, in all (microseconds): over
    /// `short_parks`, the typical gap a window would have to bridge.
    #[serde(default)]
    pub short_parks_us: u64,
}

/// What makes a park short ([`ProgressStats::short_parks`]): a message
/// came within this many microseconds.
pub const SHORT_PARK_US: u64 = crate::progress::SHORT_PARK_US;

/// The statistics of one RPC at one provider: the requests this engine
/// served (`served`) and the calls it made (`called`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RpcStats {
    /// The RPC's name.
    pub name: String,
    /// Its id, in hex (`0x…`; JSON numbers lose precision past 2^53).
    pub id: String,
    /// The provider id.
    pub provider: u16,
    /// Requests served here: phases `queue` (arrival to handler start),
    /// `handler` (start to response, or to its end if it sent none) and
    /// `respond` (sending the response).
    pub served: Option<SideStats>,
    /// Calls made from here: phase `round_trip`.
    pub called: Option<SideStats>,
}

/// One side of an RPC's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SideStats {
    /// Requests (or calls) started.
    pub calls: u64,
    /// Started and not ended yet.
    pub in_flight: u64,
    /// Of those, requests whose handler has not started (served side; 0 on
    /// the called side): waiting for a handler thread (one of
    /// `rpc_thread_count`, a pool's, the blocking API's serving thread, or
    /// a binding's own: [`Handle::mark_queued`](crate::Handle::mark_queued)),
    /// or for their provider's turn (`max_queued`). A request whose handler
    /// is polled as soon as it is read, on the progress loop, never waits.
    #[serde(default)]
    pub waiting: u64,
    /// Ended well: answered (served), or a response received (called).
    pub ok: u64,
    /// Ended otherwise, by kind: `failed`, `panicked`, `no_response`,
    /// `cancelled`, `deadline`, `busy`, `no_such_rpc`, `one_way`,
    /// `finalizing`, `connection_lost`, `invalid`, `finalized` (only kinds
    /// that happened appear).
    pub errors: BTreeMap<String, u64>,
    /// Payload bytes received (request arguments served, responses
    /// received).
    pub bytes_in: u64,
    /// Payload bytes sent.
    pub bytes_out: u64,
    /// Latency by phase (only with timing on).
    pub phases: BTreeMap<String, Latency>,
}

impl SideStats {
    /// The latency of `phase`, if timed.
    pub fn phase(&self, phase: &str) -> Option<&Latency> {
        self.phases.get(phase)
    }

    /// Calls that ended in error (every kind).
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The count of one error kind.
    pub fn errors_of(&self, kind: &str) -> u64 {
        self.errors.get(kind).copied().unwrap_or(0)
    }
}

/// A latency distribution, in microseconds, with the histogram it comes
/// from (so that two snapshots can be subtracted: [`Latency::since`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Smallest, mean, percentiles and largest, in microseconds (1%
    /// precision: two significant figures).
    pub min_us: f64,
    /// The mean.
    pub mean_us: f64,
    /// The median.
    pub p50_us: f64,
    /// The 90th percentile.
    pub p90_us: f64,
    /// The 99th percentile.
    pub p99_us: f64,
    /// The 99.9th percentile.
    pub p999_us: f64,
    /// The largest.
    pub max_us: f64,
    /// The histogram: `[value_ns, count]` for every non-empty bucket, in
    /// increasing value order (each value stands for its bucket, within
    /// 1%).
    pub buckets: Vec<[u64; 2]>,
}

impl Latency {
    /// The summary and buckets of `h` (values in nanoseconds).
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            buckets: h
                .iter_recorded()
                .map(|v| {
                    [
                        h.highest_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    ]
                })
                .collect(),
        }
    }

    /// The histogram back from the buckets (values in nanoseconds).
    pub fn histogram(&self) -> Histogram<u64> {
        let mut h = super::record::new_histogram();
        for [value, count] in &self.buckets {
            let _ = h.record_n(*value, *count);
        }
        h
    }

    /// The distribution of what was recorded after `earlier` (an older
    /// snapshot of the same phase): for rates and percentiles over an
    /// interval, as `courier top` shows them. `None` if nothing was.
    pub fn since(&self, earlier: &Self) -> Option<Self> {
        let mut now = self.histogram();
        let before = earlier.histogram();
        // Both were built from buckets at the same precision; a count
        // that went down (an engine restarted at the same address) leaves
        // the newer snapshot as it is.
        if now.subtract(&before).is_err() {
            now = self.histogram();
        }
        (!now.is_empty()).then(|| Self::of(&now))
    }
}

/// A provider's limits and what they did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProviderStats {
    /// The provider id.
    pub provider: u16,
    /// `max_running`, if set.
    pub max_running: Option<usize>,
    /// `max_queued`.
    pub max_queued: usize,
    /// The pool its handlers run on, if any.
    pub pool: Option<String>,
    /// Handlers running now.
    pub running: usize,
    /// Requests waiting for a place now.
    pub queued: usize,
    /// Requests refused with `Busy` (load shed) since the start.
    pub refused: u64,
    /// One-way requests dropped past the limits since the start.
    pub dropped: u64,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's address (the one it announced, if it listens).
    pub address: String,
    /// The connection's number in this engine.
    pub connection: u64,
    /// Messages and bytes received (frames, headers included).
    pub messages_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Requests the peer sent.
    pub requests: u64,
    /// The peer's requests in flight now (each holds one of the
    /// connection's `max_in_flight_per_connection` slots).
    pub requests_in_flight: usize,
    /// The most of them in flight at once.
    pub peak_requests_in_flight: usize,
    /// This engine's calls waiting for answers from the peer now.
    pub calls_in_flight: usize,
    /// Error frames sent to the peer, and received from it.
    pub errors_sent: u64,
    /// Error frames received.
    pub errors_received: u64,
    /// Times the connection stopped reading because every request slot
    /// was taken or the queued answers were over their budget.
    pub limit_waits: u64,
}

/// Bulk transfers this engine made (pulls and pushes of exposed memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BulkStats {
    /// Transfers started and ended.
    pub transfers: u64,
    /// Of which failed.
    pub failed: u64,
    /// Bytes pulled from peers.
    pub bytes_pulled: u64,
    /// Bytes pushed to peers.
    pub bytes_pushed: u64,
    /// MiB/s while transfers ran: bytes over the time spent in transfers
    /// (0 if none).
    pub mib_per_s: f64,
    /// Regions exposed now, the payloads waiting to be pulled by peers
    /// included (`docs/bulk.md`, "Payloads of any size").
    #[serde(default)]
    pub regions: u64,
    /// Of which responses held for their callers to pull (each until the
    /// caller releases it, its connection ends, or `timeouts.bulk_ms`).
    #[serde(default)]
    pub held_responses: u64,
    /// Payloads (arguments or responses) over the connection's largest
    /// message that this engine exposed for the peer to pull.
    #[serde(default)]
    pub payloads_sent: u64,
    /// Payloads this engine pulled whole from peers.
    #[serde(default)]
    pub payloads_received: u64,
    /// Payloads this engine refused to receive, before pulling anything or
    /// allocating memory for them: over its `max_payload_bytes`, or no
    /// memory to be had.
    #[serde(default)]
    pub payloads_refused: u64,
}

/// Streams of this engine, opened here or by peers (`docs/streams.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StreamStats {
    /// Streams open now, counting each side once: a call this engine
    /// opened, or a request a peer opened and this engine serves.
    pub open: u64,
    /// Bytes of items received and not yet read, in every stream now.
    pub buffered_bytes: u64,
    /// Items received since the engine started.
    pub items_in: u64,
    /// Items sent since the engine started.
    pub items_out: u64,
}

impl Stats {
    /// The statistics of `name` at `provider`, if any were kept.
    pub fn rpc(&self, name: &str, provider: u16) -> Option<&RpcStats> {
        self.rpcs
            .iter()
            .find(|r| r.name == name && r.provider == provider)
    }

    /// Compact JSON.
    pub fn to_json(&self) -> String {
        // Every field serializes (no maps with non-string keys).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Indented JSON, for people.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses the JSON of [`Stats::to_json`].
    ///
    /// # Errors
    /// [`Error::Protocol`]: the text is not statistics of a
    /// schema this engine reads.
    pub fn from_json(text: &str) -> Result<Self> {
        let stats: Self = serde_json::from_str(text).map_err(|e| Error::Protocol {
            address: String::new(),
            reason: format!("statistics that do not parse: {e}"),
        })?;
        if stats.schema != SCHEMA {
            return Err(Error::Protocol {
                address: stats.address,
                reason: format!(
                    "statistics of schema {} (this version reads {SCHEMA})",
                    stats.schema
                ),
            });
        }
        Ok(stats)
    }
}

/// The default of [`Stats::counters`] for snapshots that lack it.
fn yes() -> bool {
    true
}
