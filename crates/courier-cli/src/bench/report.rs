//! From runs to records: medians and spreads, the table, the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::machine::Machine;
use super::measure::Figures;
use super::stats::{format_rate, format_us, Spread, Summary};
use super::{policy_label, size_label, Layer, Plan, THROUGHPUT_FROM};
use crate::table::{Align, Table};
use crate::{out, CliResult, Error};

/// One measurement (one run of one combination).
#[derive(Debug, Clone)]
pub(crate) struct RunResult {
    /// Position of the protocol in the plan (the table's order).
    pub(crate) proto_index: usize,
    pub(crate) protocol: String,
    pub(crate) plugin: String,
    pub(crate) spin_us: u64,
    pub(crate) layer: Layer,
    pub(crate) size: usize,
    pub(crate) in_flight: u32,
    /// Client processes (1: this process).
    pub(crate) clients: u32,
    pub(crate) figures: Figures,
    /// The calls of each client (one element with one client).
    pub(crate) client_calls: Vec<u64>,
}

/// A run's figures as the JSON's `per_run` holds them.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunFigures {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    rpcs_per_s: f64,
    mib_per_s: Option<f64>,
    calls: u64,
    elapsed_s: f64,
    /// Each client's calls (their sum is `calls`).
    client_calls: Vec<u64>,
}

/// One row of the table and one element of the JSON's `results`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    pub(crate) protocol: String,
    pub(crate) plugin: String,
    pub(crate) layer: Layer,
    pub(crate) policy: String,
    pub(crate) progress_spin_us: u64,
    pub(crate) payload_bytes: usize,
    pub(crate) in_flight: u32,
    pub(crate) clients: u32,
    pub(crate) runs: usize,
    pub(crate) calls: u64,
    pub(crate) p50_us: f64,
    pub(crate) p50_us_min: f64,
    pub(crate) p50_us_max: f64,
    pub(crate) p99_us: f64,
    pub(crate) p99_us_min: f64,
    pub(crate) p99_us_max: f64,
    pub(crate) p999_us: f64,
    pub(crate) p999_us_min: f64,
    pub(crate) p999_us_max: f64,
    pub(crate) rpcs_per_s: f64,
    pub(crate) rpcs_per_s_min: f64,
    pub(crate) rpcs_per_s_max: f64,
    pub(crate) mib_per_s: Option<f64>,
    pub(crate) mib_per_s_min: Option<f64>,
    pub(crate) mib_per_s_max: Option<f64>,
    pub(crate) p50_vs_raw: Option<f64>,
    pub(crate) rpcs_per_s_vs_raw: Option<f64>,
    pub(crate) per_run: Vec<RunFigures>,
    #[serde(skip)]
    proto_index: usize,
}

/// The fields every record has, in order (the documented schema; a test
/// checks the JSON against it).
#[cfg(test)]
pub(crate) const RECORD_FIELDS: [&str; 28] = [
    "protocol",
    "plugin",
    "layer",
    "policy",
    "progress_spin_us",
    "payload_bytes",
    "in_flight",
    "clients",
    "runs",
    "calls",
    "p50_us",
    "p50_us_min",
    "p50_us_max",
    "p99_us",
    "p99_us_min",
    "p99_us_max",
    "p999_us",
    "p999_us_min",
    "p999_us_max",
    "rpcs_per_s",
    "rpcs_per_s_min",
    "rpcs_per_s_max",
    "mib_per_s",
    "mib_per_s_min",
    "mib_per_s_max",
    "p50_vs_raw",
    "rpcs_per_s_vs_raw",
    "per_run",
];

/// Groups the runs by (protocol, policy, size, in flight, clients, layer)
/// and computes medians, spreads and the ratios to the raw floor.
pub(crate) fn aggregate(plan: &Plan, results: &[RunResult]) -> Vec<Record> {
    let policy_rank = |spin: u64| plan.policies.iter().position(|p| *p == spin);
    type Key = (usize, Option<usize>, usize, u32, u32, Layer);
    let mut groups: BTreeMap<Key, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        groups
            .entry((
                r.proto_index,
                policy_rank(r.spin_us),
                r.size,
                r.in_flight,
                r.clients,
                r.layer,
            ))
            .or_default()
            .push(r);
    }
    let mut records: Vec<Record> = groups
        .values()
        .filter_map(|runs| {
            let first = runs.first()?;
            let Summary {
                p50_us: p50,
                p99_us: p99,
                p999_us: p999,
                rpcs_per_s: rate,
                mib_per_s: mib,
                calls,
                ..
            } = Summary::of(runs.iter().map(|r| &r.figures));
            let throughput = first.size >= THROUGHPUT_FROM;
            let opt = |v: f64| throughput.then_some(v);
            Some(Record {
                protocol: first.protocol.clone(),
                plugin: first.plugin.clone(),
                layer: first.layer,
                policy: policy_label(first.spin_us),
                progress_spin_us: first.spin_us,
                payload_bytes: first.size,
                in_flight: first.in_flight,
                clients: first.clients,
                runs: runs.len(),
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                calls: calls.median.round() as u64,
                p50_us: p50.median,
                p50_us_min: p50.min,
                p50_us_max: p50.max,
                p99_us: p99.median,
                p99_us_min: p99.min,
                p99_us_max: p99.max,
                p999_us: p999.median,
                p999_us_min: p999.min,
                p999_us_max: p999.max,
                rpcs_per_s: rate.median,
                rpcs_per_s_min: rate.min,
                rpcs_per_s_max: rate.max,
                mib_per_s: opt(mib.median),
                mib_per_s_min: opt(mib.min),
                mib_per_s_max: opt(mib.max),
                p50_vs_raw: None,
                rpcs_per_s_vs_raw: None,
                per_run: runs
                    .iter()
                    .map(|r| RunFigures {
                        p50_us: r.figures.p50_us,
                        p99_us: r.figures.p99_us,
                        p999_us: r.figures.p999_us,
                        rpcs_per_s: r.figures.rpcs_per_s,
                        mib_per_s: opt(r.figures.mib_per_s),
                        calls: r.figures.calls,
                        elapsed_s: r.figures.elapsed_s,
                        client_calls: r.client_calls.clone(),
                    })
                    .collect(),
                proto_index: first.proto_index,
            })
        })
        .collect();
    // Ratios to the raw floor of the same protocol, policy, size, in
    // flight, clients.
    type FloorKey = (usize, u64, usize, u32, u32);
    let floors: BTreeMap<FloorKey, (f64, f64)> = records
        .iter()
        .filter(|r| r.layer == Layer::Raw)
        .map(|r| {
            (
                (
                    r.proto_index,
                    r.progress_spin_us,
                    r.payload_bytes,
                    r.in_flight,
                    r.clients,
                ),
                (r.p50_us, r.rpcs_per_s),
            )
        })
        .collect();
    for r in &mut records {
        let key = (
            r.proto_index,
            r.progress_spin_us,
            r.payload_bytes,
            r.in_flight,
            r.clients,
        );
        if let Some((p50, rate)) = floors.get(&key) {
            r.p50_vs_raw = ratio(r.p50_us, *p50);
            r.rpcs_per_s_vs_raw = ratio(r.rpcs_per_s, *rate);
        }
    }
    records
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The table's lines (without the lines around it); with a `clients`
/// column after `in flight` when `with_clients` (some measurement had more
/// than one client).
pub(crate) fn table(records: &[Record], with_clients: bool) -> Table {
    let mut header = vec!["protocol", "policy", "size", "in flight"];
    if with_clients {
        header.push("clients");
    }
    header.extend([
        "layer",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "RPCs/s",
        "MiB/s",
        "p50 ÷ raw",
        "RPCs/s ÷ raw",
    ]);
    let layer_col = header.len() - 8;
    let last = header.len() - 1;
    // Numbers to the right; `layer` is a word.
    let mut t = Table::new(&header).align((2..=last).filter(|col| *col != layer_col), Align::Right);
    for r in records {
        let n = r.runs;
        let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"));
        let spread = |median, min, max, format| Spread { median, min, max }.cell(n, format);
        let mut row = vec![
            r.protocol.clone(),
            r.policy.clone(),
            size_label(r.payload_bytes),
            r.in_flight.to_string(),
        ];
        if with_clients {
            row.push(r.clients.to_string());
        }
        row.extend([
            r.layer.name().to_owned(),
            spread(r.p50_us, r.p50_us_min, r.p50_us_max, format_us),
            spread(r.p99_us, r.p99_us_min, r.p99_us_max, format_us),
            spread(r.p999_us, r.p999_us_min, r.p999_us_max, format_us),
            spread(
                r.rpcs_per_s,
                r.rpcs_per_s_min,
                r.rpcs_per_s_max,
                format_rate,
            ),
            match (r.mib_per_s, r.mib_per_s_min, r.mib_per_s_max) {
                (Some(m), Some(lo), Some(hi)) => spread(m, lo, hi, format_rate),
                _ => "-".to_owned(),
            },
            ratio(r.p50_vs_raw),
            ratio(r.rpcs_per_s_vs_raw),
        ]);
        t.row(row);
    }
    t
}

/// Prints the heading, the table and the legend.
pub(crate) fn print(plan: &Plan, records: &[Record], elapsed: Duration) -> CliResult {
    let spread_note = if plan.runs > 1 {
        format!("median (min..max) of {} runs", plan.runs)
    } else {
        "1 run".to_owned()
    };
    out(format_args!(
        "courier bench: `{}` (payload in, empty response out), server in a child process; \
         {spread_note}; up to {} calls per measurement after a warm-up, capped at {} ms",
        super::SINK_RPC,
        plan.max_calls,
        plan.time_cap.as_millis()
    ))?;
    let placement = match (plan.client_cpu, plan.peer_cpu) {
        (Some(c), Some(p)) if c == p => format!("client and servers on CPU {c}"),
        (Some(c), Some(p)) => format!("client on CPU {c}, servers on CPU {p}"),
        _ => "left to the scheduler".to_owned(),
    };
    out(format_args!(
        "placement: {placement} (--pin {})",
        plan.pin.name()
    ))?;
    out(format_args!("machine: {}", plan.machine))?;
    out("")?;
    let many = plan.clients.iter().any(|c| *c > 1);
    table(records, many).print()?;
    out("")?;
    out(format_args!(
        "engine: RPC through two engines; raw: the same transport alone (Transport trait); \
         socket: plain sockets, no Courier code. ÷ raw: this layer's figure over the raw floor's \
         (same protocol, policy, size, in flight{}). MiB/s from 64 KiB on.",
        if many { ", clients" } else { "" }
    ))?;
    if many {
        out(
            "clients: with N > 1, N client processes on the client's CPU against the one server \
             of each layer, started together; latencies of all their calls, RPCs/s = all calls / \
             the span from the first start to the last end.",
        )?;
        let alone: Vec<&str> = plan
            .protocols
            .iter()
            .filter(|p| p.in_process)
            .map(|p| p.name.as_str())
            .collect();
        if !alone.is_empty() {
            out(format_args!(
                "{}: 1 client only (its connections reach this process only).",
                alone.join(", ")
            ))?;
        }
    }
    for line in set_notes(plan, records) {
        out(line)?;
    }
    out(format_args!(
        "{} measurements in {:.1} s",
        records.iter().map(|r| r.runs).sum::<usize>(),
        elapsed.as_secs_f64()
    ))
}

/// A line per address set (`--set`) under the table: the path its
/// client's calls took, and, when that path's protocol was measured alone
/// too, the set's engine p50 over its p50, by size and calls in flight.
fn set_notes(plan: &Plan, records: &[Record]) -> Vec<String> {
    let mut lines = Vec::new();
    for p in plan.protocols.iter().filter(|p| p.set) {
        let rows: Vec<&Record> = records
            .iter()
            .filter(|r| r.protocol == p.name && r.layer == Layer::Engine)
            .collect();
        let mut via: Vec<&str> = rows.iter().map(|r| r.plugin.as_str()).collect();
        via.dedup();
        let mut line = format!(
            "{}: an address set (--set): the engine peer, a child process, listens on each \
             protocol; the client (paths.in_process off) connected by {}",
            p.name,
            if via.is_empty() {
                "-".to_owned()
            } else {
                via.join(", ")
            }
        );
        let ratios: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let alone = records.iter().find(|a| {
                    !a.protocol.contains(',')
                        && a.plugin == r.plugin
                        && a.layer == r.layer
                        && a.progress_spin_us == r.progress_spin_us
                        && a.payload_bytes == r.payload_bytes
                        && a.in_flight == r.in_flight
                        && a.clients == r.clients
                })?;
                let x = ratio(r.p50_us, alone.p50_us)?;
                Some(format!(
                    "{x:.2} ({} ×{})",
                    size_label(r.payload_bytes),
                    r.in_flight
                ))
            })
            .collect();
        if !ratios.is_empty() {
            let _ = write!(
                line,
                "; engine p50 over {}'s alone: {}",
                via.join(", "),
                ratios.join(", ")
            );
        }
        line.push('.');
        lines.push(line);
    }
    lines
}

fn config(plan: &Plan) -> Value {
    json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "protocols": plan.protocols.iter().filter(|p| !p.set).map(|p| p.name.clone()).collect::<Vec<_>>(),
        "sets": plan.protocols.iter().filter(|p| p.set).map(|p| p.name.clone()).collect::<Vec<_>>(),
        "sizes": plan.sizes,
        "in_flight": plan.in_flight,
        "clients": plan.clients,
        "runs": plan.runs,
        "quick": plan.quick,
        "progress_spin_us": plan.policies,
        "layers": plan.layers,
        "max_calls": plan.max_calls,
        "min_calls": super::MIN_CALLS,
        "bytes_per_measurement": plan.bytes_per_measurement,
        "time_cap_ms": u64::try_from(plan.time_cap.as_millis()).unwrap_or(u64::MAX),
        "max_message_size": plan.max_message_size,
        "pin": plan.pin,
        "client_cpu": plan.client_cpu,
        "peer_cpu": plan.peer_cpu,
        "courier_version": env!("CARGO_PKG_VERSION"),
    })
}

/// The whole JSON document (fields in this order).
#[derive(Debug, Serialize)]
pub(crate) struct Document<'a> {
    machine: &'a Machine,
    config: Value,
    elapsed_s: f64,
    /// The failures' messages.
    errors: Vec<String>,
    results: &'a [Record],
}

pub(crate) fn document<'a>(
    plan: &'a Plan,
    records: &'a [Record],
    errors: &[Error],
    elapsed: Duration,
) -> Document<'a> {
    Document {
        machine: &plan.machine,
        config: config(plan),
        elapsed_s: elapsed.as_secs_f64(),
        errors: errors.iter().map(ToString::to_string).collect(),
        results: records,
    }
}

pub(crate) fn write_json(
    path: &Path,
    plan: &Plan,
    records: &[Record],
    errors: &[Error],
    elapsed: Duration,
) -> CliResult {
    let doc = document(plan, records, errors, elapsed);
    let mut text = serde_json::to_string_pretty(&doc).map_err(|source| Error::Json {
        what: "the results",
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
    fn record_fields_are_the_serialized_ones() {
        let f = Figures {
            p50_us: 1.0,
            p99_us: 2.0,
            p999_us: 3.0,
            rpcs_per_s: 4.0,
            mib_per_s: 5.0,
            calls: 6,
            elapsed_s: 7.0,
        };
        let runs = [Layer::Engine, Layer::Raw].map(|layer| RunResult {
            proto_index: 0,
            protocol: "tcp".into(),
            plugin: "tcp".into(),
            spin_us: 0,
            layer,
            size: 64 << 10,
            in_flight: 1,
            clients: 1,
            figures: f,
            client_calls: vec![6],
        });
        let plan = Plan {
            protocols: Vec::new(),
            sizes: vec![64 << 10],
            in_flight: vec![1],
            clients: vec![1],
            runs: 1,
            policies: vec![0],
            layers: vec![Layer::Engine, Layer::Raw],
            max_calls: 10,
            bytes_per_measurement: 10,
            time_cap: Duration::from_secs(1),
            max_message_size: 1 << 20,
            quick: true,
            pin: super::super::Pin::None,
            client_cpu: None,
            peer_cpu: None,
            machine: Machine::read(),
        };
        let records = aggregate(&plan, &runs);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].layer, Layer::Engine);
        assert_eq!(records[0].p50_vs_raw, Some(1.0));
        let v = serde_json::to_value(&records[0]).unwrap();
        let obj = v.as_object().unwrap();
        for k in RECORD_FIELDS {
            assert!(obj.contains_key(k), "{k}");
        }
        assert_eq!(obj.len(), RECORD_FIELDS.len(), "{obj:?}");
        assert_eq!(v["mib_per_s"], 5.0);
        assert_eq!(v["layer"], "engine");
        assert_eq!(v["policy"], "park");
    }
}
