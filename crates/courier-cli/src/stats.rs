//! `courier stats ADDR`: the statistics of a running service, read through
//! its built-in statistics RPC (`courier serve --stats`), as a table, as
//! JSON or in the Prometheus text format, with advice on its settings.
//!
//! [`Source`] is shared with `courier top`: one client engine, one lookup,
//! and a read that retries while the service answers another reader.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, ValueEnum};
use courier::stats::{Advice, Latency, SideStats, Stats};
use courier::{Address, Engine};

use crate::table::{Align, Table};
use crate::{out, CliResult, Error};

/// What to do when nothing answers: printed after a connection failure.
const HINT: &str = "is a Courier service running there? `courier serve --stats` \
    prints the address to use";

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const STATS_LONG_ABOUT: &str = "Read the statistics of the service at ADDR and \
    print them: per RPC and provider, the requests it served and the calls it made (counts, \
    errors by kind, in flight, bytes, and latency percentiles by phase when it times them), its \
    providers' limits, its open connections, and its bulk transfers.\n\n\
    The service must serve its statistics: `courier serve --stats`, or \
    \"stats\": {\"serve\": true} in an engine's JSON configuration (add \"timing\": true for \
    latencies). Otherwise, or when nothing answers at ADDR within --timeout-ms, this prints \
    why and exits 1.\n\n\
    --format json (or --json) prints the statistics' JSON (schema: docs/observability.md); \
    --format prometheus the Prometheus text format (0.0.4), for a node_exporter textfile \
    collector or a push gateway: there is no HTTP endpoint. --advise adds advice on the \
    service's settings drawn from the figures.";

/// How `courier stats` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Tables for people.
    Table,
    /// The statistics' JSON, indented.
    Json,
    /// The Prometheus text exposition format, version 0.0.4.
    Prometheus,
}

/// How long to wait for the statistics (shared by `stats` and `top`).
#[derive(Debug, Args, Clone, Copy)]
pub(crate) struct StatsTimeout {
    /// Give up after this many milliseconds (connecting, and each read of
    /// the statistics); 0 waits forever.
    #[arg(long = "timeout-ms", value_name = "MS", default_value_t = 5_000)]
    pub(crate) timeout_ms: u64,
}

impl StatsTimeout {
    pub(crate) fn duration(self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples (against `courier serve --stats`):\n  \
        courier stats tcp://127.0.0.1:PORT                      # tables\n  \
        courier stats tcp://127.0.0.1:PORT --advise             # and what to change\n  \
        courier stats tcp://127.0.0.1:PORT --json | jq '.rpcs[] | {name, calls: .served.calls}'\n  \
        courier stats tcp://127.0.0.1:PORT --format prometheus > /var/lib/node_exporter/courier.prom")]
pub(crate) struct StatsArgs {
    /// The service's address, as `courier serve --stats` printed it.
    address: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,

    /// The statistics as JSON: the same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,

    /// Add advice on the service's settings drawn from the figures (with
    /// JSON, an "advice" array next to the statistics; with Prometheus,
    /// comment lines).
    #[arg(long)]
    advise: bool,

    #[command(flatten)]
    timeout: StatsTimeout,

    #[command(flatten)]
    protocol: crate::client::ProtocolArg,
}

/// A service whose statistics are read: a client engine of its protocol
/// and the looked-up address.
#[derive(Debug)]
pub(crate) struct Source {
    engine: Engine,
    address: Address,
    /// The address as the user wrote it, for messages.
    text: String,
    timeout: Option<Duration>,
}

/// `err`, after what was being done and, for a failure to reach the
/// service, what to check.
fn explain(address: &str, err: courier::Error) -> Error {
    use courier::Error as E;
    let inner = match err {
        // The service's own words say what to set.
        E::Remote { rpc, message, .. } if rpc == courier::stats::STATS_RPC => Error::Peer(message),
        E::Transport(_) | E::ConnectTimeout { .. } | E::ConnectionLost { .. } => {
            Error::Peer(format!("{err}; {HINT}"))
        }
        other => Error::Engine(other),
    };
    inner.context(format!("cannot read the statistics of {address}"))
}

/// The error of a read that did not end within `after`.
fn too_slow(address: &str, after: Duration) -> Error {
    Error::Peer(format!(
        "no answer within {} ms; {HINT} (or give it longer: --timeout-ms)",
        after.as_millis()
    ))
    .context(format!("cannot read the statistics of {address}"))
}

impl Source {
    /// A client engine for `address`'s protocols (`pinned`, else those of
    /// the address or set: [`crate::client::client_protocols`]), looked up;
    /// nothing is sent yet. `timeout` bounds the connection and each
    /// [`Source::read`].
    pub(crate) async fn open(
        address: &str,
        pinned: Option<&str>,
        timeout: Option<Duration>,
    ) -> CliResult<Self> {
        let mut builder = crate::client::client_builder(address, pinned)
            .map_err(|e| e.context(format!("cannot read the statistics of '{address}'")))?;
        if let Some(t) = timeout {
            builder = builder.connect_timeout(t).call_timeout(t);
        }
        // An unknown protocol, or a plugin that is not built in: nothing
        // was tried at the address yet.
        let engine = builder.build().await.map_err(|e| {
            Error::from(e).context(format!("cannot read the statistics of {address}"))
        })?;
        let looked_up = match timeout {
            Some(t) => tokio::time::timeout(t, engine.lookup(address))
                .await
                .unwrap_or_else(|_| {
                    Err(courier::Error::ConnectTimeout {
                        address: address.to_owned(),
                        after: t,
                    })
                }),
            None => engine.lookup(address).await,
        };
        match looked_up {
            Ok(found) => Ok(Self {
                engine,
                address: found,
                text: address.to_owned(),
                timeout,
            }),
            Err(e) => {
                engine.finalize().await;
                Err(explain(address, e))
            }
        }
    }

    /// The address, as the user wrote it.
    pub(crate) fn address(&self) -> &str {
        &self.text
    }

    /// Reads the statistics once, within the timeout. While the service
    /// answers another reader (`Busy`), asks again, a little later each
    /// time.
    pub(crate) async fn read(&self) -> CliResult<Stats> {
        let mut pause = Duration::from_millis(5);
        let attempts = async {
            loop {
                match self.address.stats().await {
                    Err(courier::Error::Busy { .. }) => {
                        // A back-off between two requests, not a wait for
                        // an event: the service says when it is free by
                        // answering.
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(100));
                    }
                    other => break other,
                }
            }
        };
        let result = match self.timeout {
            Some(t) => match tokio::time::timeout(t, attempts).await {
                Ok(r) => r,
                Err(_) => return Err(too_slow(&self.text, t)),
            },
            None => attempts.await,
        };
        result.map_err(|e| explain(&self.text, e))
    }

    /// Ends the client engine.
    pub(crate) async fn close(self) {
        self.engine.finalize().await;
    }
}

pub(crate) async fn run(args: StatsArgs) -> CliResult {
    let format = if args.json { Format::Json } else { args.format };
    let source = Source::open(
        &args.address,
        args.protocol.protocol.as_deref(),
        args.timeout.duration(),
    )
    .await?;
    let read = source.read().await;
    source.close().await;
    let stats = read?;
    let advice = args.advise.then(|| stats.advise());
    match format {
        Format::Table => {
            for line in table(&stats) {
                out(line)?;
            }
            if let Some(advice) = &advice {
                out("")?;
                for line in advice_lines(advice) {
                    out(line)?;
                }
            }
            Ok(())
        }
        Format::Json => out(json(&stats, advice.as_deref())?),
        Format::Prometheus => {
            let mut text = stats.to_prometheus();
            if let Some(advice) = &advice {
                text.push_str(&advice_comments(advice));
            }
            crate::out_bytes(text.as_bytes())
        }
    }
}

/// The statistics with their advice next to their own fields.
#[derive(serde::Serialize)]
struct WithAdvice<'a> {
    #[serde(flatten)]
    stats: &'a Stats,
    advice: &'a [Advice],
}

/// The statistics' JSON, indented, in the schema's order of fields, with
/// `"advice": [...]` after them when given.
fn json(stats: &Stats, advice: Option<&[Advice]>) -> CliResult<String> {
    let text = match advice {
        Some(advice) => serde_json::to_string_pretty(&WithAdvice { stats, advice }),
        None => serde_json::to_string_pretty(stats),
    };
    text.map_err(|source| Error::Json {
        what: "the statistics",
        source,
    })
}

/// A duration in milliseconds, for people: `850 ms`, `12.3 s`, `4m 05s`,
/// `2h 03m`.
pub(crate) fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..=59 => format!("{:.1} s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut x = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if x < 1024.0 {
            break;
        }
        x /= 1024.0;
        unit = u;
    }
    format!("{x:.1} {unit}")
}

/// Microseconds for people: one decimal under 100, none above.
pub(crate) fn micros(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// `p50/p99` of a latency, in µs; `-` if not timed.
fn percentiles(latency: Option<&Latency>) -> String {
    latency.map_or_else(
        || "-".to_owned(),
        |l| format!("{}/{}", micros(l.p50_us), micros(l.p99_us)),
    )
}

/// `0`, or `3 (busy 1, failed 2)`.
pub(crate) fn errors(side: &SideStats) -> String {
    let total = side.error_count();
    if total == 0 {
        return "0".to_owned();
    }
    let kinds: Vec<String> = side
        .errors
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    format!("{total} ({})", kinds.join(", "))
}

/// The phases of each side, in the order the engine goes through them.
const SERVED_PHASES: [&str; 3] = ["queue", "handler", "respond"];
const CALLED_PHASES: [&str; 1] = ["round_trip"];

/// One side's table: a row per RPC and provider that has that side.
fn side_table(
    stats: &Stats,
    phases: &[&str],
    pick: impl Fn(&courier::stats::RpcStats) -> Option<&SideStats>,
) -> Option<Table> {
    let mut header = vec![
        "rpc",
        "provider",
        "calls",
        "ok",
        "errors",
        "in flight",
        "bytes in",
        "bytes out",
    ];
    let titles: Vec<String> = phases
        .iter()
        .map(|p| format!("{} p50/p99 µs", p.replace('_', " ")))
        .collect();
    if stats.timing {
        header.extend(titles.iter().map(String::as_str));
    }
    let mut t = Table::new(&header).align(1..header.len(), Align::Right);
    t = t.align([4], Align::Left);
    let mut any = false;
    for r in &stats.rpcs {
        let Some(s) = pick(r) else { continue };
        any = true;
        let mut row = vec![
            r.name.clone(),
            r.provider.to_string(),
            s.calls.to_string(),
            s.ok.to_string(),
            errors(s),
            s.in_flight.to_string(),
            bytes(s.bytes_in),
            bytes(s.bytes_out),
        ];
        if stats.timing {
            row.extend(phases.iter().map(|p| percentiles(s.phase(p))));
        }
        t.row(row);
    }
    any.then_some(t)
}

/// The table format of `courier stats`.
pub(crate) fn table(stats: &Stats) -> Vec<String> {
    let mut lines = vec![format!(
        "Statistics of {} ({}), up {}, timing {}",
        if stats.address.is_empty() {
            "a client engine"
        } else {
            &stats.address
        },
        stats.protocol,
        uptime(stats.uptime_ms),
        if stats.timing { "on" } else { "off" }
    )];
    if !stats.timing {
        lines.push(
            "(latencies are not timed: serve with `courier serve --stats`, or set \
             \"stats\": {\"timing\": true})"
                .to_owned(),
        );
    }
    let mut section = |title: &str, table: Option<Table>, empty: &str| {
        lines.push(String::new());
        match table {
            Some(t) => {
                lines.push(format!("{title}:"));
                lines.extend(t.lines());
            }
            None => lines.push(format!("{title}: {empty}")),
        }
    };
    section(
        "RPCs served",
        side_table(stats, &SERVED_PHASES, |r| r.served.as_ref()),
        "none yet",
    );
    section(
        "RPCs called",
        side_table(stats, &CALLED_PHASES, |r| r.called.as_ref()),
        "none",
    );
    let providers = (!stats.providers.is_empty()).then(|| {
        let mut t = Table::new(&[
            "provider",
            "pool",
            "running",
            "max running",
            "queued",
            "max queued",
            "refused",
            "dropped",
        ])
        .align([0, 2, 3, 4, 5, 6, 7], Align::Right);
        for p in &stats.providers {
            t.row(vec![
                p.provider.to_string(),
                p.pool.clone().unwrap_or_else(|| "-".to_owned()),
                p.running.to_string(),
                p.max_running
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                p.queued.to_string(),
                p.max_queued.to_string(),
                p.refused.to_string(),
                p.dropped.to_string(),
            ]);
        }
        t
    });
    section("Providers with limits", providers, "none");
    let peers = (!stats.peers.is_empty()).then(|| {
        let mut t = Table::new(&[
            "peer",
            "conn",
            "requests",
            "in flight",
            "peak",
            "calls waiting",
            "msgs in/out",
            "bytes in/out",
            "errors sent/recv",
            "limit waits",
        ])
        .align(1..10, Align::Right);
        for p in &stats.peers {
            t.row(vec![
                p.address.clone(),
                p.connection.to_string(),
                p.requests.to_string(),
                p.requests_in_flight.to_string(),
                p.peak_requests_in_flight.to_string(),
                p.calls_in_flight.to_string(),
                format!("{}/{}", p.messages_in, p.messages_out),
                format!("{}/{}", bytes(p.bytes_in), bytes(p.bytes_out)),
                format!("{}/{}", p.errors_sent, p.errors_received),
                p.limit_waits.to_string(),
            ]);
        }
        t
    });
    section("Open connections", peers, "none");
    lines.push(String::new());
    let b = &stats.bulk;
    let mut bulk = format!(
        "Bulk: {} transfers ({} failed), {} pulled, {} pushed",
        b.transfers,
        b.failed,
        bytes(b.bytes_pulled),
        bytes(b.bytes_pushed)
    );
    if b.transfers > 0 {
        let _ = write!(bulk, ", {:.1} MiB/s while transferring", b.mib_per_s);
    }
    if b.payloads_sent + b.payloads_received + b.payloads_refused > 0 {
        let _ = write!(
            bulk,
            "; payloads over the largest message: {} sent, {} received, {} refused",
            b.payloads_sent, b.payloads_received, b.payloads_refused
        );
    }
    if b.regions > 0 {
        let _ = write!(
            bulk,
            "; {} regions exposed ({} responses held for their callers)",
            b.regions, b.held_responses
        );
    }
    lines.push(bulk);
    lines.push(format!(
        "Engine: messages received {}, requests for unknown RPCs {}, parks of the progress loop {}",
        stats.progress.messages_in, stats.unknown_rpc_requests, stats.progress.parks
    ));
    lines
}

/// The advice, for people: a paragraph per piece.
pub(crate) fn advice_lines(advice: &[Advice]) -> Vec<String> {
    if advice.is_empty() {
        return vec!["Advice: nothing stands out.".to_owned()];
    }
    let mut lines = vec!["Advice:".to_owned()];
    for a in advice {
        let severity = serde_json::to_value(a.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", a.severity).to_lowercase());
        lines.push(format!(
            "  [{severity}] {}: {} ({})",
            a.subject, a.finding, a.code
        ));
        lines.push(format!("      setting: {}", a.setting));
    }
    lines
}

/// The advice as comment lines of the Prometheus text format.
fn advice_comments(advice: &[Advice]) -> String {
    let mut text = String::new();
    for line in advice_lines(advice) {
        // A comment is one line: a newline in a finding would end it.
        let _ = writeln!(text, "# {}", line.trim_end().replace('\n', " "));
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An engine over `mem` that times its phases and calls its own `echo`.
    pub(crate) struct Echo {
        engine: Engine,
        me: Address,
    }

    impl Echo {
        pub(crate) async fn start() -> Self {
            let engine = Engine::builder("mem")
                .stats_timing(true)
                .build()
                .await
                .unwrap();
            engine
                .register_raw(
                    "echo",
                    courier::RpcOptions::default(),
                    |h: courier::Handle, p: courier::Bytes| async move { h.respond_raw(&p).await },
                )
                .unwrap();
            let me = engine.lookup(&engine.address().to_string()).await.unwrap();
            Self { engine, me }
        }

        /// Makes `n` more calls of 5 bytes; the statistics then.
        pub(crate) async fn calls(&self, n: u32) -> Stats {
            for _ in 0..n {
                self.engine
                    .remote_raw("echo")
                    .on(&self.me)
                    .call(b"hello")
                    .await
                    .unwrap();
            }
            self.engine.stats()
        }

        pub(crate) async fn stop(self) {
            self.engine.finalize().await;
        }
    }

    /// The statistics of an engine that served and called `echo` `n` times.
    async fn echo_stats(n: u32) -> Stats {
        let echo = Echo::start().await;
        let stats = echo.calls(n).await;
        echo.stop().await;
        stats
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_table_has_a_row_per_side_with_its_phases() {
        let stats = echo_stats(3).await;
        let lines = table(&stats);
        let text = lines.join("\n");
        assert!(lines[0].starts_with("Statistics of mem://"), "{text}");
        assert!(lines[0].ends_with("timing on"), "{text}");
        let served = text.split("RPCs served:").nth(1).unwrap();
        assert!(served.contains("queue p50/p99 µs"), "{text}");
        let row = served
            .lines()
            .find(|l| l.starts_with("| echo "))
            .unwrap_or_else(|| panic!("{text}"));
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(&cells[..6], ["echo", "0", "3", "3", "0", "0"], "{row}");
        assert_eq!(cells[6], "15 B", "{row}");
        let called = text.split("RPCs called:").nth(1).unwrap();
        assert!(called.contains("round trip p50/p99 µs"), "{text}");
        assert!(called.lines().any(|l| l.starts_with("| echo ")), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn json_puts_the_advice_next_to_the_statistics() {
        let stats = echo_stats(1).await;
        let advice = vec![];
        let text = json(&stats, Some(&advice)).unwrap();
        let back = Stats::from_json(&text).unwrap();
        assert_eq!(
            back.rpc("echo", 0).unwrap().served.as_ref().unwrap().calls,
            1
        );
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["advice"], serde_json::json!([]));
        let without: serde_json::Value =
            serde_json::from_str(&json(&stats, None).unwrap()).unwrap();
        assert!(without.get("advice").is_none());
    }

    #[test]
    fn people_read_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(uptime(850), "850 ms");
        assert_eq!(uptime(12_345), "12.3 s");
        assert_eq!(uptime(245_000), "4m 05s");
        assert_eq!(uptime(7_380_000), "2h 03m");
        assert_eq!(micros(3.24), "3.2");
        assert_eq!(micros(1234.5), "1234");
    }
}
