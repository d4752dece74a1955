//! Cancel latency per protocol (issue 16): from the moment a caller drops
//! its call future to the moment the server's handler is told.
//!
//! ```sh
//! cargo run --release -p courier-benches --bin cancel_latency -- \
//!     [--protocols tcp,unix,quic,shm,mem] [--iterations 2000] [--warmup 200] \
//!     [--progress-spin-us US] [--json]
//! ```
//!
//! One process holds both engines, so both ends read one clock: the server
//! engine on a tokio runtime of its own (one worker thread), the client
//! engine on another, no progress or RPC thread asked for (each engine's
//! I/O and handlers run on its runtime's worker, as in a `courier serve`
//! and a client). `--progress-spin-us` sets both engines' polling window
//! (`progress_spin_us`; the engine's default, 50 µs, otherwise).
//!
//! Every iteration runs in one task of the client's runtime (the main
//! thread sleeps until they are all done): it calls `wait`, whose handler
//! says that it started (a channel) and then waits for ever; once the task
//! hears that, it reads the clock (t0) and drops the call's future. The
//! engine then sends a `Cancel` frame (from a task it spawns); the
//! server's reader gets it, fires the request's token, and the engine
//! drops the handler's future. Two instants are recorded on the server's
//! side: when a guard held by the handler's future is dropped (`dropped`:
//! where an async handler is told), and when a task the handler spawned,
//! awaiting [`courier::CancelToken::cancelled`], wakes (`token`: where a
//! handler that handed its work to a task is told). Latency = t - t0. The
//! task awaits both (channels) before the next iteration.
//!
//! No tracing subscriber is installed: the engine's `handler cancelled`
//! info line costs nothing here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_benches::EnginePair;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use courier::{Engine, Handle, Mode};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// How long one step may take before the benchmark gives up (a hang guard).
const GUARD: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: cancel_latency [--protocols tcp,unix,quic,shm,mem] \
[--iterations N] [--warmup N] [--progress-spin-us US] [--json]";

#[derive(Debug)]
struct Options {
    protocols: Vec<String>,
    iterations: usize,
    warmup: usize,
    /// Both engines' `progress_spin_us`, if not the default.
    spin_us: Option<u64>,
    json: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        protocols: ["tcp", "unix", "quic", "shm", "mem"]
            .map(String::from)
            .to_vec(),
        iterations: 2000,
        warmup: 200,
        spin_us: None,
        json: false,
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--json" => {
                o.json = true;
                continue;
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            _ => {}
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: bad value '{v}'"))
        };
        match flag.as_str() {
            "--protocols" => {
                o.protocols = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
            }
            "--iterations" => o.iterations = number(&value)?,
            "--warmup" => o.warmup = number(&value)?,
            "--progress-spin-us" => o.spin_us = Some(number(&value)? as u64),
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if o.iterations == 0 || o.protocols.is_empty() {
        return Err(format!(
            "--iterations and --protocols must not be empty\n{USAGE}"
        ));
    }
    Ok(o)
}

fn runtime(side: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("cancel-{side}"))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Sends the instant it is dropped at: the handler's future holds one.
struct ReportDrop(mpsc::UnboundedSender<Instant>);

impl Drop for ReportDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Instant::now());
    }
}

/// What the server's handlers tell the client's task.
#[derive(Debug)]
struct Reports {
    /// A handler started.
    started: mpsc::UnboundedReceiver<()>,
    /// A handler's future was dropped, at.
    dropped: mpsc::UnboundedReceiver<Instant>,
    /// The task awaiting a handler's token woke, at.
    token: mpsc::UnboundedReceiver<Instant>,
}

/// Awaits `rx`'s next value, within the hang guard.
async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    match tokio::time::timeout(GUARD, rx.recv()).await {
        Ok(Some(v)) => v,
        Ok(None) => panic!("{what}: the server's handlers are gone"),
        Err(_) => panic!("{what}: nothing within {GUARD:?}"),
    }
}

/// Both engines of one protocol, each on its own runtime.
struct Pair(EnginePair);

impl std::ops::Deref for Pair {
    type Target = EnginePair;

    fn deref(&self) -> &EnginePair {
        &self.0
    }
}

impl Pair {
    fn finish(self) {
        self.0.finish();
    }

    fn new(protocol: &str, spin_us: Option<u64>) -> courier::Result<(Self, Reports)> {
        let server_rt = runtime("server");
        let client_rt = runtime("client");
        let builder = |mode| {
            let b = Engine::builder(protocol).mode(mode);
            match spin_us {
                Some(us) => b.progress_spin(Duration::from_micros(us)),
                None => b,
            }
        };
        let server = server_rt.block_on(builder(Mode::Server).build())?;
        let (started_tx, started) = mpsc::unbounded_channel();
        let (dropped_tx, dropped) = mpsc::unbounded_channel();
        let (token_tx, token) = mpsc::unbounded_channel();
        server.register("wait", move |handle: Handle, (): ()| {
            let (started_tx, dropped_tx, token_tx) =
                (started_tx.clone(), dropped_tx.clone(), token_tx.clone());
            async move {
                let _report = ReportDrop(dropped_tx);
                let cancel = handle.cancel_token();
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    let _ = token_tx.send(Instant::now());
                });
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
                handle.respond(&()).await
            }
        })?;
        let client = client_rt.block_on(builder(Mode::Client).build())?;
        let pair = Self(EnginePair::connect(server_rt, client_rt, server, client)?);
        Ok((
            pair,
            Reports {
                started,
                dropped,
                token,
            },
        ))
    }

    /// `n` iterations, all in one task of the client's runtime (the main
    /// thread sleeps meanwhile): (dropped - t0, token - t0) of each.
    fn run(&self, n: usize, mut reports: Reports) -> (Vec<(Duration, Duration)>, Reports) {
        let wait = self.client.remote::<(), ()>("wait").on(&self.address);
        let task = self.client_rt.spawn(async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let mut call = Box::pin(wait.call(&()));
                tokio::select! {
                    r = &mut call => panic!("the call to wait ended: {r:?}"),
                    () = next(&mut reports.started, "the handler's start") => {}
                }
                let t0 = Instant::now();
                drop(call);
                let dropped = next(&mut reports.dropped, "the handler's drop").await;
                let token = next(&mut reports.token, "the token").await;
                out.push((
                    dropped.saturating_duration_since(t0),
                    token.saturating_duration_since(t0),
                ));
            }
            (out, reports)
        });
        self.client_rt
            .block_on(task)
            .expect("the client's task panicked")
    }
}

/// One protocol's figures.
struct Row {
    protocol: String,
    dropped: Histogram<u64>,
    token: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, up to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn measure(protocol: &str, o: &Options) -> courier::Result<Row> {
    let (pair, reports) = Pair::new(protocol, o.spin_us)?;
    let (_, reports) = pair.run(o.warmup, reports);
    let (times, _) = pair.run(o.iterations, reports);
    let mut row = Row {
        protocol: protocol.to_owned(),
        dropped: histogram(),
        token: histogram(),
    };
    for (dropped, token) in times {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        row.dropped.saturating_record(ns(dropped));
        row.token.saturating_record(ns(token));
    }
    pair.finish();
    Ok(row)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "protocol", "n", "drop p50", "drop p99", "drop max", "tok p50", "tok p99", "tok max"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<8} {:>6} | {:>9.1} {:>9.1} {:>9.1} | {:>9.1} {:>9.1} {:>9.1}",
            r.protocol,
            r.dropped.len(),
            us(r.dropped.value_at_quantile(0.5)),
            us(r.dropped.value_at_quantile(0.99)),
            us(r.dropped.max()),
            us(r.token.value_at_quantile(0.5)),
            us(r.token.value_at_quantile(0.99)),
            us(r.token.max()),
        );
    }
    s.push_str("(µs from the caller dropping its call to the handler's future dropped / its token's cancelled() returning)\n");
    s
}

fn json(rows: &[Row]) -> String {
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "  {{\"protocol\": \"{}\", \"iterations\": {}",
            r.protocol,
            r.dropped.len()
        );
        for (name, h) in [("dropped", &r.dropped), ("token", &r.token)] {
            let _ = write!(
                s,
                ", \"{name}_p50_us\": {:.2}, \"{name}_p99_us\": {:.2}, \"{name}_max_us\": {:.2}, \"{name}_mean_us\": {:.2}",
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.max()),
                h.mean() / 1000.0
            );
        }
        s.push('}');
        if i + 1 < rows.len() {
            s.push(',');
        }
        s.push('\n');
    }
    s.push_str("]\n");
    s
}

fn main() -> std::process::ExitCode {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut rows = Vec::new();
    for p in &o.protocols {
        eprintln!("cancel_latency: {p}, {} iterations", o.iterations);
        match measure(p, &o) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("cancel_latency: {p}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if o.json {
        print!("{}", json(&rows));
    } else {
        print!("{}", table(&rows));
    }
    std::process::ExitCode::SUCCESS
}
