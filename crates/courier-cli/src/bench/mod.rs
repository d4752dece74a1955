//! `courier bench`: one RPC workload over every protocol, next to the raw
//! floor of the same transport, with the servers in child processes.
//!
//! For each protocol and polling policy, three child processes are started
//! (each is this executable, re-run as the hidden `courier bench-peer`; for
//! a protocol that reaches its own process only, such as `mem`, the same
//! peers run on threads of this process instead):
//!
//! * **engine**: a server engine with the RPC `bench.sink` (takes the
//!   payload, responds with an empty payload);
//! * **raw**: the transport alone (`Registry::create` → `DynTransport`),
//!   answering every message with an empty message;
//! * **socket** (tcp and unix plugins only): plain tokio sockets with a
//!   4-byte length prefix, no Courier code, answering the same way.
//!
//! The client side runs in this process on one thread (the CLI's
//! current-thread runtime), as the peers do. Each measurement is a warm-up,
//! then a fixed number of calls (fewer for large payloads) with N in
//! flight, stopped early by a time cap; every round trip goes into an HDR
//! histogram. `docs/benchmarks.md` documents the workload, the table and
//! the JSON.
//!
//! # As a library
//!
//! The measurement and report code of `courier bench` is public, for other
//! benchmarks to measure and print the same way (`benches/peers` compares
//! Courier with tonic and tarpc with it):
//!
//! * [`measure`] times RPCs through any [`Caller`] (such as [`EngineSink`],
//!   a Courier engine) as the engine layer is timed: a warm-up, then N
//!   tasks calling in a loop, each round trip in an HDR histogram, as
//!   [`Figures`] (p50, p99, p99.9, RPCs/s, MiB/s); a [`Spec`] says how many
//!   calls, how many in flight, and the time cap.
//! * [`Summary`] and [`Spread`] give the median, min and max of several
//!   runs; [`Spread::cell`], [`format_us`] and [`format_rate`] write them
//!   as the table does (`7.82 (7.81..7.88)`).
//! * [`Table`] prints a Markdown table; [`Machine`] describes the machine
//!   (the heading's `machine:` line, the JSON's `machine` object).
//! * [`Spinner`] keeps a runtime polling; [`pin_current_thread`] pins the
//!   calling thread to a CPU.
//!
//! ```no_run
//! use courier_cli::bench::{measure, EngineSink, Spec, Summary, format_us};
//! # async fn run(engine: courier::Engine, server: courier::Address) -> Result<(), courier_cli::Error> {
//! let sink = EngineSink::new(&engine, &server, "bench.sink");
//! let payload = courier::Bytes::from(vec![0u8; 64]);
//! let spec = Spec { in_flight: 1, calls: 20_000, warmup: 2_000, time_cap: std::time::Duration::from_secs(60) };
//! let mut runs = Vec::new();
//! for _ in 0..3 {
//!     runs.push(measure(&sink, &payload, &spec).await?);
//! }
//! let p50 = Summary::of(&runs).p50_us;
//! println!("p50 {} µs", p50.cell(3, format_us));
//! # Ok(())
//! # }
//! ```

pub(crate) mod bulk;
mod chart;
pub(crate) mod clients;
mod machine;
mod measure;
pub(crate) mod peer;
mod report;
mod stats;
mod stream;
mod sweep;

pub use self::machine::Machine;
pub use self::measure::{measure, Caller, EngineSink, Figures, Spec, Spinner};
pub use self::stats::{format_rate, format_us, Spread, Summary};
pub use crate::table::{Align, Table};

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use courier::transport::{Address as WireAddr, PluginOptions, ProtocolEntry, Registry};
use courier::{Bytes, Engine};
use serde::Serialize;

use crate::{out, CliResult, Context, Error};

pub(crate) use self::measure::{histogram, nanos};
use self::peer::Peer;
use self::report::RunResult;

/// The RPC the engine peer serves: S bytes in, an empty response out.
pub(crate) const SINK_RPC: &str = "bench.sink";

/// Fewest calls in one measurement, whatever the payload size.
const MIN_CALLS: u64 = 10;
/// Payload bytes one measurement aims to move (then capped by the call
/// count): large payloads make fewer calls.
const BYTES_PER_MEASUREMENT: u64 = 256 << 20;
const QUICK_BYTES_PER_MEASUREMENT: u64 = 64 << 20;
/// Most calls per measurement.
const MAX_CALLS: u64 = 10_000;
const QUICK_MAX_CALLS: u64 = 2_000;
/// Time cap of one measurement (its warm-up gets a quarter of it).
const TIME_CAP_MS: u64 = 5_000;
const QUICK_TIME_CAP_MS: u64 = 1_000;
/// A hang guard around one measurement, beyond its time cap.
const MEASUREMENT_GUARD: Duration = Duration::from_secs(120);

const DEFAULT_SIZES: [usize; 6] = [0, 64, 4 << 10, 64 << 10, 1 << 20, 16 << 20];
const QUICK_SIZES: [usize; 4] = [0, 64, 64 << 10, 1 << 20];
const DEFAULT_IN_FLIGHT: [u32; 2] = [1, 32];
/// The most client processes of `--clients`.
const MAX_CLIENTS: u32 = 64;
/// The largest payload accepted by `--sizes`.
const MAX_SIZE: usize = 1 << 30;
/// Payloads from this size on get a MiB/s figure.
pub(crate) const THROUGHPUT_FROM: usize = 64 << 10;

/// What is measured: the engine, the transport alone, or plain sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Layer {
    /// A full RPC through two engines (`bench.sink`).
    Engine,
    /// The same as `engine`, with both engines counting every call for
    /// their statistics (`stats.counters`): what counting costs.
    Counted,
    /// The same as `engine`, with both engines counting and timing every
    /// call's phases for their statistics (`stats.timing`): what timing
    /// costs.
    Timed,
    /// The same transport through the `Transport` trait, no engine.
    Raw,
    /// Plain tokio sockets with a length prefix, no Courier code (tcp, unix).
    Socket,
}

impl Layer {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Engine => "engine",
            Self::Counted => "counted",
            Self::Timed => "timed",
            Self::Raw => "raw",
            Self::Socket => "socket",
        }
    }
}

/// `courier bench --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchMode {
    /// The RPC workload (`bench.sink`).
    Rpc,
    /// Bulk transfers (pull and push).
    Bulk,
    /// Streams: server- and client-streaming items/s and MiB/s.
    Stream,
    /// Unary calls by payload size up to 1 GiB, one in flight.
    Sweep,
}

/// Where the client and its peers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Pin {
    /// The client on one CPU, every peer on another: cross-core round trips.
    Split,
    /// The client and every peer on one CPU.
    Same,
    /// Wherever the scheduler puts them.
    None,
}

impl Pin {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Split => "split",
            Self::Same => "same",
            Self::None => "none",
        }
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), Error> {
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(Error::Pin { cpu })
    }
}

/// The plain-socket floor of a protocol, by the plugin that implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketKind {
    Tcp,
    Unix,
}

pub(crate) fn socket_kind(entry: &ProtocolEntry) -> Option<SocketKind> {
    match entry.plugin.as_str() {
        "tcp" => Some(SocketKind::Tcp),
        "unix" if cfg!(unix) => Some(SocketKind::Unix),
        _ => None,
    }
}

/// A client-mode engine builder for `proto`; for a set, without the
/// in-process path (the peer is another process: the set's mem part is of
/// no use to this one, and would be tried first).
pub(crate) fn client_builder(proto: &Proto) -> courier::EngineBuilder {
    let builder = Engine::builder(&proto.name).client();
    if proto.set {
        builder.config_value(serde_json::json!({"paths": {"in_process": false}}))
    } else {
        builder
    }
}

/// The sets to measure: `--set`'s; without `--set` and `--protocols`, in
/// `--mode rpc`, the set `tcp,shm` when both plugins are built in (the
/// main job's row of an address set).
fn default_sets(args: &BenchArgs, registry: &Registry) -> Vec<String> {
    if !args.sets.is_empty() || !args.protocols.is_empty() || args.mode != BenchMode::Rpc {
        return args.sets.clone();
    }
    let built_in = |name: &str| {
        registry
            .resolve(name)
            .is_ok_and(|entry| registry.is_available(&entry))
    };
    if built_in("tcp") && built_in("shm") {
        vec!["tcp,shm".to_owned()]
    } else {
        Vec::new()
    }
}

/// Resolves `--set P,P,...`: two protocols or more, each built in, none
/// reaching this process only (the row is measured across processes).
fn set_proto(registry: &Registry, text: &str, max_message_size: usize) -> CliResult<Proto> {
    let mut names: Vec<String> = Vec::new();
    let mut plugins: Vec<String> = Vec::new();
    for part in text.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(Error::Argument(format!(
                "--set '{text}': an empty protocol name (give protocols separated by commas, \
                 e.g. --set tcp,shm)"
            )));
        }
        let (entry, _) = registry
            .create(part, &PluginOptions::new(), max_message_size)
            .context(|| format!("--set '{text}'"))?;
        if registry.reach(&entry) == Some(courier::transport::Reach::Process) {
            return Err(Error::Argument(format!(
                "--set '{text}': '{}' reaches one process only; a set row is measured \
                 across processes (every engine of several protocols has an in-process path \
                 already)",
                entry.name
            )));
        }
        if names.contains(&entry.name) {
            return Err(Error::Argument(format!(
                "--set '{text}': protocol '{}' is given twice",
                entry.name
            )));
        }
        names.push(entry.name);
        plugins.push(entry.plugin);
    }
    if names.len() < 2 {
        return Err(Error::Argument(format!(
            "--set '{text}': a set has two protocols or more (e.g. --set tcp,shm); \
             for one, use --protocols"
        )));
    }
    Ok(Proto {
        name: names.join(","),
        plugin: plugins.join(","),
        socket: None,
        in_process: false,
        set: true,
    })
}

/// How the headings say the runs: "1 run", "3 runs, median".
pub(crate) fn runs_label(runs: u32) -> String {
    if runs == 1 {
        "1 run".to_owned()
    } else {
        format!("{runs} runs, median")
    }
}

/// The policy column: "park" for 0, "spin Nµs" otherwise.
pub(crate) fn policy_label(spin_us: u64) -> String {
    if spin_us == 0 {
        "park".to_owned()
    } else {
        format!("spin {spin_us}µs")
    }
}

#[derive(Debug, Args)]
#[command(after_help = BENCH_AFTER_HELP)]
pub(crate) struct BenchArgs {
    /// What to measure: `rpc` (the RPC workload); `bulk` (pull and push
    /// MiB/s by transfer size, 64K..16M by default, beside the raw and
    /// socket floors and memcpy; see docs/bulk.md); `stream` (server- and
    /// client-streaming items/s and MiB/s by item size, 64,64K..16M by
    /// default, beside the transport's one-way raw floor and, below 64 KiB,
    /// the unary RPCs/s at 32 in flight); `sweep` (unary calls by payload
    /// size, 64..1G by default, one in flight, beside the raw floor).
    #[arg(long, value_enum, default_value_t = BenchMode::Rpc)]
    mode: BenchMode,

    /// With --mode stream: `streams.window_bytes` of both engines, the
    /// credit a stream's receiver grants (K, M, G suffixes) [default: the
    /// engine's, 4 MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    window: Option<usize>,

    /// Protocols to measure, comma-separated names or aliases (default: every
    /// protocol whose plugin is built in; see `courier protocols`).
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    protocols: Vec<String>,

    /// An address set to measure as a row of its own, e.g. --set tcp,shm
    /// (repeat --set for more; one set per --set, its protocols
    /// comma-separated). Its engine peer, a child process, listens on each
    /// protocol (as `courier serve --protocol tcp,shm`) and prints one
    /// address set; the client engine, in this process, speaks the same
    /// protocols (with `paths.in_process` off: the set's mem part is the
    /// peer's own process) and connects by the path a lookup of the set
    /// picks: shm on the same host. The row is named by the set, the path
    /// taken is printed under the table (and is the JSON record's
    /// `plugin`). Engine layers only (no raw or socket floor of a set);
    /// --mode rpc only. Added to the --protocols rows [default: tcp,shm
    /// when both are built in and --protocols is not given].
    #[arg(long = "set", value_name = "P,P[,...]")]
    sets: Vec<String>,

    /// Payload sizes in bytes, comma-separated, with an optional K, M or G
    /// suffix in powers of 1024 (4K = 4096) [default: 0,64,4K,64K,1M,16M;
    /// with --quick 0,64,64K,1M].
    #[arg(long, value_name = "S,S,...", value_delimiter = ',', value_parser = parse_size)]
    sizes: Vec<usize>,

    /// Calls kept in flight, comma-separated [default: 1,32].
    #[arg(long = "in-flight", value_name = "N,N,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    in_flight: Vec<u32>,

    /// Clients, comma-separated [default: 1]. With N > 1 the engine, raw
    /// and socket layers are each measured by N client processes (this
    /// executable again), all against the one server of that layer, all on
    /// the client's CPU, each keeping --in-flight calls outstanding and
    /// making up to --calls calls; they warm up, then start together.
    /// Latencies are those of all their calls; RPCs/s = all calls / the
    /// span from the first client's start to the last one's end. Protocols
    /// that reach their own process only (mem) are measured with 1 client.
    #[arg(long, value_name = "N,N,...", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
    clients: Vec<u32>,

    /// Repetitions of every measurement; each figure is the median over the
    /// runs, with min..max [default: 3; with --quick 1].
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,

    /// A short run: sizes 0,64,64K,1M, 1 run, at most 2000 calls, 64 MiB and
    /// 1 s per measurement. Options given explicitly take precedence.
    #[arg(long)]
    quick: bool,

    /// Polling policies, comma-separated values of the engine's
    /// `progress_spin_us` (0 parks at once); every measurement runs once per
    /// policy, on both sides.
    #[arg(long = "progress-spin-us", value_name = "US,US,...", value_delimiter = ',',
          default_values_t = [courier::DEFAULT_PROGRESS_SPIN_US])]
    progress_spin_us: Vec<u64>,

    /// Layers to measure, comma-separated [default: engine,raw,socket]; the
    /// socket floor exists for the tcp and unix plugins only. `counted` is the
    /// engine with statistics counters on (`stats.counters`) on both sides,
    /// `timed` with counters and timing on (`stats.timing`): add them beside
    /// `engine` to see what they cost, in the same run.
    #[arg(long, value_name = "L,L,...", value_delimiter = ',', value_enum)]
    layers: Vec<Layer>,

    /// Most calls in one measurement [default: 10000; with --quick 2000];
    /// large payloads make fewer: 256 MiB (--quick: 64 MiB) over the
    /// payload size, at least 10 and twice the calls in flight.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    calls: Option<u64>,

    /// Time cap of one measurement, in milliseconds: no call starts after
    /// it (a warm-up gets a quarter of it) [default: 5000; with --quick 1000].
    #[arg(long = "time-cap-ms", value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    time_cap_ms: Option<u64>,

    /// Where the processes run: `split` puts this process (the client) on
    /// the first CPU it may use and every server on the second; `same` puts
    /// them all on the first; `none` leaves it to the scheduler
    /// [default: split when two CPUs are available, else none].
    #[arg(long, value_name = "MODE", value_enum)]
    pin: Option<Pin>,

    /// Write every figure as JSON to FILE (schema: docs/benchmarks.md).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Draw p50 latency and MiB/s by payload size, per protocol, as SVG to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

/// Parses `4096`, `4K`, `4KiB`, `1M`, `16MB`, ... (powers of 1024).
pub(crate) fn parse_size(text: &str) -> CliResult<usize> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits);
    let number: u64 = number.parse().map_err(|_| {
        Error::Argument(format!(
            "'{text}' is not a size (a number of bytes, with an optional K, M or G suffix)"
        ))
    })?;
    let shift = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(Error::Argument(format!(
                "'{text}': unknown size suffix '{suffix}' (use K, M or G, powers of 1024)"
            )))
        }
    };
    let bytes = number
        .checked_mul(1 << shift)
        .filter(|b| *b <= MAX_SIZE as u64)
        .ok_or_else(|| Error::Argument(format!("'{text}' is over the largest payload, 1 GiB")))?;
    usize::try_from(bytes)
        .map_err(|_| Error::Argument(format!("'{text}' does not fit in memory here")))
}

/// Formats a payload size as the table shows it: `0 B`, `64 B`, `4 KiB`.
pub(crate) fn size_label(bytes: usize) -> String {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if bytes >= unit {
            // `unit` is a power of two: whole units when the low bits are zero.
            return if bytes & (unit - 1) == 0 {
                format!("{} {name}", bytes / unit)
            } else {
                #[allow(clippy::cast_precision_loss)]
                let v = bytes as f64 / unit as f64;
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// A protocol to measure, resolved through the registry.
#[derive(Debug, Clone)]
pub(crate) struct Proto {
    /// The canonical name.
    pub(crate) name: String,
    pub(crate) plugin: String,
    pub(crate) socket: Option<SocketKind>,
    /// Its connections reach this process only (`mem`): the peers run on
    /// threads here instead of in child processes.
    pub(crate) in_process: bool,
    /// An address set (`--set tcp,shm`): `name` lists its protocols, the
    /// engine layers only are measured, across processes.
    pub(crate) set: bool,
}

/// Everything `courier bench` will do, from its options.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) protocols: Vec<Proto>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) in_flight: Vec<u32>,
    /// Client processes per measurement (1: this process alone).
    pub(crate) clients: Vec<u32>,
    pub(crate) runs: u32,
    pub(crate) policies: Vec<u64>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) max_calls: u64,
    pub(crate) bytes_per_measurement: u64,
    pub(crate) time_cap: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) quick: bool,
    pub(crate) pin: Pin,
    /// The CPU of this process (the client), when pinned.
    pub(crate) client_cpu: Option<usize>,
    /// The CPU of the peers, when pinned.
    pub(crate) peer_cpu: Option<usize>,
    /// The machine, as the JSON describes it (read before pinning).
    pub(crate) machine: Machine,
}

/// Resolves `--pin` against the CPUs this process may use.
fn cpus(pin: Option<Pin>) -> CliResult<(Pin, Option<usize>, Option<usize>)> {
    let ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    match (pin, ids.as_slice()) {
        (Some(Pin::None), _) | (None, [] | [_]) => Ok((Pin::None, None, None)),
        (Some(Pin::Split) | None, [a, b, ..]) => Ok((Pin::Split, Some(*a), Some(*b))),
        (Some(Pin::Same), [a, ..]) => Ok((Pin::Same, Some(*a), Some(*a))),
        (Some(Pin::Split), _) => Err(Error::Argument(format!(
            "--pin split needs two CPUs; this process may use {}",
            ids.len()
        ))),
        (Some(Pin::Same), []) => Err(Error::Unsupported(
            "--pin same: cannot read the CPUs this process may use".into(),
        )),
    }
}

impl Plan {
    fn new(args: &BenchArgs, registry: &Registry) -> CliResult<Self> {
        let quick = args.quick;
        let mut sizes = if args.sizes.is_empty() {
            if quick {
                QUICK_SIZES.to_vec()
            } else {
                DEFAULT_SIZES.to_vec()
            }
        } else {
            args.sizes.clone()
        };
        sizes.sort_unstable();
        sizes.dedup();
        let mut in_flight = if args.in_flight.is_empty() {
            DEFAULT_IN_FLIGHT.to_vec()
        } else {
            args.in_flight.clone()
        };
        in_flight.sort_unstable();
        in_flight.dedup();
        let mut clients = if args.clients.is_empty() {
            vec![1]
        } else {
            args.clients.clone()
        };
        clients.sort_unstable();
        clients.dedup();
        if args.mode != BenchMode::Rpc && clients != [1] {
            return Err(Error::Argument(
                "--clients applies to --mode rpc only".into(),
            ));
        }
        match args.window {
            Some(_) if args.mode != BenchMode::Stream => {
                return Err(Error::Argument(
                    "--window applies to --mode stream only".into(),
                ))
            }
            Some(0) => {
                return Err(Error::Argument(
                    "--window 0: a stream needs some credit (at least 1 byte)".into(),
                ))
            }
            _ => {}
        }
        let mut policies = Vec::new();
        for p in &args.progress_spin_us {
            if !policies.contains(p) {
                policies.push(*p);
            }
        }
        if policies.is_empty() {
            policies.push(courier::DEFAULT_PROGRESS_SPIN_US);
        }
        let mut layers = if args.layers.is_empty() {
            vec![Layer::Engine, Layer::Raw, Layer::Socket]
        } else {
            args.layers.clone()
        };
        layers.sort_unstable();
        layers.dedup();

        // Room for the largest payload behind the engine's header.
        let largest = sizes.last().copied().unwrap_or(0);
        let max_message_size =
            courier::DEFAULT_MAX_MESSAGE_SIZE.max(largest + courier::frame::HEADER_LEN + 4096);

        let (pin, client_cpu, peer_cpu) = cpus(args.pin)?;
        let names = crate::demo::selected_protocols(registry, &args.protocols, true);
        let mut protocols: Vec<Proto> = Vec::new();
        let mut seen = HashSet::new();
        for name in &names {
            // `create` says whether the name is known, and whether its plugin
            // is built in, in the registry's own words; it also checks that
            // the transport can be built before any child is started.
            let (entry, _) = registry.create(name, &PluginOptions::new(), max_message_size)?;
            if seen.insert(entry.name.clone()) {
                protocols.push(Proto {
                    in_process: registry.reach(&entry) == Some(courier::transport::Reach::Process),
                    socket: socket_kind(&entry),
                    name: entry.name,
                    plugin: entry.plugin,
                    set: false,
                });
            }
        }
        if !args.sets.is_empty() && args.mode != BenchMode::Rpc {
            return Err(Error::Argument("--set applies to --mode rpc only".into()));
        }
        for text in &default_sets(args, registry) {
            let set = set_proto(registry, text, max_message_size)?;
            if seen.insert(set.name.clone()) {
                protocols.push(set);
            }
        }
        if protocols.is_empty() {
            return Err(Error::Unsupported(
                "no protocol to measure: no transport plugin is built in".into(),
            ));
        }
        Ok(Self {
            protocols,
            sizes,
            in_flight,
            clients,
            runs: args.runs.unwrap_or(if quick { 1 } else { 3 }),
            policies,
            layers,
            max_calls: args
                .calls
                .unwrap_or(if quick { QUICK_MAX_CALLS } else { MAX_CALLS }),
            bytes_per_measurement: if quick {
                QUICK_BYTES_PER_MEASUREMENT
            } else {
                BYTES_PER_MEASUREMENT
            },
            time_cap: Duration::from_millis(args.time_cap_ms.unwrap_or(if quick {
                QUICK_TIME_CAP_MS
            } else {
                TIME_CAP_MS
            })),
            max_message_size,
            quick,
            pin,
            client_cpu,
            peer_cpu,
            machine: Machine::read(),
        })
    }

    /// The layers measured for `p` (no socket floor for other plugins; the
    /// engine layers only for a set).
    pub(crate) fn layers_for(&self, p: &Proto) -> Vec<Layer> {
        self.layers
            .iter()
            .copied()
            .filter(|l| *l != Layer::Socket || p.socket.is_some())
            .filter(|l| !p.set || matches!(l, Layer::Engine | Layer::Counted | Layer::Timed))
            .collect()
    }

    /// The client counts measured for `p`: 1 only for a protocol whose
    /// connections reach this process only (its clients cannot be other
    /// processes).
    pub(crate) fn clients_for(&self, p: &Proto) -> Vec<u32> {
        self.clients
            .iter()
            .copied()
            .filter(|c| *c == 1 || !p.in_process)
            .collect()
    }

    /// Calls of one measurement: the byte budget over the size, at least
    /// `MIN_CALLS` and twice the calls in flight, at most `max_calls`.
    pub(crate) fn calls(&self, size: usize, in_flight: u32) -> u64 {
        let by_bytes = self.bytes_per_measurement / (size.max(1) as u64);
        let floor = MIN_CALLS.max(2 * u64::from(in_flight));
        by_bytes.max(floor).min(self.max_calls).max(1)
    }

    /// Calls of the warm-up before a measurement: a tenth, and at least one
    /// per call in flight.
    pub(crate) fn warmup(&self, calls: u64, in_flight: u32) -> u64 {
        (calls / 10).max(u64::from(in_flight)).min(calls)
    }

    fn spec(&self, size: usize, in_flight: u32) -> Spec {
        let calls = self.calls(size, in_flight);
        Spec {
            in_flight: in_flight as usize,
            calls,
            warmup: self.warmup(calls, in_flight),
            time_cap: self.time_cap,
        }
    }

    fn measurements(&self) -> u64 {
        let per_layer = self.runs as usize * self.sizes.len() * self.in_flight.len();
        let layers: usize = self
            .protocols
            .iter()
            .map(|p| self.layers_for(p).len() * self.clients_for(p).len())
            .sum();
        (per_layer * layers * self.policies.len()) as u64
    }
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "[{elapsed_precise}] {bar:30} {pos}/{len} {wide_msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

pub(crate) async fn run(args: BenchArgs, verbose: u8) -> CliResult {
    let registry = courier::default_registry()?;
    let plan = Plan::new(&args, &registry)?;
    if let Some(cpu) = plan.client_cpu {
        // The client runs on this thread (a current-thread runtime).
        pin_current_thread(cpu)?;
    }
    match args.mode {
        BenchMode::Rpc => {}
        BenchMode::Bulk => return bulk::run(&args, &plan, &registry, verbose).await,
        BenchMode::Stream => return stream::run(&args, &plan, &registry, verbose).await,
        BenchMode::Sweep => return sweep::run(&args, &plan, &registry, verbose).await,
    }
    let started = Instant::now();
    let bar = progress_bar(plan.measurements());
    let all = async {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (pi, proto) in plan.protocols.iter().enumerate() {
            for &spin in &plan.policies {
                let group = Group {
                    plan: &plan,
                    registry: &registry,
                    proto,
                    proto_index: pi,
                    spin_us: spin,
                    verbose,
                    bar: &bar,
                };
                if let Err(e) = group.run(&mut results, &mut errors).await {
                    errors.push(e.context(format!(
                        "bench over {} ({}) failed",
                        proto.name,
                        policy_label(spin)
                    )));
                }
            }
        }
        (results, errors)
    };
    // On Ctrl-C or SIGTERM, dropping `all` drops the children's handles,
    // which kills them.
    let (results, errors) = tokio::select! {
        r = all => r,
        () = crate::serve::stop_signal() => {
            bar.finish_and_clear();
            return Err(Error::Interrupted("bench"));
        }
    };
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    let records = report::aggregate(&plan, &results);
    if !records.is_empty() || errors.is_empty() {
        report::print(&plan, &records, elapsed)?;
    }
    if let Some(path) = &args.json {
        report::write_json(path, &plan, &records, &errors, elapsed)?;
        out(format_args!("results written to {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        chart::write_svg(path, &plan, &records)?;
        out(format_args!("charts written to {}", path.display()))?;
    }
    crate::fail_with_last(errors)
}

/// One protocol under one polling policy: its children, its client side,
/// and every measurement of it.
struct Group<'a> {
    plan: &'a Plan,
    registry: &'a Registry,
    proto: &'a Proto,
    proto_index: usize,
    spin_us: u64,
    verbose: u8,
    bar: &'a indicatif::ProgressBar,
}

/// The children of a group, stopped (or killed) together.
#[derive(Debug, Default)]
struct Peers {
    engine: Option<Peer>,
    counted: Option<Peer>,
    timed: Option<Peer>,
    raw: Option<Peer>,
    socket: Option<Peer>,
}

impl Peers {
    fn all(self) -> impl Iterator<Item = Peer> {
        [self.engine, self.counted, self.timed, self.raw, self.socket]
            .into_iter()
            .flatten()
    }
}

impl Group<'_> {
    /// Measures everything of the group; a failed many-client measurement
    /// goes to `errors` and the others go on, any other failure ends the
    /// group.
    async fn run(&self, results: &mut Vec<RunResult>, errors: &mut Vec<Error>) -> CliResult {
        let layers = self.plan.layers_for(self.proto);
        let mut peers = Peers::default();
        let started = self.start_peers(&layers, &mut peers).await;
        let outcome = match started {
            Ok(()) => self.measure_all(&layers, &peers, results, errors).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                let mut first_error = None;
                for p in peers.all() {
                    if let Err(e) = p.stop().await {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
            Err(e) => {
                for p in peers.all() {
                    p.kill().await;
                }
                Err(e)
            }
        }
    }

    async fn start_peers(&self, layers: &[Layer], peers: &mut Peers) -> CliResult {
        for &layer in layers {
            self.bar.set_message(format!(
                "{}: starting the {} peer",
                self.proto.name,
                layer.name()
            ));
            let args = peer::PeerArgs {
                layer,
                protocol: self.proto.name.clone(),
                progress_spin_us: self.spin_us,
                max_message_size: self.plan.max_message_size,
                cpu: self.plan.peer_cpu,
                stream_window: None,
                oneway: false,
            };
            let p = Peer::start(args, self.verbose, self.proto.in_process).await?;
            match layer {
                Layer::Engine => peers.engine = Some(p),
                Layer::Counted => peers.counted = Some(p),
                Layer::Timed => peers.timed = Some(p),
                Layer::Raw => peers.raw = Some(p),
                Layer::Socket => peers.socket = Some(p),
            }
        }
        Ok(())
    }

    async fn measure_all(
        &self,
        layers: &[Layer],
        peers: &Peers,
        results: &mut Vec<RunResult>,
        errors: &mut Vec<Error>,
    ) -> CliResult {
        let plan = self.plan;
        let spin = Duration::from_micros(self.spin_us);
        // The client engines, on this thread's runtime, polling as the
        // servers do: one for the engine layer, one timing its calls for
        // the timed layer.
        let mut clients = Vec::new();
        let mut made = Ok(());
        for (peer, layer) in [
            (&peers.engine, Layer::Engine),
            (&peers.counted, Layer::Counted),
            (&peers.timed, Layer::Timed),
        ] {
            let Some(p) = peer else {
                clients.push(None);
                continue;
            };
            let engine = client_builder(self.proto)
                .progress_spin(spin)
                .stats(layer == Layer::Counted)
                .stats_timing(layer == Layer::Timed)
                .max_message_size(plan.max_message_size)
                .build()
                .await
                .context(|| "client engine")?;
            let found = match engine.lookup(p.address()).await {
                // The path a set's connection takes is known once it is
                // open: a ping opens it.
                Ok(a) if self.proto.set => a.ping(None).await.map(|_| a),
                other => other,
            };
            match found {
                Ok(a) => clients.push(Some((engine, a))),
                Err(e) => {
                    engine.finalize().await;
                    made = Err(Error::from(e).context("lookup of the engine peer"));
                    break;
                }
            }
        }
        let result = match made {
            Ok(()) => {
                let client = |i: usize| clients.get(i).and_then(Option::as_ref);
                self.measure_loop(
                    layers,
                    peers,
                    [client(0), client(1), client(2)],
                    results,
                    errors,
                )
                .await
            }
            Err(e) => Err(e),
        };
        for (engine, _) in clients.into_iter().flatten() {
            engine.finalize().await;
        }
        result
    }

    /// The plugin that carries the calls of `layer`: the protocol's; for a
    /// set, that of the path its client's connection took (`path:` and the
    /// part, as `path:shm://courier-…`, for the note under the table).
    fn plugin_of(
        &self,
        layer: Layer,
        [client, counted, timed]: [Option<&(Engine, courier::Address)>; 3],
    ) -> String {
        if !self.proto.set {
            return self.proto.plugin.clone();
        }
        let client = match layer {
            Layer::Counted => counted,
            Layer::Timed => timed,
            _ => client,
        };
        match client.and_then(|(_, a)| a.path()) {
            Some(path) => self
                .registry
                .resolve(path.protocol())
                .map_or_else(|_| path.protocol().to_owned(), |e| e.plugin),
            None => "-".to_owned(),
        }
    }

    async fn measure_loop(
        &self,
        layers: &[Layer],
        peers: &Peers,
        [client, counted, timed]: [Option<&(Engine, courier::Address)>; 3],
        results: &mut Vec<RunResult>,
        errors: &mut Vec<Error>,
    ) -> CliResult {
        let plan = self.plan;
        let sink = client.map(|(engine, addr)| EngineSink::new(engine, addr, SINK_RPC));
        let counted_sink = counted.map(|(engine, addr)| EngineSink::new(engine, addr, SINK_RPC));
        let timed_sink = timed.map(|(engine, addr)| EngineSink::new(engine, addr, SINK_RPC));
        let transport = match &peers.raw {
            None => None,
            Some(p) => {
                let (_, t) = self.registry.create(
                    &self.proto.name,
                    &PluginOptions::new(),
                    plan.max_message_size,
                )?;
                let addr: WireAddr = p.address().parse().context(|| "the raw peer's address")?;
                Some((t, addr))
            }
        };
        let largest = plan.sizes.last().copied().unwrap_or(0);
        let buffer = Bytes::from(vec![0xa5u8; largest]);
        let clients = plan.clients_for(self.proto);
        for run in 0..plan.runs {
            for &size in &plan.sizes {
                let payload = buffer.slice(..size);
                for &n in &plan.in_flight {
                    let spec = plan.spec(size, n);
                    for &c in &clients {
                        for &layer in layers {
                            self.bar.set_message(format!(
                                "{} {} {} {} ×{n}{} run {}/{}",
                                self.proto.name,
                                policy_label(self.spin_us),
                                layer.name(),
                                size_label(size),
                                clients_label(c),
                                run + 1,
                                plan.runs
                            ));
                            let what = format!(
                                "{} layer, {} × {n} in flight{}",
                                layer.name(),
                                size_label(size),
                                clients_label(c)
                            );
                            let measured = if c > 1 {
                                self.measure_clients(layer, peers, size, &spec, c).await
                            } else {
                                let sink = match layer {
                                    Layer::Counted => counted_sink.as_ref(),
                                    Layer::Timed => timed_sink.as_ref(),
                                    _ => sink.as_ref(),
                                };
                                self.measure_one(
                                    layer,
                                    peers,
                                    sink,
                                    transport.as_ref(),
                                    &payload,
                                    &spec,
                                )
                                .await
                            };
                            let (figures, client_calls) = match measured {
                                Ok(f) => f,
                                Err(e) if c > 1 => {
                                    // The clients are gone, the servers are
                                    // not: the other measurements go on.
                                    errors.push(e.context(what).context(format!(
                                        "bench over {} ({}) failed",
                                        self.proto.name,
                                        policy_label(self.spin_us)
                                    )));
                                    self.bar.inc(1);
                                    continue;
                                }
                                Err(e) => return Err(e.context(what)),
                            };
                            results.push(RunResult {
                                proto_index: self.proto_index,
                                protocol: self.proto.name.clone(),
                                plugin: self.plugin_of(layer, [client, counted, timed]),
                                spin_us: self.spin_us,
                                layer,
                                size,
                                in_flight: n,
                                clients: c,
                                figures,
                                client_calls,
                            });
                            self.bar.inc(1);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One measurement by this process, the one client, under a hang guard.
    async fn measure_one(
        &self,
        layer: Layer,
        peers: &Peers,
        sink: Option<&EngineSink>,
        transport: Option<&(
            std::sync::Arc<dyn courier::transport::DynTransport>,
            WireAddr,
        )>,
        payload: &Bytes,
        spec: &Spec,
    ) -> CliResult<(Figures, Vec<u64>)> {
        let polling = self.spin_us > 0;
        let work = async {
            match layer {
                Layer::Engine | Layer::Counted | Layer::Timed => match sink {
                    Some(s) => measure(s, payload, spec).await,
                    None => Err(Error::Peer("no engine peer".into())),
                },
                Layer::Raw => match transport {
                    Some((t, a)) => measure::raw(t, a, payload, spec, polling).await,
                    None => Err(Error::Peer("no raw peer".into())),
                },
                Layer::Socket => match (&peers.socket, self.proto.socket) {
                    (Some(p), Some(kind)) => {
                        measure::socket(kind, p.address(), payload, spec, polling).await
                    }
                    _ => Err(Error::Peer("no socket peer".into())),
                },
            }
        };
        let guard = spec.time_cap * 2 + MEASUREMENT_GUARD;
        match tokio::time::timeout(guard, work).await {
            Ok(result) => result.map(|f| (f, vec![f.calls])),
            Err(_) => Err(Error::Peer(format!("no end after {} s", guard.as_secs()))),
        }
    }

    /// One measurement by `clients` client processes (their own guards
    /// bound it).
    async fn measure_clients(
        &self,
        layer: Layer,
        peers: &Peers,
        size: usize,
        spec: &Spec,
        clients: u32,
    ) -> CliResult<(Figures, Vec<u64>)> {
        let peer = match layer {
            Layer::Engine => &peers.engine,
            Layer::Counted => &peers.counted,
            Layer::Timed => &peers.timed,
            Layer::Raw => &peers.raw,
            Layer::Socket => &peers.socket,
        };
        let Some(peer) = peer else {
            return Err(Error::Peer(format!("no {} peer", layer.name())));
        };
        let load = clients::Load {
            client: clients::ClientArgs {
                layer,
                protocol: self.proto.name.clone(),
                address: peer.address().to_owned(),
                size,
                in_flight: u32::try_from(spec.in_flight).unwrap_or(u32::MAX),
                calls: spec.calls,
                warmup: spec.warmup,
                time_cap_ms: u64::try_from(spec.time_cap.as_millis()).unwrap_or(u64::MAX),
                progress_spin_us: self.spin_us,
                max_message_size: self.plan.max_message_size,
                cpu: self.plan.client_cpu,
            },
            clients,
            verbose: self.verbose,
        };
        clients::measure(&load).await
    }
}

/// The label of a client count in messages: nothing for 1, " × N clients".
fn clients_label(clients: u32) -> String {
    if clients > 1 {
        format!(" × {clients} clients")
    } else {
        String::new()
    }
}

const BENCH_AFTER_HELP: &str = "\
Workload: the RPC `bench.sink` takes the payload and responds with an empty
payload (a put). Latency is the full round trip of one call; with N in flight,
N tasks call in a loop. RPCs/s = calls / elapsed; MiB/s = payload × calls /
elapsed (payloads of 64 KiB and more). The raw floor sends the same payload
through the transport alone and gets an empty message back; the socket floor
does it over plain sockets with a 4-byte length prefix. Ratios divide each
layer's figure by the raw floor's. Servers run in child processes (on threads
for in-process protocols such as mem), started and stopped by this command; by default this process runs on one CPU and the
servers on another (--pin; restrict the CPUs with taskset to choose them).

Examples:
  courier bench --quick                              # < 30 s, every built-in protocol
  courier bench --protocols tcp,unix --sizes 0,4K,1M --in-flight 1,8,64
  courier bench --progress-spin-us 0,50 --json bench.json --svg bench.svg
  courier bench --protocols tcp,unix --sizes 64 --in-flight 32 --clients 1,8
  courier bench --protocols shm --set tcp,shm --layers engine --sizes 0,64   # a set beside shm alone
  courier bench --mode bulk --quick                  # bulk pull and push MiB/s
  courier bench --mode stream --protocols tcp,shm    # streamed items/s and MiB/s
  courier bench --mode stream --window 16M --sizes 1M
  courier bench --mode sweep --protocols tcp         # unary calls 64 B..1 GiB";

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const BENCH_LONG_ABOUT: &str =
    "Measure the same RPC workload over every protocol (or --protocols), by \
    payload size and calls in flight, next to the raw floor of the same transport \
    (and plain sockets for tcp and unix), with each server in a child process. \
    Prints one table: p50 / p99 / p99.9 latency in µs, RPCs/s, MiB/s, and the \
    ratios to the raw floor; optionally JSON (--json) and SVG charts (--svg).";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size(" 1G ").unwrap(), 1 << 30);
        assert_eq!(parse_size("12B").unwrap(), 12);
        assert!(parse_size("4X").unwrap_err().to_string().contains("suffix"));
        assert!(parse_size("K").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("2G").unwrap_err().to_string().contains("1 GiB"));
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn sizes_print_as_the_table_shows_them() {
        assert_eq!(size_label(0), "0 B");
        assert_eq!(size_label(64), "64 B");
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(1536), "1.5 KiB");
        assert_eq!(size_label(16 << 20), "16 MiB");
        assert_eq!(policy_label(0), "park");
        assert_eq!(policy_label(50), "spin 50µs");
    }

    fn args(protocols: &[&str], sets: &[&str], quick: bool) -> BenchArgs {
        BenchArgs {
            mode: BenchMode::Rpc,
            window: None,
            protocols: protocols.iter().map(|p| (*p).to_owned()).collect(),
            sets: sets.iter().map(|p| (*p).to_owned()).collect(),
            sizes: Vec::new(),
            in_flight: Vec::new(),
            clients: Vec::new(),
            runs: None,
            quick,
            progress_spin_us: vec![0, 50, 0],
            layers: Vec::new(),
            calls: None,
            time_cap_ms: None,
            pin: Some(Pin::None),
            json: None,
            svg: None,
        }
    }

    fn plan(quick: bool) -> Plan {
        let args = args(&["ofi+tcp", "tcp", "uds"], &[], quick);
        Plan::new(&args, &courier::default_registry().unwrap()).unwrap()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_set_is_a_row_of_engine_layers_and_the_main_job_has_one() {
        let registry = courier::default_registry().unwrap();
        let p = Plan::new(&args(&["shm"], &["ofi+tcp, na+sm"], true), &registry).unwrap();
        let names: Vec<(&str, bool)> = p
            .protocols
            .iter()
            .map(|p| (p.name.as_str(), p.set))
            .collect();
        assert_eq!(names, [("shm", false), ("tcp,shm", true)]);
        let set = &p.protocols[1];
        assert_eq!(set.plugin, "tcp,shm");
        assert!(!set.in_process);
        assert_eq!(p.layers_for(set), [Layer::Engine]);
        // Without --protocols and --set: every protocol, and tcp,shm.
        let p = Plan::new(&args(&[], &[], true), &registry).unwrap();
        let sets: Vec<&str> = p
            .protocols
            .iter()
            .filter(|p| p.set)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(sets, ["tcp,shm"]);
        // With --protocols only: no set.
        let p = Plan::new(&args(&["tcp"], &[], true), &registry).unwrap();
        assert!(p.protocols.iter().all(|p| !p.set));
    }

    #[test]
    fn plan_resolves_aliases_and_applies_quick() {
        let p = plan(true);
        let names: Vec<&str> = p.protocols.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["tcp", "unix"]);
        assert_eq!(p.sizes, QUICK_SIZES);
        assert_eq!(p.in_flight, [1, 32]);
        assert_eq!(p.policies, [0, 50]);
        assert_eq!(p.runs, 1);
        assert_eq!(p.measurements(), 2 * 4 * 2 * 3 * 2);
        let p = plan(false);
        assert_eq!(p.sizes, DEFAULT_SIZES);
        assert_eq!(p.runs, 3);
        assert_eq!(p.clients, [1]);
    }

    #[test]
    fn many_clients_count_as_measurements_except_in_process() {
        let mut p = plan(true);
        p.clients = vec![1, 8];
        let tcp = p.protocols[0].clone();
        assert_eq!(p.clients_for(&tcp), [1, 8]);
        let mem = Proto {
            name: "mem".into(),
            plugin: "mem".into(),
            socket: None,
            in_process: true,
            set: false,
        };
        assert_eq!(p.clients_for(&mem), [1]);
        assert_eq!(p.measurements(), 2 * 4 * 2 * 3 * 2 * 2);
        p.protocols.push(mem);
        assert_eq!(p.measurements(), 2 * 4 * 2 * 3 * 2 * 2 + 4 * 2 * 2 * 2);
    }

    #[test]
    fn call_counts_shrink_with_size_within_bounds() {
        let p = plan(false);
        assert_eq!(p.calls(0, 1), MAX_CALLS);
        assert_eq!(p.calls(64 << 10, 1), 4096);
        assert_eq!(p.calls(16 << 20, 1), 16);
        assert_eq!(p.calls(16 << 20, 32), 64);
        assert_eq!(p.calls(1 << 30, 1), MIN_CALLS);
        assert_eq!(p.warmup(10_000, 32), 1000);
        assert_eq!(p.warmup(16, 32), 16);
        assert_eq!(p.warmup(64, 32), 32);
    }
}
