//! The Prometheus text exposition format (0.0.4) of a [`Stats`].
//!
//! Every metric is named `courier_…`; counters end in `_total`; sizes are
//! in bytes and times in seconds (Prometheus' base units). Families with
//! no sample (no provider with limits, no open connection, timing off) are
//! left out. `docs/observability.md` lists them all.
//!
//! Labels: `rpc`, `provider` and `side` (`served` or `called`) on the
//! per-RPC families, with `kind` on the errors and `phase` on the latency
//! histograms; `provider` on the providers' families; `peer` (its address)
//! and `connection` (its number in the engine, since one peer may have
//! several) on the peers' families.

use std::fmt::Write as _;

use super::schema::{Latency, PeerStats, ProviderStats, SideStats, Stats};

impl Stats {
    /// The statistics in the Prometheus text format (version 0.0.4):
    /// counters (`_total`), gauges and histograms (`_bucket`, `_sum`,
    /// `_count`) named `courier_…`, with labels `rpc`, `provider`, `side`,
    /// `kind`, `phase`, `peer` and `connection` (`docs/observability.md`
    /// lists them).
    pub fn to_prometheus(&self) -> String {
        render(self)
    }
}

/// The latency histograms' bucket boundaries: `le` as written, and in
/// nanoseconds (1, 2, 5 µs … 10 s; `+Inf` comes after them).
const BOUNDS: [(&str, u64); 22] = [
    ("0.000001", 1_000),
    ("0.000002", 2_000),
    ("0.000005", 5_000),
    ("0.00001", 10_000),
    ("0.00002", 20_000),
    ("0.00005", 50_000),
    ("0.0001", 100_000),
    ("0.0002", 200_000),
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.002", 2_000_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.02", 20_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.2", 200_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
    ("2", 2_000_000_000),
    ("5", 5_000_000_000),
    ("10", 10_000_000_000),
];

/// A sample's value: integers print as integers, exactly.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
    /// Nanoseconds, written as seconds with no rounding noise.
    Nanos(u64),
}

impl From<u64> for Num {
    fn from(n: u64) -> Self {
        Self::Int(n)
    }
}

impl From<usize> for Num {
    fn from(n: usize) -> Self {
        Self::Int(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

impl From<f64> for Num {
    fn from(x: f64) -> Self {
        Self::Float(x)
    }
}

impl From<bool> for Num {
    fn from(b: bool) -> Self {
        Self::Int(u64::from(b))
    }
}

fn write_num(out: &mut String, n: Num) {
    let _ = match n {
        Num::Int(n) => write!(out, "{n}"),
        Num::Nanos(ns) => {
            let fraction = format!("{:09}", ns % 1_000_000_000);
            let fraction = fraction.trim_end_matches('0');
            let seconds = ns / 1_000_000_000;
            if fraction.is_empty() {
                write!(out, "{seconds}")
            } else {
                write!(out, "{seconds}.{fraction}")
            }
        }
        Num::Float(x) if x.is_nan() => write!(out, "NaN"),
        Num::Float(x) if x == f64::INFINITY => write!(out, "+Inf"),
        Num::Float(x) if x == f64::NEG_INFINITY => write!(out, "-Inf"),
        // Rust writes no exponent, and the shortest text that reads back
        // as the same number.
        Num::Float(x) => write!(out, "{x}"),
    };
}

/// A label value, escaped as the format requires: backslash, double quote
/// and newline.
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A help text, escaped: backslash and newline.
fn escape_help(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

type Labels = Vec<(&'static str, String)>;

/// The text being written.
struct Text(String);

impl Text {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} ");
        escape_help(help, &mut self.0);
        let _ = writeln!(self.0, "\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: Num) {
        self.0.push_str(name);
        self.0.push_str(suffix);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                escape_label(v, &mut self.0);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        write_num(&mut self.0, value);
        self.0.push('\n');
    }

    /// A counter or gauge family; nothing if it has no samples.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: Vec<(Labels, Num)>) {
        if samples.is_empty() {
            return;
        }
        self.header(name, kind, help);
        for (labels, value) in samples {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.sample(name, "", &labels, value);
        }
    }

    /// A histogram family of latencies (seconds); nothing if it has no
    /// series.
    fn histogram(&mut self, name: &str, help: &str, series: Vec<(Labels, &Latency)>) {
        if series.is_empty() {
            return;
        }
        self.header(name, "histogram", help);
        for (labels, latency) in series {
            let mut labels: Vec<(&str, &str)> =
                labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let mut values = latency.buckets.iter().peekable();
            let mut below = 0u64;
            for (le, bound_ns) in BOUNDS {
                while let Some([_, count]) = values.next_if(|[v, _]| *v <= bound_ns) {
                    below = below.saturating_add(*count);
                }
                labels.push(("le", le));
                self.sample(name, "_bucket", &labels, below.into());
                labels.pop();
            }
            // Every value, past the last boundary too. The buckets and
            // `count` come from the same histogram; their sum is the count.
            let all = below.saturating_add(values.map(|[_, n]| *n).sum::<u64>());
            labels.push(("le", "+Inf"));
            self.sample(name, "_bucket", &labels, all.into());
            labels.pop();
            // The mean is the histogram's: the sum it stands for.
            let sum_ns = (latency.mean_us * 1000.0 * all as f64).round();
            // In range: a float to integer cast saturates.
            self.sample(name, "_sum", &labels, Num::Nanos(sum_ns as u64));
            self.sample(name, "_count", &labels, all.into());
        }
    }
}

/// Each RPC side with its labels, in the order of `stats.rpcs`.
fn sides(stats: &Stats) -> Vec<(Labels, &SideStats)> {
    let mut out = Vec::new();
    for r in &stats.rpcs {
        for (side, s) in [("served", &r.served), ("called", &r.called)] {
            if let Some(s) = s {
                let labels = vec![
                    ("rpc", r.name.clone()),
                    ("provider", r.provider.to_string()),
                    ("side", side.to_owned()),
                ];
                out.push((labels, s));
            }
        }
    }
    out
}

fn with(labels: &Labels, extra: (&'static str, String)) -> Labels {
    let mut l = labels.clone();
    l.push(extra);
    l
}

fn render(stats: &Stats) -> String {
    let mut t = Text(String::new());
    let none = Labels::new;

    t.family(
        "courier_info",
        "gauge",
        "The engine: its protocol and address, and whether latencies are timed (always 1).",
        vec![(
            vec![
                ("protocol", stats.protocol.clone()),
                ("address", stats.address.clone()),
                ("timing", stats.timing.to_string()),
                ("schema", stats.schema.to_string()),
            ],
            1u64.into(),
        )],
    );
    t.family(
        "courier_uptime_seconds",
        "gauge",
        "Seconds since the engine started counting.",
        vec![(none(), (stats.uptime_ms as f64 / 1000.0).into())],
    );
    let s = &stats.settings;
    t.family(
        "courier_setting",
        "gauge",
        "The engine's settings that the figures depend on (booleans are 0 or 1).",
        [
            ("progress_spin_us", Num::from(s.progress_spin_us)),
            ("progress_spin_busy_us", s.progress_spin_busy_us.into()),
            ("use_progress_thread", s.use_progress_thread.into()),
            ("rpc_thread_count", s.rpc_thread_count.into()),
            (
                "max_in_flight_per_connection",
                s.max_in_flight_per_connection.into(),
            ),
            (
                "max_queued_response_bytes",
                s.max_queued_response_bytes.into(),
            ),
        ]
        .into_iter()
        .map(|(name, v)| (vec![("setting", name.to_owned())], v))
        .collect(),
    );
    t.family(
        "courier_progress_messages_received_total",
        "counter",
        "Messages received on every connection, closed ones included.",
        vec![(none(), stats.progress.messages_in.into())],
    );
    t.family(
        "courier_progress_parks_total",
        "counter",
        "Polling windows that ended without activity, after which the engine's threads may sleep.",
        vec![(none(), stats.progress.parks.into())],
    );
    t.family(
        "courier_progress_short_parks_total",
        "counter",
        "Parks that a message received ended within 1 ms: a longer polling window would have bridged the gap.",
        vec![(none(), stats.progress.short_parks.into())],
    );
    t.family(
        "courier_progress_short_parks_seconds_total",
        "counter",
        "The time those short parks lasted, in all.",
        vec![(
            none(),
            Num::Nanos(stats.progress.short_parks_us.saturating_mul(1000)),
        )],
    );
    t.family(
        "courier_unknown_rpc_requests_total",
        "counter",
        "Requests for RPCs not registered here.",
        vec![(none(), stats.unknown_rpc_requests.into())],
    );

    let sides = sides(stats);
    let per_side = |f: &dyn Fn(&SideStats) -> Num| -> Vec<(Labels, Num)> {
        sides.iter().map(|(l, s)| (l.clone(), f(s))).collect()
    };
    t.family(
        "courier_rpc_calls_total",
        "counter",
        "Requests served (side=\"served\") or calls made (side=\"called\"), per RPC and provider.",
        per_side(&|s| s.calls.into()),
    );
    t.family(
        "courier_rpc_ok_total",
        "counter",
        "Requests answered (served), or calls answered with a response (called).",
        per_side(&|s| s.ok.into()),
    );
    t.family(
        "courier_rpc_errors_total",
        "counter",
        "Requests or calls that ended otherwise, by kind (failed, panicked, cancelled, deadline, busy, ...).",
        sides
            .iter()
            .flat_map(|(l, s)| {
                s.errors
                    .iter()
                    .map(|(kind, n)| (with(l, ("kind", kind.clone())), Num::from(*n)))
            })
            .collect(),
    );
    t.family(
        "courier_rpc_in_flight",
        "gauge",
        "Requests or calls started and not ended yet.",
        per_side(&|s| s.in_flight.into()),
    );
    t.family(
        "courier_rpc_waiting",
        "gauge",
        "Requests served whose handler has not started: waiting for a handler thread or their provider's turn.",
        sides
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| *k == "side" && v == "served"))
            .map(|(l, s)| (l.clone(), Num::from(s.waiting)))
            .collect(),
    );
    t.family(
        "courier_rpc_received_bytes_total",
        "counter",
        "Payload bytes received: arguments of requests served, responses to calls made.",
        per_side(&|s| s.bytes_in.into()),
    );
    t.family(
        "courier_rpc_sent_bytes_total",
        "counter",
        "Payload bytes sent: responses to requests served, arguments of calls made.",
        per_side(&|s| s.bytes_out.into()),
    );
    t.histogram(
        "courier_rpc_latency_seconds",
        "Latency by phase: queue, handler and respond (served), round_trip (called); only with stats.timing on.",
        sides
            .iter()
            .flat_map(|(l, s)| {
                s.phases
                    .iter()
                    .map(|(phase, latency)| (with(l, ("phase", phase.clone())), latency))
            })
            .collect(),
    );

    let providers = |f: &dyn Fn(&ProviderStats) -> Option<Num>| -> Vec<(Labels, Num)> {
        stats
            .providers
            .iter()
            .filter_map(|p| Some((vec![("provider", p.provider.to_string())], f(p)?)))
            .collect()
    };
    t.family(
        "courier_provider_running",
        "gauge",
        "Handlers of the provider running now.",
        providers(&|p| Some(p.running.into())),
    );
    t.family(
        "courier_provider_queued",
        "gauge",
        "Requests waiting for a place at the provider now.",
        providers(&|p| Some(p.queued.into())),
    );
    t.family(
        "courier_provider_max_running",
        "gauge",
        "The provider's max_running, where set.",
        providers(&|p| p.max_running.map(Num::from)),
    );
    t.family(
        "courier_provider_max_queued",
        "gauge",
        "The provider's max_queued.",
        providers(&|p| Some(p.max_queued.into())),
    );
    t.family(
        "courier_provider_refused_total",
        "counter",
        "Requests the provider refused with Busy (load shed).",
        providers(&|p| Some(p.refused.into())),
    );
    t.family(
        "courier_provider_dropped_total",
        "counter",
        "One-way requests the provider dropped past its limits.",
        providers(&|p| Some(p.dropped.into())),
    );

    let peers = |f: &dyn Fn(&PeerStats) -> Num| -> Vec<(Labels, Num)> {
        stats
            .peers
            .iter()
            .map(|p| {
                (
                    vec![
                        ("peer", p.address.clone()),
                        ("connection", p.connection.to_string()),
                    ],
                    f(p),
                )
            })
            .collect()
    };
    t.family(
        "courier_peer_received_messages_total",
        "counter",
        "Messages received on the connection.",
        peers(&|p| p.messages_in.into()),
    );
    t.family(
        "courier_peer_sent_messages_total",
        "counter",
        "Messages sent on the connection.",
        peers(&|p| p.messages_out.into()),
    );
    t.family(
        "courier_peer_received_bytes_total",
        "counter",
        "Bytes received on the connection, frame headers included.",
        peers(&|p| p.bytes_in.into()),
    );
    t.family(
        "courier_peer_sent_bytes_total",
        "counter",
        "Bytes sent on the connection, frame headers included.",
        peers(&|p| p.bytes_out.into()),
    );
    t.family(
        "courier_peer_requests_total",
        "counter",
        "Requests the peer sent.",
        peers(&|p| p.requests.into()),
    );
    t.family(
        "courier_peer_requests_in_flight",
        "gauge",
        "The peer's requests in flight now (each holds one of max_in_flight_per_connection).",
        peers(&|p| p.requests_in_flight.into()),
    );
    t.family(
        "courier_peer_requests_in_flight_peak",
        "gauge",
        "The most of the peer's requests in flight at once.",
        peers(&|p| p.peak_requests_in_flight.into()),
    );
    t.family(
        "courier_peer_calls_in_flight",
        "gauge",
        "This engine's calls waiting for answers from the peer now.",
        peers(&|p| p.calls_in_flight.into()),
    );
    t.family(
        "courier_peer_errors_sent_total",
        "counter",
        "Error frames sent to the peer.",
        peers(&|p| p.errors_sent.into()),
    );
    t.family(
        "courier_peer_errors_received_total",
        "counter",
        "Error frames received from the peer.",
        peers(&|p| p.errors_received.into()),
    );
    t.family(
        "courier_peer_limit_waits_total",
        "counter",
        "Times the connection stopped reading: every request slot taken, or queued answers over their budget.",
        peers(&|p| p.limit_waits.into()),
    );

    let b = &stats.bulk;
    t.family(
        "courier_bulk_transfers_total",
        "counter",
        "Bulk transfers (pulls and pushes) this engine made.",
        vec![(none(), b.transfers.into())],
    );
    t.family(
        "courier_bulk_failed_total",
        "counter",
        "Bulk transfers that failed.",
        vec![(none(), b.failed.into())],
    );
    t.family(
        "courier_bulk_pulled_bytes_total",
        "counter",
        "Bytes pulled from peers.",
        vec![(none(), b.bytes_pulled.into())],
    );
    t.family(
        "courier_bulk_pushed_bytes_total",
        "counter",
        "Bytes pushed to peers.",
        vec![(none(), b.bytes_pushed.into())],
    );
    t.family(
        "courier_bulk_throughput_bytes_per_second",
        "gauge",
        "Bytes moved over the time spent in transfers, since the start (0 if none).",
        vec![(none(), (b.mib_per_s * 1024.0 * 1024.0).into())],
    );
    t.family(
        "courier_bulk_regions",
        "gauge",
        "Regions exposed now, payloads waiting to be pulled by peers included.",
        vec![(none(), b.regions.into())],
    );
    t.family(
        "courier_bulk_held_responses",
        "gauge",
        "Responses held for their callers to pull now.",
        vec![(none(), b.held_responses.into())],
    );
    t.family(
        "courier_payloads_by_bulk_total",
        "counter",
        "Payloads over the largest message: sent (exposed for the peer to pull), received (pulled whole), refused (over max_payload_bytes, or no memory).",
        vec![
            (vec![("way", "sent".to_owned())], b.payloads_sent.into()),
            (vec![("way", "received".to_owned())], b.payloads_received.into()),
            (vec![("way", "refused".to_owned())], b.payloads_refused.into()),
        ],
    );

    let st = &stats.streams;
    t.family(
        "courier_streams_open",
        "gauge",
        "Streams open now, opened here or served here.",
        vec![(none(), st.open.into())],
    );
    t.family(
        "courier_streams_buffered_bytes",
        "gauge",
        "Bytes of stream items received and not yet read.",
        vec![(none(), st.buffered_bytes.into())],
    );
    t.family(
        "courier_stream_items_received_total",
        "counter",
        "Stream items received.",
        vec![(none(), st.items_in.into())],
    );
    t.family(
        "courier_stream_items_sent_total",
        "counter",
        "Stream items sent.",
        vec![(none(), st.items_out.into())],
    );
    t.0
}

#[cfg(test)]
#[path = "prometheus_check.rs"]
mod check;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::BTreeMap;

    use super::super::record::new_histogram;
    use super::super::schema::{BulkStats, ProgressStats, RpcStats, Settings, SCHEMA};
    use super::*;

    fn latency(values_ns: &[u64]) -> Latency {
        let mut h = new_histogram();
        for v in values_ns {
            h.record(*v).unwrap();
        }
        Latency::of(&h)
    }

    fn side(calls: u64, phases: &[(&str, Latency)]) -> SideStats {
        SideStats {
            calls,
            in_flight: 1,
            waiting: 1,
            ok: calls - 3,
            errors: BTreeMap::from([("failed".to_owned(), 1), ("busy".to_owned(), 1)]),
            bytes_in: 64 * calls,
            bytes_out: 32 * calls,
            phases: phases
                .iter()
                .map(|(n, l)| ((*n).to_owned(), l.clone()))
                .collect(),
        }
    }

    /// Statistics with a bit of everything, and names that need escaping.
    fn known() -> Stats {
        let served = [
            ("queue", latency(&[500, 1_500, 1_500, 30_000])),
            ("handler", latency(&[4_000, 4_000, 8_000, 3_000_000])),
            // Past the last boundary (10 s): only in +Inf.
            ("respond", latency(&[900, 20_000_000_000])),
        ];
        Stats {
            schema: SCHEMA,
            protocol: "tcp".into(),
            address: "tcp://127.0.0.1:41235".into(),
            uptime_ms: 12_345,
            counters: true,
            timing: true,
            settings: Settings {
                progress_spin_us: 50,
                progress_spin_busy_us: 1000,
                use_progress_thread: false,
                rpc_thread_count: 2,
                max_in_flight_per_connection: 256,
                max_queued_response_bytes: 1 << 20,
            },
            progress: ProgressStats {
                messages_in: 40,
                parks: 7,
                short_parks: 5,
                short_parks_us: 1_250,
            },
            rpcs: vec![
                RpcStats {
                    name: "echo".into(),
                    id: "0x0000000000000001".into(),
                    provider: 0,
                    served: Some(side(20, &served)),
                    called: Some(side(
                        10,
                        &[("round_trip", latency(&[10_000, 12_000, 250_000]))],
                    )),
                },
                RpcStats {
                    name: "we\"ird\\name\nline".into(),
                    id: "0x0000000000000002".into(),
                    provider: 7,
                    served: Some(side(5, &[])),
                    called: None,
                },
            ],
            unknown_rpc_requests: 3,
            providers: vec![ProviderStats {
                provider: 7,
                max_running: Some(4),
                max_queued: 16,
                pool: Some("io".into()),
                running: 2,
                queued: 1,
                refused: 9,
                dropped: 0,
            }],
            peers: vec![PeerStats {
                address: "tcp://127.0.0.1:5000".into(),
                connection: 1,
                messages_in: 30,
                bytes_in: 3000,
                messages_out: 29,
                bytes_out: 2900,
                requests: 25,
                requests_in_flight: 1,
                peak_requests_in_flight: 4,
                calls_in_flight: 0,
                errors_sent: 2,
                errors_received: 0,
                limit_waits: 0,
            }],
            bulk: BulkStats {
                transfers: 2,
                failed: 0,
                bytes_pulled: 1 << 20,
                bytes_pushed: 0,
                mib_per_s: 512.5,
                regions: 1,
                held_responses: 0,
                payloads_sent: 0,
                payloads_received: 1,
                payloads_refused: 0,
            },
            streams: Default::default(),
        }
    }

    #[test]
    fn the_text_of_known_statistics_parses_line_by_line() {
        let stats = known();
        let text = stats.to_prometheus();
        let e = check::check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let v = |name: &str, labels: &[(&str, &str)]| {
            e.value(name, labels)
                .unwrap_or_else(|| panic!("no single {name}{labels:?} in\n{text}"))
        };
        let echo_served = [("rpc", "echo"), ("provider", "0"), ("side", "served")];
        assert_eq!(v("courier_rpc_calls_total", &echo_served), 20.0);
        assert_eq!(v("courier_rpc_ok_total", &echo_served), 17.0);
        assert_eq!(v("courier_rpc_in_flight", &echo_served), 1.0);
        assert_eq!(v("courier_rpc_received_bytes_total", &echo_served), 1280.0);
        let busy = [("rpc", "echo"), ("side", "called"), ("kind", "busy")];
        assert_eq!(v("courier_rpc_errors_total", &busy), 1.0);
        assert_eq!(v("courier_unknown_rpc_requests_total", &[]), 3.0);
        assert_eq!(v("courier_uptime_seconds", &[]), 12.345);
        assert_eq!(v("courier_progress_parks_total", &[]), 7.0);
        assert_eq!(v("courier_progress_short_parks_total", &[]), 5.0);
        assert_eq!(
            v("courier_progress_short_parks_seconds_total", &[]),
            0.00125
        );
        assert_eq!(v("courier_rpc_waiting", &echo_served), 1.0);
        let echo_called = [("rpc", "echo"), ("provider", "0"), ("side", "called")];
        assert!(e.value("courier_rpc_waiting", &echo_called).is_none());
        assert_eq!(
            v("courier_provider_refused_total", &[("provider", "7")]),
            9.0
        );
        assert_eq!(v("courier_provider_max_running", &[("provider", "7")]), 4.0);
        let peer = [("peer", "tcp://127.0.0.1:5000"), ("connection", "1")];
        assert_eq!(v("courier_peer_requests_in_flight_peak", &peer), 4.0);
        assert_eq!(v("courier_bulk_pulled_bytes_total", &[]), 1048576.0);
        assert_eq!(
            v("courier_bulk_throughput_bytes_per_second", &[]),
            512.5 * 1048576.0
        );
        assert_eq!(
            v("courier_setting", &[("setting", "rpc_thread_count")]),
            2.0
        );
        assert_eq!(
            v("courier_info", &[("protocol", "tcp"), ("timing", "true")]),
            1.0
        );
        // Escaped in the text, the same name once read back.
        assert!(text.contains(r#"rpc="we\"ird\\name\nline""#), "{text}");
        let weird = [("rpc", "we\"ird\\name\nline"), ("provider", "7")];
        assert_eq!(v("courier_rpc_calls_total", &weird), 5.0);

        // Every family has a HELP and a TYPE; counters are counters.
        for (name, kind) in &e.types {
            assert!(e.help.contains_key(name), "no HELP for {name}");
            assert_eq!(
                kind == "counter",
                name.ends_with("_total"),
                "{name}: {kind}"
            );
            assert!(name.starts_with("courier_"), "{name}");
        }
        assert_eq!(e.types["courier_rpc_latency_seconds"], "histogram");
    }

    #[test]
    fn histograms_count_each_value_in_its_bucket() {
        let text = known().to_prometheus();
        let e = check::check(&text).unwrap();
        let series = |phase: &str, le: &str| {
            e.value(
                &format!(
                    "courier_rpc_latency_seconds_{}",
                    if le.is_empty() { "count" } else { "bucket" }
                ),
                &[("rpc", "echo"), ("side", "served"), ("phase", phase)]
                    .into_iter()
                    .chain((!le.is_empty()).then_some(("le", le)))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or_else(|| panic!("no {phase} {le} in\n{text}"))
        };
        // queue: 0.5 µs, 1.5 µs twice, 30 µs.
        assert_eq!(series("queue", "0.000001"), 1.0);
        assert_eq!(series("queue", "0.000002"), 3.0);
        assert_eq!(series("queue", "0.00002"), 3.0);
        assert_eq!(series("queue", "0.00005"), 4.0);
        assert_eq!(series("queue", "+Inf"), 4.0);
        assert_eq!(series("queue", ""), 4.0);
        // handler: 4 µs twice, 8 µs, 3 ms.
        assert_eq!(series("handler", "0.000005"), 2.0);
        assert_eq!(series("handler", "0.00001"), 3.0);
        assert_eq!(series("handler", "0.002"), 3.0);
        assert_eq!(series("handler", "0.005"), 4.0);
        // respond: 20 s is past 10 s: in +Inf only.
        assert_eq!(series("respond", "10"), 1.0);
        assert_eq!(series("respond", "+Inf"), 2.0);
        // _sum: the mean times the count, in seconds (within the
        // histogram's 1%).
        let sum = e
            .value(
                "courier_rpc_latency_seconds_sum",
                &[("rpc", "echo"), ("side", "called"), ("phase", "round_trip")],
            )
            .unwrap();
        let exact = (10_000.0 + 12_000.0 + 250_000.0) / 1e9;
        assert!((sum - exact).abs() < exact * 0.01, "{sum} vs {exact}");
    }

    #[test]
    fn timing_off_leaves_the_histograms_out_and_empty_tables_their_families() {
        let mut stats = known();
        stats.timing = false;
        for r in &mut stats.rpcs {
            for s in [&mut r.served, &mut r.called].into_iter().flatten() {
                s.phases.clear();
            }
        }
        stats.providers.clear();
        stats.peers.clear();
        let text = stats.to_prometheus();
        let e = check::check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        assert!(
            !e.types.contains_key("courier_rpc_latency_seconds"),
            "{text}"
        );
        assert!(!text.contains("courier_peer_"), "{text}");
        assert!(!text.contains("courier_provider_"), "{text}");
        assert!(e.types.contains_key("courier_rpc_calls_total"));
    }

    #[test]
    fn an_idle_engine_writes_valid_text() {
        let mut stats = known();
        stats.rpcs.clear();
        stats.providers.clear();
        stats.peers.clear();
        let text = stats.to_prometheus();
        let e = check::check(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        assert_eq!(
            e.value("courier_unknown_rpc_requests_total", &[]),
            Some(3.0)
        );
        assert!(!text.contains("courier_rpc_"), "{text}");
    }

    #[test]
    fn nanoseconds_are_written_as_exact_seconds() {
        let text = |ns| {
            let mut s = String::new();
            write_num(&mut s, Num::Nanos(ns));
            s
        };
        assert_eq!(text(0), "0");
        assert_eq!(text(7_379_338), "0.007379338");
        assert_eq!(text(2_500_000_000), "2.5");
        assert_eq!(text(3_000_000_000), "3");
    }

    #[test]
    fn the_checker_finds_broken_text() {
        let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
        assert!(check::check(good).is_ok());
        for bad in [
            "1bad 2\n",
            "a{x=\"1} 2\n",
            "a{x=\"\\t\"} 2\n",
            "a 2 3 4\n",
            "a two\n",
            "# TYPE a_total counter\na_total -1\n",
            "# TYPE b counter\nb 1\n",
            "a 1\nb 1\na 2\n",
            "a{x=\"1\"} 1\na{x=\"1\"} 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "a 1\n# TYPE a gauge\n",
        ] {
            assert!(check::check(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
