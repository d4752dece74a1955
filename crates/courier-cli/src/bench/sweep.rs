//! `courier bench --mode sweep`: unary calls by payload size, from 64 B to
//! 1 GiB, one call in flight, per protocol, beside the raw floor of the
//! same transport (the same payload as one message, answered by an empty
//! one).
//!
//! The engine layer is the RPC mode's (`bench.sink`: the payload in, an
//! empty response out) and so is the raw floor (`measure::raw`); only the
//! sizes, the call counts and the largest message differ. Large payloads
//! make few calls (two from 256 MiB on), so the memory stays a few times
//! the largest payload: the client's buffer, and what each peer receives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier::transport::{Address as WireAddr, PluginOptions, Registry};
use courier::{Bytes, Engine};
use serde::Serialize;
use serde_json::json;

use super::measure::{self, EngineSink, Figures, Spec};
use super::peer::{stop_peers, Peer, PeerArgs};
use super::{
    format_rate, format_us, policy_label, size_label, Align, BenchArgs, Layer, Plan, Proto,
    Summary, Table, SINK_RPC,
};
use crate::{out, CliResult, Context, Error};

/// The JSON's `schema`.
const SCHEMA: &str = "courier-bench-sweep/1";

const DEFAULT_SIZES: [usize; 8] = [
    64,
    4 << 10,
    64 << 10,
    1 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    1 << 30,
];
const QUICK_SIZES: [usize; 4] = [64, 64 << 10, 1 << 20, 16 << 20];
/// Payload bytes one measurement aims to move.
const BYTES_PER_SIZE: u64 = 256 << 20;
const QUICK_BYTES_PER_SIZE: u64 = 32 << 20;
/// Most calls of one measurement (small payloads).
const MAX_CALLS: u64 = 2_000;
const QUICK_MAX_CALLS: u64 = 200;
/// Fewest calls below [`BIG`].
const MIN_CALLS: u64 = 3;
/// From this size on, [`BIG_CALLS`] calls and one warm-up call.
const BIG: usize = 256 << 20;
const BIG_CALLS: u64 = 2;
/// A hang guard around one measurement, beyond twice its time cap.
const GUARD: Duration = Duration::from_secs(300);

/// Sizes, counts and largest messages of a sweep.
#[derive(Debug, Clone)]
struct Setup {
    sizes: Vec<usize>,
    budget: u64,
    max_calls: u64,
    /// The engines' largest message.
    engine_max_message: usize,
    /// The raw floor's largest message (the transport alone carries the
    /// whole payload as one message).
    transport_max_message: usize,
    spin: u64,
}

impl Setup {
    fn new(args: &BenchArgs, plan: &Plan) -> Self {
        let mut sizes = if args.sizes.is_empty() {
            if plan.quick {
                QUICK_SIZES.to_vec()
            } else {
                DEFAULT_SIZES.to_vec()
            }
        } else {
            plan.sizes.clone()
        };
        sizes.sort_unstable();
        sizes.dedup();
        let largest = sizes.last().copied().unwrap_or(0);
        let transport_max_message =
            courier::DEFAULT_MAX_MESSAGE_SIZE.max(largest + courier::frame::HEADER_LEN + 4096);
        // The engines keep their default largest message: a payload over
        // it travels by the bulk path on its own (`docs/bulk.md`,
        // "Payloads of any size"), which is what the sweep measures from
        // 64 MiB up. The raw floor's transport takes the largest size
        // in one message.
        let engine_max_message = courier::DEFAULT_MAX_MESSAGE_SIZE;
        Self {
            sizes,
            budget: if plan.quick {
                QUICK_BYTES_PER_SIZE
            } else {
                BYTES_PER_SIZE
            },
            max_calls: plan.max_calls.min(if plan.quick {
                QUICK_MAX_CALLS
            } else {
                MAX_CALLS
            }),
            engine_max_message,
            transport_max_message,
            spin: plan
                .policies
                .first()
                .copied()
                .unwrap_or(courier::DEFAULT_PROGRESS_SPIN_US),
        }
    }

    /// One call in flight: the calls and warm-up calls of a size.
    fn spec(&self, size: usize, time_cap: Duration) -> Spec {
        let calls = if size >= BIG {
            BIG_CALLS
        } else {
            (self.budget / size.max(1) as u64).clamp(MIN_CALLS, self.max_calls.max(MIN_CALLS))
        };
        Spec {
            in_flight: 1,
            calls,
            warmup: (calls / 10).max(1),
            time_cap,
        }
    }
}

/// One run of one (protocol, size).
#[derive(Debug, Clone)]
struct Sample {
    proto_index: usize,
    size: usize,
    engine: Figures,
    raw: Figures,
}

/// One row of the table, one element of the JSON's `results`.
#[derive(Debug, Clone, Serialize)]
struct Record {
    protocol: String,
    plugin: String,
    payload_bytes: usize,
    calls: u64,
    runs: usize,
    p50_us: f64,
    p50_us_min: f64,
    p50_us_max: f64,
    mib_per_s: f64,
    mib_per_s_min: f64,
    mib_per_s_max: f64,
    raw_p50_us: f64,
    raw_mib_per_s: f64,
    p50_vs_raw: Option<f64>,
    mib_per_s_vs_raw: Option<f64>,
    per_run: Vec<RunFigures>,
}

/// One run, as the JSON's `per_run` holds it.
#[derive(Debug, Clone, Serialize)]
struct RunFigures {
    p50_us: f64,
    mib_per_s: f64,
    calls: u64,
    elapsed_s: f64,
    raw_p50_us: f64,
    raw_mib_per_s: f64,
    raw_calls: u64,
}

/// The fields of every record, in order (the documented schema).
#[cfg(test)]
const RECORD_FIELDS: [&str; 16] = [
    "protocol",
    "plugin",
    "payload_bytes",
    "calls",
    "runs",
    "p50_us",
    "p50_us_min",
    "p50_us_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "raw_p50_us",
    "raw_mib_per_s",
    "p50_vs_raw",
    "mib_per_s_vs_raw",
    "per_run",
];

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

fn aggregate(protocols: &[Proto], samples: &[Sample]) -> Vec<Record> {
    let mut groups: BTreeMap<(usize, usize), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups.entry((s.proto_index, s.size)).or_default().push(s);
    }
    groups
        .into_iter()
        .filter_map(|((pi, size), runs)| {
            let proto = protocols.get(pi)?;
            let engine = Summary::of(runs.iter().map(|s| &s.engine));
            let raw = Summary::of(runs.iter().map(|s| &s.raw));
            Some(Record {
                protocol: proto.name.clone(),
                plugin: proto.plugin.clone(),
                payload_bytes: size,
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                calls: engine.calls.median.round() as u64,
                runs: runs.len(),
                p50_us: engine.p50_us.median,
                p50_us_min: engine.p50_us.min,
                p50_us_max: engine.p50_us.max,
                mib_per_s: engine.mib_per_s.median,
                mib_per_s_min: engine.mib_per_s.min,
                mib_per_s_max: engine.mib_per_s.max,
                raw_p50_us: raw.p50_us.median,
                raw_mib_per_s: raw.mib_per_s.median,
                p50_vs_raw: ratio(engine.p50_us.median, raw.p50_us.median),
                mib_per_s_vs_raw: ratio(engine.mib_per_s.median, raw.mib_per_s.median),
                per_run: runs
                    .iter()
                    .map(|s| RunFigures {
                        p50_us: s.engine.p50_us,
                        mib_per_s: s.engine.mib_per_s,
                        calls: s.engine.calls,
                        elapsed_s: s.engine.elapsed_s,
                        raw_p50_us: s.raw.p50_us,
                        raw_mib_per_s: s.raw.mib_per_s,
                        raw_calls: s.raw.calls,
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
        "courier bench --mode sweep: {} protocol(s), sizes {}, 1 call in flight, {} ({})",
        plan.protocols.len(),
        setup
            .sizes
            .iter()
            .map(|&s| size_label(s))
            .collect::<Vec<_>>()
            .join(", "),
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
                errors.push(e.context(format!("sweep over {} failed", proto.name)));
            }
        }
        (samples, errors)
    };
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
        let spawn = |layer, max_message_size| {
            let args = PeerArgs {
                layer,
                protocol: self.proto.name.clone(),
                progress_spin_us: self.setup.spin,
                max_message_size,
                cpu: self.plan.peer_cpu,
                stream_window: None,
                oneway: false,
            };
            Peer::start(args, self.verbose, self.proto.in_process)
        };
        let engine_peer = spawn(Layer::Engine, self.setup.engine_max_message).await?;
        let raw_peer = match spawn(Layer::Raw, self.setup.transport_max_message).await {
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
        let client = Engine::builder(&proto.name)
            .client()
            .progress_spin(Duration::from_micros(setup.spin))
            .max_message_size(setup.engine_max_message)
            .build()
            .await
            .context(|| "client engine")?;
        let result = async {
            let address = client
                .lookup(engine_peer.address())
                .await
                .context(|| "lookup of the engine peer")?;
            let sink = EngineSink::new(&client, &address, SINK_RPC);
            let (_, transport) = self.registry.create(
                &proto.name,
                &PluginOptions::new(),
                setup.transport_max_message,
            )?;
            let raw_addr: WireAddr = raw_peer
                .address()
                .parse()
                .context(|| "the raw peer's address")?;
            let largest = setup.sizes.last().copied().unwrap_or(0);
            let buffer = Bytes::from(vec![0xa5u8; largest]);
            let polling = setup.spin > 0;
            for _ in 0..plan.runs {
                for &size in &setup.sizes {
                    let payload = buffer.slice(..size);
                    let spec = setup.spec(size, plan.time_cap);
                    let guard = plan.time_cap * 2 + GUARD;
                    let label = size_label(size);
                    let engine =
                        tokio::time::timeout(guard, measure::measure(&sink, &payload, &spec))
                            .await
                            .map_err(|_| Error::Peer(format!("no end after {} s", guard.as_secs())))
                            .and_then(|r| r)
                            .context(|| format!("engine layer, {label}"))?;
                    let raw = tokio::time::timeout(
                        guard,
                        measure::raw(&transport, &raw_addr, &payload, &spec, polling),
                    )
                    .await
                    .map_err(|_| Error::Peer(format!("no end after {} s", guard.as_secs())))
                    .and_then(|r| r)
                    .context(|| format!("raw floor, {label}"))?;
                    samples.push(Sample {
                        proto_index: self.proto_index,
                        size,
                        engine,
                        raw,
                    });
                }
            }
            Ok(())
        }
        .await;
        client.finalize().await;
        result
    }
}

fn table(records: &[Record]) -> Table {
    let header = [
        "protocol",
        "size",
        "calls",
        "p50 µs",
        "MiB/s",
        "raw p50 µs",
        "raw MiB/s",
        "p50 ÷ raw",
        "MiB/s ÷ raw",
    ];
    let mut t = Table::new(&header).align(1..header.len(), Align::Right);
    for r in records {
        let n = r.runs;
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
        let spread = |median, min, max, format| super::Spread { median, min, max }.cell(n, format);
        t.row(vec![
            r.protocol.clone(),
            size_label(r.payload_bytes),
            r.calls.to_string(),
            spread(r.p50_us, r.p50_us_min, r.p50_us_max, format_us),
            spread(r.mib_per_s, r.mib_per_s_min, r.mib_per_s_max, format_rate),
            format_us(r.raw_p50_us),
            format_rate(r.raw_mib_per_s),
            opt(r.p50_vs_raw),
            opt(r.mib_per_s_vs_raw),
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
        "placement: {placement} (--pin {}); largest message: engines {} B, raw floor {} B",
        plan.pin.name(),
        setup.engine_max_message,
        setup.transport_max_message
    ))?;
    out(format_args!("machine: {}", plan.machine))?;
    out("")?;
    table(records).print()?;
    out("")?;
    out(format_args!(
        "{SINK_RPC} with the payload, one call in flight, round trip p50 and MiB/s = payload × \
         calls / elapsed; raw: the transport alone, the payload as one message answered by an \
         empty one. Calls: {} MiB over the size, {MIN_CALLS}..{}; {BIG_CALLS} from {} on.",
        setup.budget >> 20,
        setup.max_calls,
        size_label(BIG)
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
            "in_flight": 1,
            "progress_spin_us": setup.spin,
            "bytes_per_size": setup.budget,
            "max_calls": setup.max_calls,
            "min_calls": MIN_CALLS,
            "big_from": BIG,
            "big_calls": BIG_CALLS,
            "time_cap_ms": u64::try_from(plan.time_cap.as_millis()).unwrap_or(u64::MAX),
            "engine_max_message_size": setup.engine_max_message,
            "transport_max_message_size": setup.transport_max_message,
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
        what: "the sweep results",
        source,
    })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn setup() -> Setup {
        Setup {
            sizes: DEFAULT_SIZES.to_vec(),
            budget: BYTES_PER_SIZE,
            max_calls: MAX_CALLS,
            engine_max_message: 1 << 31,
            transport_max_message: 1 << 31,
            spin: 0,
        }
    }

    #[test]
    fn large_payloads_make_few_calls() {
        let s = setup();
        let cap = Duration::from_secs(5);
        assert_eq!(s.spec(64, cap).calls, MAX_CALLS);
        assert_eq!(s.spec(1 << 20, cap).calls, 256);
        assert_eq!(s.spec(64 << 20, cap).calls, 4);
        assert_eq!(s.spec(256 << 20, cap).calls, BIG_CALLS);
        assert_eq!(s.spec(1 << 30, cap).calls, BIG_CALLS);
        assert_eq!(s.spec(1 << 30, cap).warmup, 1);
        assert_eq!(s.spec(1 << 30, cap).in_flight, 1);
    }

    #[test]
    fn records_have_the_documented_fields() {
        let f = Figures {
            p50_us: 10.0,
            p99_us: 20.0,
            p999_us: 30.0,
            rpcs_per_s: 100.0,
            mib_per_s: 50.0,
            calls: 4,
            elapsed_s: 0.04,
        };
        let proto = Proto {
            name: "tcp".into(),
            plugin: "tcp".into(),
            socket: None,
            in_process: false,
            set: false,
        };
        let samples = [Sample {
            proto_index: 0,
            size: 1 << 20,
            engine: f,
            raw: Figures {
                mib_per_s: 100.0,
                ..f
            },
        }];
        let records = aggregate(&[proto], &samples);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].mib_per_s_vs_raw, Some(0.5));
        let v = serde_json::to_value(&records[0]).unwrap();
        let obj = v.as_object().unwrap();
        for k in RECORD_FIELDS {
            assert!(obj.contains_key(k), "{k}");
        }
        assert_eq!(obj.len(), RECORD_FIELDS.len(), "{obj:?}");
    }
}
