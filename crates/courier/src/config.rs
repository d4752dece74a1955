//! Engine configuration: the builder's settings and the Margo-style JSON.
//!
//! Every setting is a key of one JSON document ([`Config`]); the timeouts
//! are one section of it ([`Timeouts`]), applied in one place
//! (`timeouts.rs`), and so are the bulk transfer settings ([`BulkOptions`]),
//! the providers' limits ([`ProviderOptions`], applied in `admission.rs`)
//! and the handler pools they run on ([`PoolOptions`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Default `max_connections`: connections a server accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default `max_in_flight_per_connection`: requests of one connection whose
/// handlers run at once before the engine stops reading that connection.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// Default `max_queued_response_bytes`: 64 MiB of responses waiting to be
/// written to one connection before the engine stops reading it.
pub const DEFAULT_MAX_QUEUED_RESPONSE_BYTES: usize = 64 << 20;

/// Default `timeouts.hello_ms`: 10 seconds for an accepted connection to
/// deliver its first frame.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;

/// Default maximum message size: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Default `timeouts.connect_ms`: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Default `keepalive.interval_ms`: a connection on which nothing arrived
/// for 10 seconds is probed with a Ping.
pub const DEFAULT_KEEPALIVE_INTERVAL_MS: u64 = 10_000;

/// Default `keepalive.timeout_ms`: a probe unanswered for 5 seconds (nothing
/// at all received meanwhile) ends the connection.
pub const DEFAULT_KEEPALIVE_TIMEOUT_MS: u64 = 5_000;

/// Default polling window after activity, in microseconds (see
/// `docs/benchmarks-journal.md` for the measurements that chose it).
pub const DEFAULT_PROGRESS_SPIN_US: u64 = 50;

/// Default `progress_spin_busy_us`: while calls wait for answers, poll for
/// up to 1 ms after the last activity before parking.
pub const DEFAULT_PROGRESS_SPIN_BUSY_US: u64 = 1000;

/// Whether an engine listens for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Listens at an address, serves RPCs, and can also call others
    /// (Margo's `MARGO_SERVER_MODE`, the default).
    #[default]
    Server,
    /// Does not listen; calls servers (and can serve RPCs sent back to it on
    /// the connections it opened).
    Client,
}

/// Every timeout of an engine: the `timeouts` section of the JSON
/// configuration. Durations are whole milliseconds; `null` means "no
/// bound".
///
/// A call, ping, shutdown request or transfer that sets its own timeout
/// uses it; one that sets none uses the default here. The crate docs list
/// which setting bounds what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long opening a connection to a peer may take (dial and
    /// transport handshake). Default 5000.
    pub connect_ms: u64,
    /// How long an accepted connection may take to deliver its first frame
    /// (the Hello) before it is closed. Default 10000.
    pub hello_ms: u64,
    /// The bound of every exchange that sets none: RPC calls, pings, remote
    /// shutdown requests. Default `null`: wait as long as it takes.
    pub call_ms: Option<u64>,
    /// The bound of every bulk transfer that sets none. Default `null`.
    pub bulk_ms: Option<u64>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            hello_ms: DEFAULT_HELLO_TIMEOUT_MS,
            call_ms: None,
            bulk_ms: None,
        }
    }
}

/// Probing idle connections: the `keepalive` section of the JSON
/// configuration. Durations are whole milliseconds.
///
/// A connection on which nothing was received for `interval_ms` gets a
/// Ping; if nothing at all arrives within `timeout_ms` after it, the peer
/// is taken for unreachable and the connection is closed: every call
/// outstanding on it fails with [`Error::ConnectionLost`], calls without a
/// timeout included. A dead peer is therefore noticed within
/// `interval_ms + timeout_ms` (plus at most two ticks of the engine's
/// keepalive clock, `min(interval_ms, timeout_ms) / 8` each), whatever the
/// transport. Any frame received counts as an answer, and a connection the
/// engine itself stopped reading (its requests are over
/// `max_in_flight_per_connection` or `max_queued_response_bytes`) is not
/// probed meanwhile. See `docs/reliability.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// Silence after which a connection is probed. Default 10000; `null`
    /// or 0: no probes (a peer that stops answering without closing is
    /// then noticed only by the calls' own timeouts, or the transport's).
    pub interval_ms: Option<u64>,
    /// How long a probe may go unanswered. Default 5000.
    pub timeout_ms: u64,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval_ms: Some(DEFAULT_KEEPALIVE_INTERVAL_MS),
            timeout_ms: DEFAULT_KEEPALIVE_TIMEOUT_MS,
        }
    }
}

impl Keepalive {
    /// The probing interval and timeout, or `None` when probes are off.
    pub(crate) fn enabled(&self) -> Option<(Duration, Duration)> {
        match self.interval_ms {
            None | Some(0) => None,
            Some(interval) => Some((
                Duration::from_millis(interval),
                Duration::from_millis(self.timeout_ms),
            )),
        }
    }
}

/// Statistics: the `stats` section of the JSON configuration
/// (`docs/observability.md`): whether the engine counts its calls, times
/// their phases, and lets peers read the figures. Timing or serving turns
/// counting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsOptions {
    /// Count every request and call per RPC and provider, and messages per
    /// connection. Default true: counting costs at most 3% of a 64-byte
    /// call's p50 (about 1-2% on shm, under 1% on tcp, unix and quic;
    /// `docs/benchmarks.md`). False makes every count a predictable branch.
    pub counters: bool,
    /// Time every request's phases (queue, handler, respond) and every
    /// call's round trip, into histograms. Default false: the clock reads
    /// cost more than 3% of a 64-byte call on the fastest transports
    /// (`docs/benchmarks.md`).
    pub timing: bool,
    /// Answer the built-in statistics RPC ([`crate::stats::STATS_RPC`]),
    /// so that `courier stats ADDR` and [`crate::Address::stats`] can read
    /// this engine's figures. Default false: statistics name RPCs and
    /// peers. On unix and shm, only the owner's processes can connect.
    pub serve: bool,
}

/// Streams (`docs/streams.md`): how far a producer may run ahead of its
/// consumer, and the largest item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamOptions {
    /// Credit a receiver grants each stream, in bytes (an item costs its
    /// length plus 32): a producer waits once this much is sent and not
    /// yet consumed. A stream's receiver holds at most this much, plus one
    /// item. Default 4 MiB.
    pub window_bytes: u64,
    /// The largest item this engine sends or accepts, in bytes; `null`:
    /// the transport's largest message, less the frame header. An item
    /// over it is refused before it is sent.
    pub max_item_bytes: Option<u64>,
}

/// The default [`StreamOptions::window_bytes`].
pub(crate) const DEFAULT_STREAM_WINDOW: u64 = 4 << 20;

/// The default [`Config::max_payload_bytes`]: 8 GiB.
pub(crate) const DEFAULT_MAX_PAYLOAD: u64 = 8 << 30;

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            window_bytes: DEFAULT_STREAM_WINDOW,
            max_item_bytes: None,
        }
    }
}

impl Default for StatsOptions {
    fn default() -> Self {
        Self {
            counters: true,
            timing: false,
            serve: false,
        }
    }
}

impl StatsOptions {
    /// Whether the engine counts at all (asked for, or needed by timing or
    /// serving).
    pub fn counting(&self) -> bool {
        self.counters || self.timing || self.serve
    }
}

/// How bulk transfers are run; [`crate::Engine::set_bulk_options`] sets an
/// engine's, and so does the `bulk` object of the JSON configuration, where
/// every key is optional. (A transfer's timeout is `timeouts.bulk_ms`, or
/// its own [`crate::bulk::Transfer::timeout`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkOptions {
    /// Bytes per message on the message path (capped so that a chunk fits
    /// the engine's maximum message size). Default 256 KiB: small enough
    /// that even a 1 MiB transfer has several chunks to pipeline (one is
    /// copied while the next travels).
    pub chunk_size: usize,
    /// Chunks in flight at once, per transfer. Default 8 (2 MiB).
    pub window: usize,
    /// Use the transport's direct memory copies when it offers them.
    /// Default: true.
    pub direct: bool,
    /// Smallest transfer that uses direct copies (a grant costs a round
    /// trip; a small transfer is cheaper in one message). Default 64 KiB.
    pub direct_threshold: usize,
    /// Bytes per grant on the direct path. Default 4 MiB: a grant carries
    /// no data, only addresses, so a transfer of up to 4 MiB costs one
    /// round trip and one system call; larger ones have several grants in
    /// flight (`window`), and a region dropped during a transfer stays
    /// readable for at most the copy of one such piece. Values under
    /// 64 KiB are taken as 64 KiB.
    pub direct_chunk: usize,
}

impl Default for BulkOptions {
    fn default() -> Self {
        Self {
            chunk_size: 256 << 10,
            window: 8,
            direct: true,
            direct_threshold: 64 << 10,
            direct_chunk: 4 << 20,
        }
    }
}

/// One provider's limits and pool: a value of the `providers` object of
/// the JSON configuration, whose keys are provider ids (`"3"`: JSON keys
/// are strings). Every key is optional; a provider that is not named, or
/// whose options are all left out, has no limit and runs its handlers
/// where every other handler runs.
///
/// ```json
/// "providers": { "3": { "max_running": 4, "max_queued": 16, "pool": "storage" } }
/// ```
///
/// Past its limits a request is refused at once: the caller gets
/// [`Error::Busy`] (a one-way request is dropped and counted), never a
/// timeout. See `docs/reliability.md`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderOptions {
    /// Handlers of this provider running at once, over every connection
    /// (a handler runs until its response is sent, or its handle dropped).
    /// `null` (the default): no bound.
    pub max_running: Option<usize>,
    /// Requests that may wait, first come first served, for one of the
    /// `max_running` places; one more is refused with [`Error::Busy`].
    /// Default 0: past `max_running`, refuse at once. Needs `max_running`.
    pub max_queued: usize,
    /// The pool (a key of the `pools` object) whose threads run this
    /// provider's handlers; `null` (the default): the engine's handler
    /// threads (`rpc_thread_count`), or its progress loop.
    pub pool: Option<String>,
}

impl ProviderOptions {
    /// At most `max_running` handlers at once and `max_queued` requests
    /// waiting for them.
    pub fn limits(max_running: usize, max_queued: usize) -> Self {
        Self {
            max_running: Some(max_running),
            max_queued,
            pool: None,
        }
    }

    /// The same options, on pool `name`.
    #[must_use]
    pub fn pool(mut self, name: &str) -> Self {
        self.pool = Some(name.to_owned());
        self
    }
}

/// A pool of threads that runs the handlers of the providers assigned to
/// it (Margo's Argobots pools and their execution streams, in one): a
/// value of the `pools` object of the JSON configuration, keyed by the
/// pool's name. Its threads are named `courier-pool-<name>`.
///
/// ```json
/// "pools": { "storage": { "threads": 2 } }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolOptions {
    /// Worker threads of the pool (at least 1).
    pub threads: usize,
}

/// Which path a lookup of an address set tries first
/// (`docs/transports.md`, "Address sets").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathOrder {
    /// The fastest first: the in-process path, then the same host's
    /// (`shm`, then `unix`: each plugin's rank), then the network
    /// transports in the order the set lists them.
    #[default]
    Fastest,
    /// The order the set lists its parts in, whatever they are.
    Listed,
}

/// How an engine speaking several protocols listens, and chooses among
/// the parts of an address set (the `paths` key of the JSON
/// configuration; `docs/transports.md`, "Address sets").
///
/// ```json
/// "paths": { "order": "fastest", "in_process": true, "auto_sm": false }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathOptions {
    /// Which part of a set a lookup tries first ([`PathOrder`]).
    pub order: PathOrder,
    /// An engine built for several protocols also listens on the
    /// in-process protocol (`mem`, a plugin whose reach is the process),
    /// whose address its set carries: an engine of the same process
    /// takes that path, with no socket. Default true.
    pub in_process: bool,
    /// Mercury's `auto_sm`: the engine also speaks the fastest protocol
    /// of the host (`shm`), unless its protocols include one of the host
    /// already, so that peers on the same host take that path. Default
    /// false. PyMargo's `{"mercury": {"auto_sm": true}}` means the same.
    pub auto_sm: bool,
}

impl Default for PathOptions {
    fn default() -> Self {
        Self {
            order: PathOrder::Fastest,
            in_process: true,
            auto_sm: false,
        }
    }
}

/// Reads `listen`: one address (or set, `"tcp://0.0.0.0:7000,shm"`), or a
/// list of them, each a full address or a protocol name.
fn listen_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    use serde::de::Error as _;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Listen {
        One(String),
        Many(Vec<String>),
    }
    match Option::<Listen>::deserialize(d)? {
        None => Ok(None),
        Some(Listen::One(s)) => Ok(Some(s)),
        Some(Listen::Many(v)) if v.is_empty() => Err(D::Error::custom(
            "`listen` is an empty list: give at least one address or protocol",
        )),
        Some(Listen::Many(v)) => {
            if let Some(bad) = v.iter().find(|a| a.contains(',')) {
                return Err(D::Error::custom(format!(
                    "`listen`: '{bad}' holds a comma; a list gives one address per item"
                )));
            }
            Ok(Some(v.join(",")))
        }
    }
}

/// Reads the `providers` object: its keys are provider ids, as strings.
fn provider_ids<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<u16, ProviderOptions>, D::Error> {
    use serde::de::Error as _;
    let by_key = BTreeMap::<String, ProviderOptions>::deserialize(d)?;
    let mut by_id = BTreeMap::new();
    for (key, options) in by_key {
        let id = key.parse::<u16>().map_err(|_| {
            D::Error::custom(format!(
                "providers: \"{key}\" is not a provider id (a number from 0 to 65534)"
            ))
        })?;
        if by_id.insert(id, options).is_some() {
            return Err(D::Error::custom(format!(
                "providers: provider {id} is given twice (\"{key}\" is another spelling of it)"
            )));
        }
    }
    Ok(by_id)
}

/// The engine's settings, as read from JSON and returned (filled in) by
/// `Engine::config`.
///
/// Every key is optional in the JSON; unknown keys are refused so a typo does
/// not go unnoticed. Margo's names are accepted where they exist
/// (`rpc_thread_count`, `use_progress_thread`).
///
/// ```json
/// {
///   "mode": "server",
///   "listen": "tcp://127.0.0.1:0",
///   "use_progress_thread": false,
///   "rpc_thread_count": 0,
///   "max_message_size": 67108864,
///   "enable_remote_shutdown": false,
///   "progress_spin_us": 50,
///   "progress_spin_busy_us": 1000,
///   "max_connections": 1024,
///   "max_in_flight_per_connection": 1024,
///   "max_queued_response_bytes": 67108864,
///   "timeouts": { "connect_ms": 5000, "hello_ms": 10000,
///                 "call_ms": null, "bulk_ms": null },
///   "keepalive": { "interval_ms": 10000, "timeout_ms": 5000 },
///   "bulk": { "chunk_size": 262144, "window": 8, "direct": true,
///             "direct_threshold": 65536, "direct_chunk": 4194304 },
///   "transport": { "nodelay": true },
///   "providers": { "3": { "max_running": 4, "max_queued": 16, "pool": "storage" } },
///   "pools": { "storage": { "threads": 2 } },
///   "max_payload_bytes": 8589934592,
///   "streams": { "window_bytes": 4194304, "max_item_bytes": null },
///   "paths": { "order": "fastest", "in_process": true, "auto_sm": false }
/// }
/// ```
///
/// The keys of earlier versions are still read, and mapped into
/// `timeouts`: `connect_timeout_ms` (`timeouts.connect_ms`),
/// `hello_timeout_ms` (`timeouts.hello_ms`), `default_timeout_ms`
/// (`timeouts.call_ms`) and `bulk.timeout_ms` (`timeouts.bulk_ms`). Giving
/// both spellings of one setting is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Server or client.
    pub mode: Mode,
    /// Full listen address (`tcp://0.0.0.0:7000`); absent: the protocol's
    /// default loopback address. Several, to listen on several protocols:
    /// a list in the JSON (`["tcp://0.0.0.0:7000", "shm"]`), held here as
    /// an address set (`"tcp://0.0.0.0:7000,shm"`; `docs/transports.md`,
    /// "Address sets").
    #[serde(deserialize_with = "listen_list")]
    pub listen: Option<String>,
    /// Run the engine's I/O on a dedicated thread.
    pub use_progress_thread: bool,
    /// Threads that run handlers; 0 runs them on the progress loop.
    #[serde(alias = "num_rpc_threads")]
    pub rpc_thread_count: usize,
    /// Largest message (header + payload) sent or accepted.
    pub max_message_size: usize,
    /// Accept `shutdown` requests from peers.
    pub enable_remote_shutdown: bool,
    /// Polling before parking: after each message, keep the engine's
    /// runtime polling for this many microseconds before it may sleep
    /// (Margo's `progress_spindown_msec`). 0: park at once.
    pub progress_spin_us: u64,
    /// Polling while calls wait: as long as calls of this engine wait for
    /// their answers, the window after each message is this many
    /// microseconds instead of `progress_spin_us` (the answer is on its
    /// way: a large one arriving, a handler computing), and an engine with
    /// nothing outstanding parks after `progress_spin_us` as before.
    /// Never shorter than `progress_spin_us`; with `progress_spin_us = 0`
    /// the engine parks at once whatever this says.
    pub progress_spin_busy_us: u64,
    /// Connections a server accepts at once; one more is closed as soon as
    /// it is accepted (see `limits.rs` and `docs/reliability.md`).
    pub max_connections: usize,
    /// Requests of one connection in flight at once; at the limit the
    /// engine stops reading that connection (backpressure) until one ends.
    pub max_in_flight_per_connection: usize,
    /// Bytes of responses waiting to be written to one connection; over it,
    /// the engine stops reading that connection's requests until they drain.
    pub max_queued_response_bytes: usize,
    /// Every timeout ([`Timeouts`]).
    pub timeouts: Timeouts,
    /// Probing idle connections ([`Keepalive`]).
    pub keepalive: Keepalive,
    /// How bulk transfers run ([`BulkOptions`]).
    pub bulk: BulkOptions,
    /// Options for the transport plugin (override `protocols.toml`'s).
    pub transport: Map<String, Value>,
    /// Limits and pools of providers, by provider id ([`ProviderOptions`]).
    #[serde(deserialize_with = "provider_ids")]
    pub providers: BTreeMap<u16, ProviderOptions>,
    /// Handler pools, by name ([`PoolOptions`]).
    pub pools: BTreeMap<String, PoolOptions>,
    /// Statistics ([`StatsOptions`]).
    pub stats: StatsOptions,
    /// The largest argument or response payload this engine sends, or
    /// accepts by the bulk path, in bytes (a payload that comes inline is
    /// bounded by `max_message_size` already). One over the transport's
    /// largest message travels by the bulk path on its own (`docs/bulk.md`,
    /// "Payloads of any size"); one over this is refused with
    /// [`Error::TooLarge`](crate::Error::TooLarge). Default 8 GiB.
    pub max_payload_bytes: u64,
    /// Streams ([`StreamOptions`]).
    pub streams: StreamOptions,
    /// Several protocols: how the engine chooses a path ([`PathOptions`]).
    pub paths: PathOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Server,
            listen: None,
            use_progress_thread: false,
            rpc_thread_count: 0,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            enable_remote_shutdown: false,
            progress_spin_us: DEFAULT_PROGRESS_SPIN_US,
            progress_spin_busy_us: DEFAULT_PROGRESS_SPIN_BUSY_US,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
            max_queued_response_bytes: DEFAULT_MAX_QUEUED_RESPONSE_BYTES,
            timeouts: Timeouts::default(),
            keepalive: Keepalive::default(),
            bulk: BulkOptions::default(),
            transport: Map::new(),
            providers: BTreeMap::new(),
            pools: BTreeMap::new(),
            stats: StatsOptions::default(),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            streams: StreamOptions::default(),
            paths: PathOptions::default(),
        }
    }
}

/// Keys of earlier versions: (where, old key, new key in `timeouts`).
const RENAMED: [(Option<&str>, &str, &str); 4] = [
    (None, "connect_timeout_ms", "connect_ms"),
    (None, "hello_timeout_ms", "hello_ms"),
    (None, "default_timeout_ms", "call_ms"),
    (Some("bulk"), "timeout_ms", "bulk_ms"),
];

/// Moves the keys of earlier versions into the `timeouts` section.
fn upgrade(mut value: Value) -> Result<Value> {
    let Value::Object(top) = &mut value else {
        return Ok(value);
    };
    for (section, old, new) in RENAMED {
        let taken = match section {
            None => top.remove(old),
            Some(s) => match top.get_mut(s) {
                Some(Value::Object(inner)) => inner.remove(old),
                _ => None,
            },
        };
        let Some(v) = taken else { continue };
        let old_name = section.map_or_else(|| old.to_owned(), |s| format!("{s}.{old}"));
        let timeouts = top
            .entry("timeouts")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(timeouts) = timeouts else {
            return Err(Error::Config("`timeouts` must be an object".into()));
        };
        if timeouts.contains_key(new) {
            return Err(Error::Config(format!(
                "`{old_name}` and `timeouts.{new}` are the same setting: give only `timeouts.{new}`"
            )));
        }
        timeouts.insert(new.to_owned(), v);
    }
    Ok(value)
}

impl Config {
    /// Parses a JSON document (an object; every key optional).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key or the syntax error.
    pub fn from_json(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parses a JSON value (an object; every key optional).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key.
    pub fn from_value(value: Value) -> Result<Self> {
        serde_json::from_value(upgrade(value)?).map_err(|e| Error::Config(e.to_string()))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_message_size < crate::frame::HEADER_LEN {
            return Err(Error::Config(format!(
                "max_message_size {} is smaller than the {}-byte frame header",
                self.max_message_size,
                crate::frame::HEADER_LEN
            )));
        }
        let t = &self.timeouts;
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
            ("timeouts.connect_ms", usize::from(t.connect_ms > 0)),
            ("timeouts.hello_ms", usize::from(t.hello_ms > 0)),
            (
                "keepalive.timeout_ms",
                usize::from(self.keepalive.timeout_ms > 0),
            ),
            ("bulk.chunk_size", self.bulk.chunk_size),
            ("bulk.window", self.bulk.window),
            ("bulk.direct_chunk", self.bulk.direct_chunk),
            (
                "streams.window_bytes",
                usize::from(self.streams.window_bytes > 0),
            ),
            (
                "streams.max_item_bytes",
                usize::from(self.streams.max_item_bytes != Some(0)),
            ),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be positive")));
            }
        }
        for (key, value) in [
            ("timeouts.call_ms", t.call_ms),
            ("timeouts.bulk_ms", t.bulk_ms),
        ] {
            if value == Some(0) {
                return Err(Error::Config(format!(
                    "{key} must be positive (null: no timeout)"
                )));
            }
        }
        for (key, value) in [
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
            ("max_connections", self.max_connections),
        ] {
            if value > tokio::sync::Semaphore::MAX_PERMITS {
                return Err(Error::Config(format!(
                    "{key} {value} is over the largest supported, {}",
                    tokio::sync::Semaphore::MAX_PERMITS
                )));
            }
        }
        self.validate_providers()
    }

    /// Checks the `providers` and `pools` objects.
    fn validate_providers(&self) -> Result<()> {
        for (name, pool) in &self.pools {
            if name.is_empty() {
                return Err(Error::Config(
                    "pools: a pool's name must not be empty".into(),
                ));
            }
            if pool.threads == 0 {
                return Err(Error::Config(format!(
                    "pools.{name}.threads must be positive"
                )));
            }
        }
        for (&id, p) in &self.providers {
            if id == crate::frame::RESERVED_PROVIDER {
                return Err(Error::Config(format!(
                    "providers.{id}: provider id {id} is reserved (provider ids go from 0 to 65534)"
                )));
            }
            match p.max_running {
                Some(0) => {
                    return Err(Error::Config(format!(
                        "providers.{id}.max_running must be positive (null: no bound)"
                    )))
                }
                Some(n) if n > tokio::sync::Semaphore::MAX_PERMITS => {
                    return Err(Error::Config(format!(
                        "providers.{id}.max_running {n} is over the largest supported, {}",
                        tokio::sync::Semaphore::MAX_PERMITS
                    )))
                }
                None if p.max_queued > 0 => {
                    return Err(Error::Config(format!(
                        "providers.{id}.max_queued is set without providers.{id}.max_running: \
                         with no bound on handlers running, no request ever waits"
                    )))
                }
                _ => {}
            }
            if let Some(pool) = &p.pool {
                if !self.pools.contains_key(pool) {
                    let known: Vec<&str> = self.pools.keys().map(String::as_str).collect();
                    let known = if known.is_empty() {
                        "no pool is defined".to_owned()
                    } else {
                        format!("defined: {}", known.join(", "))
                    };
                    return Err(Error::Config(format!(
                        "providers.{id}.pool: no pool named '{pool}' in `pools` ({known})"
                    )));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn progress_spin(&self) -> Duration {
        Duration::from_micros(self.progress_spin_us)
    }

    /// The window while calls are outstanding (see `progress_spin_busy_us`).
    pub(crate) fn progress_spin_busy(&self) -> Duration {
        Duration::from_micros(self.progress_spin_busy_us.max(self.progress_spin_us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_margo_names_and_refuses_typos() {
        let c =
            Config::from_json(r#"{"num_rpc_threads": 2, "use_progress_thread": true}"#).unwrap();
        assert_eq!(c.rpc_thread_count, 2);
        assert!(c.use_progress_thread);
        let err = Config::from_json(r#"{"rpc_threads": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `rpc_threads`"), "{err}");
        let err = Config::from_json("{").unwrap_err().to_string();
        assert!(err.starts_with("invalid engine configuration"), "{err}");
    }

    #[test]
    fn limits_are_keys_and_must_be_positive() {
        let c = Config::from_json(
            r#"{"max_connections": 3, "max_in_flight_per_connection": 2,
                "max_queued_response_bytes": 100, "timeouts": {"hello_ms": 50}}"#,
        )
        .unwrap();
        assert_eq!((c.max_connections, c.max_in_flight_per_connection), (3, 2));
        assert_eq!(
            (c.max_queued_response_bytes, c.timeouts.hello_ms),
            (100, 50)
        );
        c.validate().unwrap();
        for (json, key) in [
            (r#"{"max_connections": 0}"#, "max_connections"),
            (
                r#"{"max_in_flight_per_connection": 0}"#,
                "max_in_flight_per_connection",
            ),
            (r#"{"timeouts": {"hello_ms": 0}}"#, "timeouts.hello_ms"),
            (r#"{"timeouts": {"connect_ms": 0}}"#, "timeouts.connect_ms"),
            (r#"{"timeouts": {"call_ms": 0}}"#, "timeouts.call_ms"),
            (r#"{"timeouts": {"bulk_ms": 0}}"#, "timeouts.bulk_ms"),
            (
                r#"{"keepalive": {"timeout_ms": 0}}"#,
                "keepalive.timeout_ms",
            ),
        ] {
            let c = Config::from_json(json).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn timeouts_are_one_section_and_old_keys_still_read() {
        let c = Config::from_json(
            r#"{"timeouts": {"connect_ms": 7, "hello_ms": 8, "call_ms": 9, "bulk_ms": 10}}"#,
        )
        .unwrap();
        assert_eq!(
            c.timeouts,
            Timeouts {
                connect_ms: 7,
                hello_ms: 8,
                call_ms: Some(9),
                bulk_ms: Some(10)
            }
        );
        let old = Config::from_json(
            r#"{"connect_timeout_ms": 7, "hello_timeout_ms": 8, "default_timeout_ms": 9,
                "bulk": {"timeout_ms": 10, "window": 3}}"#,
        )
        .unwrap();
        assert_eq!(old.timeouts, c.timeouts);
        assert_eq!(old.bulk.window, 3);
        let err = Config::from_json(r#"{"default_timeout_ms": 1, "timeouts": {"call_ms": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default_timeout_ms") && err.contains("timeouts.call_ms"),
            "{err}"
        );
        let err = Config::from_json(r#"{"timeouts": {"call": 2}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `call`"), "{err}");
    }

    #[test]
    fn keepalive_is_a_section_and_null_or_zero_turns_it_off() {
        let ms = Duration::from_millis;
        let c = Config::default();
        assert_eq!(
            c.keepalive.enabled(),
            Some((
                ms(DEFAULT_KEEPALIVE_INTERVAL_MS),
                ms(DEFAULT_KEEPALIVE_TIMEOUT_MS)
            ))
        );
        let c =
            Config::from_json(r#"{"keepalive": {"interval_ms": 200, "timeout_ms": 300}}"#).unwrap();
        c.validate().unwrap();
        assert_eq!(c.keepalive.enabled(), Some((ms(200), ms(300))));
        let c = Config::from_json(r#"{"keepalive": {"timeout_ms": 7}}"#).unwrap();
        assert_eq!(
            c.keepalive.enabled(),
            Some((ms(DEFAULT_KEEPALIVE_INTERVAL_MS), ms(7)))
        );
        for off in [r#"{"interval_ms": null}"#, r#"{"interval_ms": 0}"#] {
            let c = Config::from_json(&format!(r#"{{"keepalive": {off}}}"#)).unwrap();
            c.validate().unwrap();
            assert_eq!(c.keepalive.enabled(), None, "{off}");
        }
        let err = Config::from_json(r#"{"keepalive": {"interval": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `interval`"), "{err}");
    }

    #[test]
    fn bulk_options_are_a_json_object() {
        let c = Config::from_json(
            r#"{"bulk": {"chunk_size": 65536, "window": 2,
                         "direct": false, "direct_threshold": 1, "direct_chunk": 131072}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let o = c.bulk;
        assert_eq!((o.chunk_size, o.window, o.direct_chunk), (65536, 2, 131072));
        assert!(!o.direct);
        assert_eq!(o.direct_threshold, 1);
        // Keys left out keep their defaults.
        let c = Config::from_json(r#"{"bulk": {"window": 3}}"#).unwrap();
        assert_eq!(
            c.bulk,
            BulkOptions {
                window: 3,
                ..Default::default()
            }
        );
        let err = Config::from_json(r#"{"bulk": {"chunk": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `chunk`"), "{err}");
        for bad in [
            r#"{"chunk_size": 0}"#,
            r#"{"window": 0}"#,
            r#"{"direct_chunk": 0}"#,
        ] {
            let c = Config::from_json(&format!(r#"{{"bulk": {bad}}}"#)).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("bulk."), "{err}");
        }
    }

    #[test]
    fn providers_and_pools_are_json_objects() {
        let c = Config::from_json(
            r#"{"providers": {"3": {"max_running": 4, "max_queued": 16, "pool": "io"},
                              "7": {"pool": "io"}, "9": {}},
                "pools": {"io": {"threads": 2}}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.providers[&3], ProviderOptions::limits(4, 16).pool("io"));
        assert_eq!(c.providers[&7].max_running, None);
        assert_eq!(c.providers[&9], ProviderOptions::default());
        assert_eq!(c.pools["io"], PoolOptions { threads: 2 });
        // Keys stay strings in JSON, and the document round-trips.
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["providers"]["3"]["max_queued"], 16);
        assert_eq!(Config::from_value(v).unwrap(), c);
    }

    #[test]
    fn providers_and_pools_name_what_is_wrong() {
        for (json, wanted) in [
            (r#"{"providers": {"x": {}}}"#, r#""x" is not a provider id"#),
            (
                r#"{"providers": {"65536": {}}}"#,
                r#""65536" is not a provider id"#,
            ),
            (
                r#"{"providers": {"3": {}, "03": {}}}"#,
                "provider 3 is given twice",
            ),
            (r#"{"providers": {"3": {"max": 1}}}"#, "unknown field `max`"),
            (r#"{"pools": {"a": {}}}"#, "missing field `threads`"),
        ] {
            let err = Config::from_json(json).unwrap_err().to_string();
            assert!(err.contains(wanted), "{json}: {err}");
        }
        for (json, wanted) in [
            (
                r#"{"providers": {"65535": {"max_running": 1}}}"#,
                "providers.65535: provider id 65535 is reserved",
            ),
            (
                r#"{"providers": {"2": {"max_running": 0}}}"#,
                "providers.2.max_running must be positive",
            ),
            (
                r#"{"providers": {"2": {"max_queued": 5}}}"#,
                "providers.2.max_queued is set without providers.2.max_running",
            ),
            (
                r#"{"providers": {"2": {"pool": "gpu"}}}"#,
                "providers.2.pool: no pool named 'gpu' in `pools` (no pool is defined)",
            ),
            (
                r#"{"providers": {"2": {"pool": "gpu"}}, "pools": {"cpu": {"threads": 1}, "io": {"threads": 1}}}"#,
                "no pool named 'gpu' in `pools` (defined: cpu, io)",
            ),
            (
                r#"{"pools": {"a": {"threads": 0}}}"#,
                "pools.a.threads must be positive",
            ),
            (
                r#"{"pools": {"": {"threads": 1}}}"#,
                "a pool's name must not be empty",
            ),
        ] {
            let err = Config::from_json(json)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted), "{json}: {err}");
        }
    }

    #[test]
    fn default_round_trips_through_json() {
        let c = Config::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(Config::from_value(v).unwrap(), c);
    }
}
