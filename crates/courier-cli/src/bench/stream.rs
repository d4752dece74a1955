//! `courier bench --mode stream`: streamed items/s and MiB/s per protocol
//! and item size, server-streaming and client-streaming, beside the
//! transport's one-way raw floor and the unary RPCs/s of the same
//! protocol in the same run.
//!
//! The engine peer (a child process, or a thread for `mem`) serves two
//! stream RPCs besides `bench.sink`:
//!
//! * `bench.stream_out` (server-streaming): its arguments are an item
//!   count and size (two u64, little-endian); the handler sends that many
//!   raw items of that size (`Handle::send_item_raw`) as fast as credit
//!   allows, then responds with an empty payload;
//! * `bench.stream_in` (client-streaming): the handler reads the caller's
//!   items (`Handle::recv_item_raw`) until the caller closes its stream,
//!   then responds with the count and bytes it read (two u64).
//!
//! This process opens the stream (`RawCallable::stream`), reads or sends
//! the items, and takes the handler's answer (`finish`); the time runs
//! from before the opening to the answer, so it covers delivery.
//!
//! The raw peer runs the transport alone with a one-way protocol per
//! connection: an order (a direction byte, a count and a size) is
//! followed by `count` messages of `size` bytes sent back to back, from
//! the peer (`out`) or to it (`in`, then the peer answers with the count
//! and bytes it received). The time runs from before the order to the
//! last message (`out`) or the answer (`in`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier::transport::{
    Address as WireAddr, DynConnection, DynReceiver, DynSender, DynTransport, PluginOptions,
    Registry,
};
use courier::{Bytes, Engine, Handle, RawCallable, RpcOptions};
use serde::Serialize;
use serde_json::json;

use super::measure::{self, EngineSink, Spec, Spinner};
use super::peer::{stop_peers, Peer, PeerArgs};
use super::{
    format_rate, policy_label, size_label, Align, BenchArgs, Layer, Plan, Proto, Spread, Table,
    SINK_RPC, THROUGHPUT_FROM,
};
use crate::{out, CliResult, Context, Error};

/// The server-streaming RPC of the engine peer.
pub(crate) const OUT_RPC: &str = "bench.stream_out";
/// The client-streaming RPC of the engine peer.
pub(crate) const IN_RPC: &str = "bench.stream_in";

/// The JSON's `schema`.
const SCHEMA: &str = "courier-bench-stream/1";

const DEFAULT_SIZES: [usize; 6] = [64, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];
const QUICK_SIZES: [usize; 2] = [64, 1 << 20];
/// Item bytes one measurement aims to move (then bounded by the counts).
const BYTES_PER_MEASUREMENT: u64 = 256 << 20;
const QUICK_BYTES_PER_MEASUREMENT: u64 = 32 << 20;
/// Most items of one measurement (small items).
const MAX_ITEMS: u64 = 200_000;
const QUICK_MAX_ITEMS: u64 = 20_000;
/// Fewest items of one measurement (large items).
const MIN_ITEMS: u64 = 8;
/// Calls in flight of the unary comparison.
pub(crate) const UNARY_IN_FLIGHT: u32 = 32;
/// A hang guard around one measurement.
const GUARD: Duration = Duration::from_secs(120);
/// The largest item a peer agrees to send (as `--sizes` allows).
const LARGEST_ITEM: u64 = 1 << 30;

/// An item count and size: the arguments of `bench.stream_out`, the body
/// of a raw order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Order {
    count: u64,
    size: u64,
}

impl Order {
    const LEN: usize = 16;

    fn encode(self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let count = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        let size = u64::from_le_bytes(b.get(8..)?.try_into().ok()?);
        Some(Self { count, size })
    }

    /// The size as a buffer length, if the peer agrees to send it.
    fn item_len(self) -> Option<usize> {
        (self.size <= LARGEST_ITEM)
            .then(|| usize::try_from(self.size).ok())
            .flatten()
    }
}

/// Which way the items go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    /// Server-streaming: the handler sends, the caller reads.
    Server,
    /// Client-streaming: the caller sends, the handler reads.
    Client,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }

    /// The direction byte of a raw order: 0, from the raw peer; 1, to it.
    fn byte(self) -> u8 {
        match self {
            Self::Server => 0,
            Self::Client => 1,
        }
    }
}

/// Registers `bench.stream_out` and `bench.stream_in` on the engine peer.
pub(crate) fn register(engine: &Engine) -> courier::Result<()> {
    engine.register_raw(
        OUT_RPC,
        RpcOptions::default(),
        |h: Handle, payload: Bytes| async move {
            let order = Order::decode(&payload).ok_or_else(|| courier::Error::Decode {
                rpc: OUT_RPC.to_owned(),
                what: "arguments",
                reason: format!(
                    "expected {} bytes (item count and size, u64 little-endian), got {}",
                    Order::LEN,
                    payload.len()
                ),
            })?;
            let len = order.item_len().ok_or_else(|| courier::Error::Decode {
                rpc: OUT_RPC.to_owned(),
                what: "arguments",
                reason: format!("items of {} bytes are over 1 GiB", order.size),
            })?;
            let item = vec![0x5au8; len];
            for _ in 0..order.count {
                h.send_item_raw(&item).await?;
            }
            h.respond_raw(&[]).await
        },
    )?;
    engine.register_raw(
        IN_RPC,
        RpcOptions::default(),
        |h: Handle, _payload: Bytes| async move {
            let (mut items, mut bytes) = (0u64, 0u64);
            while let Some(item) = h.recv_item_raw().await? {
                items += 1;
                bytes += item.len() as u64;
            }
            let answer = Order {
                count: items,
                size: bytes,
            };
            h.respond_raw(&answer.encode()).await
        },
    )
}

/// The raw peer's side of the one-way floor, on one connection: orders,
/// each followed by its messages.
pub(crate) async fn serve_oneway(conn: Box<dyn DynConnection>, polling: bool) {
    let (mut tx, mut rx) = conn.split_dyn();
    let _spin = Spinner::start(polling);
    if let Err(e) = oneway_orders(&mut *tx, &mut *rx).await {
        tracing::debug!("raw one-way peer: {e}");
    }
}

async fn oneway_orders(tx: &mut dyn DynSender, rx: &mut dyn DynReceiver) -> CliResult {
    loop {
        let Some(message) = rx.recv_dyn().await? else {
            return Ok(());
        };
        let order = message
            .split_first()
            .and_then(|(dir, rest)| Some((*dir, Order::decode(rest)?)));
        let Some((dir, order)) = order else {
            return Err(Error::Peer(format!(
                "a malformed order of {} bytes",
                message.len()
            )));
        };
        if dir == Direction::Server.byte() {
            let len = order.item_len().ok_or_else(|| {
                Error::Argument(format!("items of {} bytes are over 1 GiB", order.size))
            })?;
            let item = vec![0x5au8; len];
            for _ in 0..order.count {
                tx.send_dyn(&[&item]).await?;
            }
        } else {
            let mut got = Order { count: 0, size: 0 };
            while got.count < order.count {
                let Some(m) = rx.recv_dyn().await? else {
                    return Err(Error::Peer(format!(
                        "the connection closed after {} of {} messages",
                        got.count, order.count
                    )));
                };
                got.count += 1;
                got.size += m.len() as u64;
            }
            tx.send_dyn(&[&got.encode()]).await?;
        }
    }
}

/// This process's side of the one-way floor: a connection to the raw
/// peer, for one measurement (its warm-up and its measured run). Not one
/// for all: while a connection is open, a raw peer under a spin policy
/// keeps its CPU busy, which is the engine peer's CPU too.
struct OneWay {
    tx: Box<dyn DynSender>,
    rx: Box<dyn DynReceiver>,
}

impl OneWay {
    async fn connect(transport: &dyn DynTransport, addr: &WireAddr) -> CliResult<Self> {
        let conn = transport
            .connect_dyn(addr)
            .await
            .context(|| format!("connect to the raw peer at {addr}"))?;
        let (tx, rx) = conn.split_dyn();
        Ok(Self { tx, rx })
    }

    /// Moves `count` messages of `payload` one way; the time from the
    /// order to the last message (or the peer's count of them).
    async fn run(&mut self, dir: Direction, payload: &Bytes, count: u64) -> CliResult<Duration> {
        let size = payload.len();
        let order = Order {
            count,
            size: size as u64,
        };
        let start = Instant::now();
        self.tx.send_dyn(&[&[dir.byte()], &order.encode()]).await?;
        match dir {
            Direction::Server => {
                for i in 0..count {
                    match self.rx.recv_dyn().await? {
                        Some(m) if m.len() == size => {}
                        Some(m) => {
                            return Err(Error::Peer(format!(
                                "the raw peer sent a message of {} bytes, not {size}",
                                m.len()
                            )))
                        }
                        None => {
                            return Err(Error::Peer(format!(
                                "the raw peer closed the connection after {i} of {count} messages"
                            )))
                        }
                    }
                }
            }
            Direction::Client => {
                for _ in 0..count {
                    self.tx.send_dyn(&[payload]).await?;
                }
                let answer = self.rx.recv_dyn().await?.ok_or_else(|| {
                    Error::Peer("the raw peer closed the connection before its count".into())
                })?;
                let expected = Order {
                    count,
                    size: count * size as u64,
                };
                if Order::decode(&answer) != Some(expected) {
                    return Err(Error::Peer(format!(
                        "the raw peer counted {:?}, not {expected:?}",
                        Order::decode(&answer)
                    )));
                }
            }
        }
        Ok(start.elapsed())
    }

    async fn close(mut self) {
        let _ = self.tx.close_dyn().await;
    }
}

/// A server-streaming call of `count` items of `size` bytes: the time
/// from the opening to the handler's answer.
async fn stream_from_server(
    callable: &RawCallable,
    size: usize,
    count: u64,
) -> CliResult<Duration> {
    let order = Order {
        count,
        size: size as u64,
    };
    let start = Instant::now();
    let mut call = callable.stream(&order.encode()).await.context(|| OUT_RPC)?;
    // No request items: the request stream ends at once.
    call.close().await.context(|| OUT_RPC)?;
    let mut got = 0u64;
    while let Some(item) = call.recv().await.context(|| OUT_RPC)? {
        if item.len() != size {
            return Err(Error::Peer(format!(
                "{OUT_RPC} sent an item of {} bytes, not {size}",
                item.len()
            )));
        }
        got += 1;
    }
    let answer = call.finish().await.context(|| OUT_RPC)?;
    let took = start.elapsed();
    if got != count || !answer.is_empty() {
        return Err(Error::Peer(format!(
            "{OUT_RPC} sent {got} items of {count} and answered {} bytes (expected none)",
            answer.len()
        )));
    }
    Ok(took)
}

/// A client-streaming call of `count` items of `payload`: the time from
/// the opening to the handler's answer (its count of the items).
async fn stream_to_server(
    callable: &RawCallable,
    payload: &Bytes,
    count: u64,
) -> CliResult<Duration> {
    let start = Instant::now();
    let mut call = callable.stream(&[]).await.context(|| IN_RPC)?;
    for _ in 0..count {
        call.send(payload).await.context(|| IN_RPC)?;
    }
    let answer = call.finish().await.context(|| IN_RPC)?;
    let took = start.elapsed();
    let expected = Order {
        count,
        size: count * payload.len() as u64,
    };
    if Order::decode(&answer) != Some(expected) {
        return Err(Error::Peer(format!(
            "{IN_RPC} counted {:?}, not {expected:?}",
            Order::decode(&answer)
        )));
    }
    Ok(took)
}

/// Runs `work` under the hang guard.
async fn guarded<T>(
    what: &str,
    work: impl std::future::Future<Output = CliResult<T>>,
) -> CliResult<T> {
    match tokio::time::timeout(GUARD, work).await {
        Ok(r) => r.map_err(|e| e.context(what.to_owned())),
        Err(_) => Err(Error::Peer(format!(
            "{what}: no end after {} s",
            GUARD.as_secs()
        ))),
    }
}

/// What `--mode stream` does, beyond the [`Plan`].
#[derive(Debug, Clone)]
struct Setup {
    sizes: Vec<usize>,
    /// Item bytes per measurement.
    budget: u64,
    max_items: u64,
    /// `streams.window_bytes` of both engines (None: the engine's default).
    window: Option<u64>,
    /// The polling window, µs.
    spin: u64,
}

impl Setup {
    fn new(args: &BenchArgs, plan: &Plan) -> Self {
        let sizes = if args.sizes.is_empty() {
            if plan.quick {
                QUICK_SIZES.to_vec()
            } else {
                DEFAULT_SIZES.to_vec()
            }
        } else {
            plan.sizes.iter().copied().filter(|&s| s > 0).collect()
        };
        Self {
            sizes,
            budget: if plan.quick {
                QUICK_BYTES_PER_MEASUREMENT
            } else {
                BYTES_PER_MEASUREMENT
            },
            max_items: if plan.quick {
                QUICK_MAX_ITEMS
            } else {
                MAX_ITEMS
            },
            window: args.window.map(|w| w as u64),
            spin: plan
                .policies
                .first()
                .copied()
                .unwrap_or(courier::DEFAULT_PROGRESS_SPIN_US),
        }
    }

    /// Items of one measurement: the budget over the size, within bounds.
    fn items(&self, size: usize) -> u64 {
        (self.budget / size.max(1) as u64).clamp(MIN_ITEMS, self.max_items.max(MIN_ITEMS))
    }

    /// Items of the warm-up before a measurement.
    fn warmup(items: u64) -> u64 {
        (items / 10).max(2)
    }

    /// The engines' JSON configuration: the window, if one is set.
    fn engine_config(&self) -> Option<serde_json::Value> {
        self.window
            .map(|w| json!({ "streams": { "window_bytes": w } }))
    }
}

/// One run of one (protocol, size, direction).
#[derive(Debug, Clone)]
struct Sample {
    proto_index: usize,
    size: usize,
    dir: Direction,
    items: u64,
    stream: Duration,
    raw: Duration,
    /// The unary RPCs/s at [`UNARY_IN_FLIGHT`] of the same size, this run
    /// (sizes below 64 KiB).
    unary: Option<f64>,
}

#[allow(clippy::cast_precision_loss)]
fn per_s(items: u64, took: Duration) -> f64 {
    items as f64 / took.as_secs_f64().max(1e-9)
}

#[allow(clippy::cast_precision_loss)]
fn mib(items_per_s: f64, size: usize) -> f64 {
    items_per_s * size as f64 / f64::from(1u32 << 20)
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// One run's figures, as the JSON's `per_run` holds them.
#[derive(Debug, Clone, Serialize)]
struct RunFigures {
    items_per_s: f64,
    elapsed_s: f64,
    raw_items_per_s: f64,
    raw_elapsed_s: f64,
    unary_rpcs_per_s: Option<f64>,
}

/// One row of the table, one element of the JSON's `results`.
#[derive(Debug, Clone, Serialize)]
struct Record {
    protocol: String,
    plugin: String,
    direction: Direction,
    item_bytes: usize,
    items: u64,
    runs: usize,
    items_per_s: f64,
    items_per_s_min: f64,
    items_per_s_max: f64,
    mib_per_s: f64,
    mib_per_s_min: f64,
    mib_per_s_max: f64,
    raw_items_per_s: f64,
    raw_mib_per_s: f64,
    raw_mib_per_s_min: f64,
    raw_mib_per_s_max: f64,
    vs_raw: Option<f64>,
    unary_in_flight: Option<u32>,
    unary_rpcs_per_s: Option<f64>,
    unary_rpcs_per_s_min: Option<f64>,
    unary_rpcs_per_s_max: Option<f64>,
    vs_unary: Option<f64>,
    per_run: Vec<RunFigures>,
}

/// The fields of every record, in order (the documented schema; a test
/// checks the JSON against it).
#[cfg(test)]
const RECORD_FIELDS: [&str; 23] = [
    "protocol",
    "plugin",
    "direction",
    "item_bytes",
    "items",
    "runs",
    "items_per_s",
    "items_per_s_min",
    "items_per_s_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "raw_items_per_s",
    "raw_mib_per_s",
    "raw_mib_per_s_min",
    "raw_mib_per_s_max",
    "vs_raw",
    "unary_in_flight",
    "unary_rpcs_per_s",
    "unary_rpcs_per_s_min",
    "unary_rpcs_per_s_max",
    "vs_unary",
    "per_run",
];

/// Groups the runs by (protocol, size, direction): medians and spreads.
fn aggregate(protocols: &[Proto], samples: &[Sample]) -> Vec<Record> {
    let mut groups: BTreeMap<(usize, usize, Direction), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.proto_index, s.size, s.dir))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .filter_map(|((pi, size, dir), runs)| {
            let proto = protocols.get(pi)?;
            let first = runs.first()?;
            let items = Spread::of(runs.iter().map(|s| per_s(s.items, s.stream)));
            let raw = Spread::of(runs.iter().map(|s| per_s(s.items, s.raw)));
            let unaries: Vec<f64> = runs.iter().filter_map(|s| s.unary).collect();
            let unary = (!unaries.is_empty()).then(|| Spread::of(unaries));
            Some(Record {
                protocol: proto.name.clone(),
                plugin: proto.plugin.clone(),
                direction: dir,
                item_bytes: size,
                items: first.items,
                runs: runs.len(),
                items_per_s: items.median,
                items_per_s_min: items.min,
                items_per_s_max: items.max,
                mib_per_s: mib(items.median, size),
                mib_per_s_min: mib(items.min, size),
                mib_per_s_max: mib(items.max, size),
                raw_items_per_s: raw.median,
                raw_mib_per_s: mib(raw.median, size),
                raw_mib_per_s_min: mib(raw.min, size),
                raw_mib_per_s_max: mib(raw.max, size),
                vs_raw: ratio(items.median, raw.median),
                unary_in_flight: unary.map(|_| UNARY_IN_FLIGHT),
                unary_rpcs_per_s: unary.map(|u| u.median),
                unary_rpcs_per_s_min: unary.map(|u| u.min),
                unary_rpcs_per_s_max: unary.map(|u| u.max),
                vs_unary: unary.and_then(|u| ratio(items.median, u.median)),
                per_run: runs
                    .iter()
                    .map(|s| RunFigures {
                        items_per_s: per_s(s.items, s.stream),
                        elapsed_s: s.stream.as_secs_f64(),
                        raw_items_per_s: per_s(s.items, s.raw),
                        raw_elapsed_s: s.raw.as_secs_f64(),
                        unary_rpcs_per_s: s.unary,
                    })
                    .collect(),
            })
        })
        .collect()
}

pub(crate) async fn run(
    args: &BenchArgs,
    plan: &Plan,
    registry: &Registry,
    verbose: u8,
) -> CliResult {
    let setup = Setup::new(args, plan);
    out(format_args!(
        "courier bench --mode stream: {} protocol(s), items of {}, window {}, {} ({})",
        plan.protocols.len(),
        setup
            .sizes
            .iter()
            .map(|&s| size_label(s))
            .collect::<Vec<_>>()
            .join(", "),
        setup.window.map_or_else(
            || "4 MiB (default)".to_owned(),
            |w| size_label(usize::try_from(w).unwrap_or(usize::MAX))
        ),
        policy_label(setup.spin),
        super::runs_label(plan.runs)
    ))?;
    let started = Instant::now();
    let all = async {
        let mut samples = Vec::new();
        let mut errors = Vec::new();
        for (pi, proto) in plan.protocols.iter().enumerate() {
            let target = Target {
                plan,
                setup: &setup,
                registry,
                proto,
                proto_index: pi,
                verbose,
            };
            if let Err(e) = target.measure(&mut samples).await {
                errors.push(e.context(format!("stream bench over {} failed", proto.name)));
            }
        }
        (samples, errors)
    };
    // On Ctrl-C or SIGTERM, dropping `all` drops the peers' handles, which
    // kills them.
    let (samples, errors) = tokio::select! {
        r = all => r,
        () = crate::serve::stop_signal() => return Err(Error::Interrupted("bench")),
    };
    let elapsed = started.elapsed();
    let records = aggregate(&plan.protocols, &samples);
    print(plan, &setup, &records, elapsed)?;
    if let Some(path) = &args.json {
        write_json(path, plan, &setup, &records, &errors, elapsed)?;
        out(format_args!("results written to {}", path.display()))?;
    }
    crate::fail_with_last(errors)
}

/// One protocol's measurements.
#[derive(Clone, Copy)]
struct Target<'a> {
    plan: &'a Plan,
    setup: &'a Setup,
    registry: &'a Registry,
    proto: &'a Proto,
    proto_index: usize,
    verbose: u8,
}

impl Target<'_> {
    async fn measure(self, samples: &mut Vec<Sample>) -> CliResult {
        let spawn = |layer| {
            let args = PeerArgs {
                layer,
                protocol: self.proto.name.clone(),
                progress_spin_us: self.setup.spin,
                max_message_size: self.plan.max_message_size,
                cpu: self.plan.peer_cpu,
                stream_window: self.setup.window,
                oneway: layer == Layer::Raw,
            };
            Peer::start(args, self.verbose, self.proto.in_process)
        };
        let engine_peer = spawn(Layer::Engine).await?;
        let raw_peer = match spawn(Layer::Raw).await {
            Ok(p) => p,
            Err(e) => {
                engine_peer.kill().await;
                return Err(e);
            }
        };
        let result = self.measure_with(&engine_peer, &raw_peer, samples).await;
        stop_peers(result, [engine_peer, raw_peer]).await
    }

    async fn measure_with(
        self,
        engine_peer: &Peer,
        raw_peer: &Peer,
        samples: &mut Vec<Sample>,
    ) -> CliResult {
        let Self {
            plan, setup, proto, ..
        } = self;
        let mut builder = Engine::builder(&proto.name)
            .client()
            .progress_spin(Duration::from_micros(setup.spin))
            .max_message_size(plan.max_message_size);
        if let Some(config) = setup.engine_config() {
            builder = builder.config_value(config);
        }
        let client = builder.build().await.context(|| "client engine")?;
        let result = async {
            let address = client
                .lookup(engine_peer.address())
                .await
                .context(|| "lookup of the engine peer")?;
            let (_, transport) =
                self.registry
                    .create(&proto.name, &PluginOptions::new(), plan.max_message_size)?;
            let raw_addr: WireAddr = raw_peer
                .address()
                .parse()
                .context(|| "the raw peer's address")?;
            let endpoints = Endpoints {
                out: client.remote_raw(OUT_RPC).on(&address),
                into: client.remote_raw(IN_RPC).on(&address),
                sink: EngineSink::new(&client, &address, SINK_RPC),
                transport,
                raw_addr,
            };
            self.measure_runs(&endpoints, samples).await
        }
        .await;
        client.finalize().await;
        result
    }

    async fn measure_runs(self, endpoints: &Endpoints, samples: &mut Vec<Sample>) -> CliResult {
        let Self { plan, setup, .. } = self;
        let largest = setup.sizes.iter().copied().max().unwrap_or(0);
        let buffer = Bytes::from(vec![0xa5u8; largest]);
        let polling = setup.spin > 0;
        for _ in 0..plan.runs {
            for &size in &setup.sizes {
                let payload = buffer.slice(..size);
                let items = setup.items(size);
                let warmup = Setup::warmup(items);
                let label = size_label(size);
                let unary = if size < THROUGHPUT_FROM {
                    let calls = plan.calls(size, UNARY_IN_FLIGHT);
                    let spec = Spec {
                        in_flight: UNARY_IN_FLIGHT as usize,
                        calls,
                        warmup: plan.warmup(calls, UNARY_IN_FLIGHT),
                        time_cap: plan.time_cap,
                    };
                    let what = format!("unary {label} × {UNARY_IN_FLIGHT} in flight");
                    let f =
                        guarded(&what, measure::measure(&endpoints.sink, &payload, &spec)).await?;
                    Some(f.rpcs_per_s)
                } else {
                    None
                };
                let items_of = &payload;
                for dir in [Direction::Server, Direction::Client] {
                    let what = format!("{}-streaming, {items} items of {label}", dir.name());
                    let engine = |n| async move {
                        match dir {
                            Direction::Server => stream_from_server(&endpoints.out, size, n).await,
                            Direction::Client => {
                                stream_to_server(&endpoints.into, items_of, n).await
                            }
                        }
                    };
                    guarded(&what, engine(warmup)).await?;
                    let stream = guarded(&what, engine(items)).await?;
                    let raw_what = format!("raw one-way floor, {} {items} × {label}", dir.name());
                    let raw = guarded(&raw_what, async {
                        let mut oneway =
                            OneWay::connect(&*endpoints.transport, &endpoints.raw_addr).await?;
                        let _spin = Spinner::start(polling);
                        let measured = async {
                            oneway.run(dir, &payload, warmup).await?;
                            oneway.run(dir, &payload, items).await
                        }
                        .await;
                        oneway.close().await;
                        measured
                    })
                    .await?;
                    samples.push(Sample {
                        proto_index: self.proto_index,
                        size,
                        dir,
                        items,
                        stream,
                        raw,
                        unary,
                    });
                }
            }
        }
        Ok(())
    }
}

/// The client's callables on the engine peer, and the raw peer.
struct Endpoints {
    out: RawCallable,
    into: RawCallable,
    sink: EngineSink,
    transport: std::sync::Arc<dyn DynTransport>,
    raw_addr: WireAddr,
}

fn table(records: &[Record]) -> Table {
    let header = [
        "protocol",
        "stream",
        "size",
        "items",
        "items/s",
        "MiB/s",
        "raw items/s",
        "raw MiB/s",
        "÷ raw",
        "unary RPCs/s ×32",
        "÷ unary",
    ];
    let mut t = Table::new(&header).align(2..header.len(), Align::Right);
    for r in records {
        let n = r.runs;
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
        let spread = |median, min, max| Spread { median, min, max }.cell(n, format_rate);
        let big = r.item_bytes >= THROUGHPUT_FROM;
        t.row(vec![
            r.protocol.clone(),
            r.direction.name().to_owned(),
            size_label(r.item_bytes),
            r.items.to_string(),
            spread(r.items_per_s, r.items_per_s_min, r.items_per_s_max),
            if big {
                spread(r.mib_per_s, r.mib_per_s_min, r.mib_per_s_max)
            } else {
                "-".to_owned()
            },
            format_rate(r.raw_items_per_s),
            if big {
                spread(r.raw_mib_per_s, r.raw_mib_per_s_min, r.raw_mib_per_s_max)
            } else {
                "-".to_owned()
            },
            opt(r.vs_raw),
            match (
                r.unary_rpcs_per_s,
                r.unary_rpcs_per_s_min,
                r.unary_rpcs_per_s_max,
            ) {
                (Some(m), Some(lo), Some(hi)) => spread(m, lo, hi),
                _ => "-".to_owned(),
            },
            opt(r.vs_unary),
        ]);
    }
    t
}

fn print(plan: &Plan, setup: &Setup, records: &[Record], elapsed: Duration) -> CliResult {
    let placement = match (plan.client_cpu, plan.peer_cpu) {
        (Some(c), Some(p)) if c == p => format!("client and servers on CPU {c}"),
        (Some(c), Some(p)) => format!("client on CPU {c}, servers on CPU {p}"),
        _ => "left to the scheduler".to_owned(),
    };
    out(format_args!(
        "placement: {placement} (--pin {}); up to {} items or {} per measurement",
        plan.pin.name(),
        setup.max_items,
        size_label(usize::try_from(setup.budget).unwrap_or(usize::MAX))
    ))?;
    out(format_args!("machine: {}", plan.machine))?;
    out("")?;
    table(records).print()?;
    out("")?;
    out(format_args!(
        "stream server: {OUT_RPC} sends the items, this process reads them; client: this process \
         sends, {IN_RPC} reads them; timed from the opening to the handler's answer. raw: the \
         same transport alone, the same messages one way back to back (from the peer / to it, \
         then its count). ÷ raw: items/s over the raw floor's. unary: RPCs/s of {SINK_RPC} with \
         the same payload, {UNARY_IN_FLIGHT} in flight, same engines, same run (sizes below \
         64 KiB); ÷ unary: items/s over it. MiB/s from 64 KiB on."
    ))?;
    out(format_args!(
        "{} measurements in {:.1} s",
        records.iter().map(|r| r.runs).sum::<usize>(),
        elapsed.as_secs_f64()
    ))
}

fn write_json(
    path: &std::path::Path,
    plan: &Plan,
    setup: &Setup,
    records: &[Record],
    errors: &[Error],
    elapsed: Duration,
) -> CliResult {
    let doc = json!({
        "schema": SCHEMA,
        "machine": plan.machine,
        "config": {
            "command": std::env::args().collect::<Vec<_>>(),
            "protocols": plan.protocols.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "sizes": setup.sizes,
            "runs": plan.runs,
            "quick": plan.quick,
            "progress_spin_us": setup.spin,
            "window_bytes": setup.window,
            "bytes_per_measurement": setup.budget,
            "max_items": setup.max_items,
            "min_items": MIN_ITEMS,
            "unary_in_flight": UNARY_IN_FLIGHT,
            "unary_max_calls": plan.max_calls,
            "time_cap_ms": u64::try_from(plan.time_cap.as_millis()).unwrap_or(u64::MAX),
            "max_message_size": plan.max_message_size,
            "pin": plan.pin,
            "client_cpu": plan.client_cpu,
            "peer_cpu": plan.peer_cpu,
            "courier_version": env!("CARGO_PKG_VERSION"),
        },
        "elapsed_s": elapsed.as_secs_f64(),
        "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "results": records,
    });
    let mut text = serde_json::to_string_pretty(&doc).map_err(|source| Error::Json {
        what: "the stream results",
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn orders_round_trip_and_refuse_bad_lengths() {
        let o = Order {
            count: 7,
            size: 1 << 20,
        };
        assert_eq!(Order::decode(&o.encode()), Some(o));
        assert_eq!(Order::decode(&[0; 15]), None);
        assert_eq!(Order::decode(&[0; 17]), None);
        assert_eq!(o.item_len(), Some(1 << 20));
        let huge = Order {
            count: 1,
            size: u64::MAX,
        };
        assert_eq!(huge.item_len(), None);
    }

    #[test]
    fn records_have_the_documented_fields() {
        let proto = Proto {
            name: "tcp".into(),
            plugin: "tcp".into(),
            socket: None,
            in_process: false,
            set: false,
        };
        let samples: Vec<Sample> = [(64, Some(1000.0)), (1 << 20, None)]
            .into_iter()
            .flat_map(|(size, unary)| {
                [Direction::Server, Direction::Client].map(|dir| Sample {
                    proto_index: 0,
                    size,
                    dir,
                    items: 100,
                    stream: Duration::from_millis(10),
                    raw: Duration::from_millis(5),
                    unary,
                })
            })
            .collect();
        let records = aggregate(&[proto], &samples);
        assert_eq!(records.len(), 4);
        let small = &records[0];
        assert_eq!(small.direction, Direction::Server);
        assert!((small.items_per_s - 10_000.0).abs() < 1e-6);
        assert_eq!(small.vs_raw, Some(0.5));
        assert_eq!(small.vs_unary, Some(10.0));
        let big = &records[3];
        assert_eq!(big.direction, Direction::Client);
        assert!((big.mib_per_s - 10_000.0).abs() < 1e-6);
        assert_eq!(big.unary_rpcs_per_s, None);
        for r in &records {
            let v = serde_json::to_value(r).unwrap();
            let obj = v.as_object().unwrap();
            for k in RECORD_FIELDS {
                assert!(obj.contains_key(k), "{k}");
            }
            assert_eq!(obj.len(), RECORD_FIELDS.len(), "{obj:?}");
        }
    }

    #[test]
    fn item_counts_follow_the_budget_within_bounds() {
        let setup = Setup {
            sizes: DEFAULT_SIZES.to_vec(),
            budget: BYTES_PER_MEASUREMENT,
            max_items: MAX_ITEMS,
            window: None,
            spin: 0,
        };
        assert_eq!(setup.items(64), MAX_ITEMS);
        assert_eq!(setup.items(1 << 20), 256);
        assert_eq!(setup.items(16 << 20), 16);
        assert_eq!(setup.items(1 << 30), MIN_ITEMS);
        assert_eq!(Setup::warmup(256), 25);
        assert_eq!(Setup::warmup(8), 2);
        assert!(setup.engine_config().is_none());
    }
}
