//! Many clients (`courier bench --clients N`, N > 1): N client processes
//! against the one server of a layer, started together, their figures
//! merged.
//!
//! Each client is this executable, re-run as the hidden `courier
//! bench-client`. It connects, warms up, prints [`CLIENT_READY`], then
//! waits for a line `go` on its standard input: that is the start barrier,
//! opened by the parent once every client is ready. It then measures as
//! the client in the parent does (the same loops, the same [`Spec`]) and
//! prints one line, [`CLIENT_RESULT`] followed by its [`Report`] as JSON:
//! its calls, the wall-clock start and the length of its measured loop,
//! and every bucket of its latency histogram.
//!
//! The parent ([`measure()`]) merges the reports ([`merge`]): the calls are
//! summed, the histograms merged (p50, p99, p99.9 of all calls), and the
//! rates are over the span from the first client's start to the last
//! client's end, so RPCs/s = all calls / that span.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use courier::transport::{Address as WireAddr, PluginOptions};
use courier::Bytes;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::measure::{self, figures, histogram, nanos, EngineSink, Figures, Gate, Sample, Spec};
use super::{socket_kind, Layer, SINK_RPC};
use crate::child::{drain, exit_status, spawn_piped, stderr_tail, wait_ready, Ready};
use crate::{out, CliResult, Context, Error};

/// The line a client prints once it is connected and warmed up.
pub(crate) const CLIENT_READY: &str = "Bench client ready";
/// The prefix of the line with a client's [`Report`].
pub(crate) const CLIENT_RESULT: &str = "Bench client result ";
/// The line that opens the start barrier.
const GO: &str = "go";

/// How long a client may take to connect and warm up, beyond a quarter of
/// the time cap (the warm-up's own cap).
const READY_GUARD: Duration = Duration::from_secs(20);
/// How long a client may take to report, beyond twice the time cap.
const RESULT_GUARD: Duration = Duration::from_secs(30);
/// How long a client may take to exit once it has reported.
const EXIT_GUARD: Duration = Duration::from_secs(10);

/// `courier bench-client` (hidden): one client of a many-client measurement.
#[derive(Debug, Args, Clone)]
pub(crate) struct ClientArgs {
    /// What to call: `engine` (the RPC bench.sink), `raw` (the transport
    /// alone) or `socket` (plain sockets).
    #[arg(long, value_enum)]
    pub(crate) layer: Layer,

    /// The protocol (name or alias).
    #[arg(long, value_name = "P")]
    pub(crate) protocol: String,

    /// The server's address, as its peer printed it.
    #[arg(long, value_name = "ADDRESS")]
    pub(crate) address: String,

    /// Payload bytes per call.
    #[arg(long, value_name = "BYTES")]
    pub(crate) size: usize,

    /// Calls kept outstanding.
    #[arg(long = "in-flight", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) in_flight: u32,

    /// Calls measured (unless the time cap comes first).
    #[arg(long, value_name = "N")]
    pub(crate) calls: u64,

    /// Calls made before the barrier, not measured.
    #[arg(long, value_name = "N")]
    pub(crate) warmup: u64,

    /// No measured call starts after this (a warm-up call, after a quarter).
    #[arg(long = "time-cap-ms", value_name = "MS")]
    pub(crate) time_cap_ms: u64,

    /// Polling policy, as `courier bench --progress-spin-us`.
    #[arg(long = "progress-spin-us", value_name = "US")]
    pub(crate) progress_spin_us: u64,

    /// The largest message accepted.
    #[arg(long = "max-message-size", value_name = "BYTES")]
    pub(crate) max_message_size: usize,

    /// Pin the client (its one runtime thread) to this CPU.
    #[arg(long, value_name = "CPU")]
    pub(crate) cpu: Option<usize>,
}

impl ClientArgs {
    fn spec(&self) -> Spec {
        Spec {
            in_flight: self.in_flight as usize,
            calls: self.calls,
            warmup: self.warmup,
            time_cap: Duration::from_millis(self.time_cap_ms),
        }
    }

    /// The arguments of `courier bench-client` that give these options.
    fn to_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "bench-client",
            "--layer",
            self.layer.name(),
            "--protocol",
            &self.protocol,
            "--address",
            &self.address,
        ]
        .map(str::to_owned)
        .into();
        for (flag, value) in [
            ("--size", self.size as u64),
            ("--in-flight", u64::from(self.in_flight)),
            ("--calls", self.calls),
            ("--warmup", self.warmup),
            ("--time-cap-ms", self.time_cap_ms),
            ("--progress-spin-us", self.progress_spin_us),
            ("--max-message-size", self.max_message_size as u64),
        ] {
            a.push(flag.to_owned());
            a.push(value.to_string());
        }
        if let Some(cpu) = self.cpu {
            a.push("--cpu".to_owned());
            a.push(cpu.to_string());
        }
        a
    }
}

/// What a client sends its parent: one line of JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Calls measured.
    pub(crate) calls: u64,
    /// Start of the measured loop, nanoseconds since the Unix epoch.
    pub(crate) started_unix_ns: u64,
    /// From the start of the measured loop to its last reply, nanoseconds.
    pub(crate) elapsed_ns: u64,
    /// The latency histogram: (nanoseconds, count) for every bucket that
    /// holds a call; the value is the highest of its bucket, so recording
    /// it again lands in the same bucket.
    pub(crate) histogram: Vec<(u64, u64)>,
}

impl Report {
    pub(crate) fn of(s: &Sample) -> CliResult<Self> {
        let since_epoch = s.started.duration_since(UNIX_EPOCH).map_err(|_| {
            Error::Unsupported("the wall clock is before 1970: no common clock".into())
        })?;
        Ok(Self {
            calls: s.histogram.len(),
            started_unix_ns: nanos(since_epoch),
            elapsed_ns: nanos(s.elapsed),
            histogram: s
                .histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        })
    }

    /// The sample again, checked: its histogram must hold `calls` calls.
    pub(crate) fn sample(&self) -> CliResult<Sample> {
        let mut h = histogram()?;
        for &(value, count) in &self.histogram {
            h.record_n(value, count).map_err(|e| {
                Error::Peer(format!("a latency of {value} ns is out of range: {e}"))
            })?;
        }
        if h.len() != self.calls {
            return Err(Error::Peer(format!(
                "reported {} calls but a histogram of {}",
                self.calls,
                h.len()
            )));
        }
        Ok(Sample {
            histogram: h,
            elapsed: Duration::from_nanos(self.elapsed_ns),
            started: UNIX_EPOCH + Duration::from_nanos(self.started_unix_ns),
        })
    }
}

/// The figures of several clients measured together: the calls summed,
/// the histograms merged, the rates over the span from the first start to
/// the last end (never shorter than the longest client's own loop).
pub(crate) fn merge(samples: &[Sample], payload: usize) -> CliResult<Figures> {
    let mut all: Histogram<u64> = histogram()?;
    let mut first_start: Option<SystemTime> = None;
    let mut last_end: Option<SystemTime> = None;
    let mut longest = Duration::ZERO;
    for s in samples {
        all.add(&s.histogram)?;
        let end = s.started + s.elapsed;
        first_start = Some(first_start.map_or(s.started, |f| f.min(s.started)));
        last_end = Some(last_end.map_or(end, |l| l.max(end)));
        longest = longest.max(s.elapsed);
    }
    let span = match (first_start, last_end) {
        (Some(first), Some(last)) => last.duration_since(first).unwrap_or(Duration::ZERO),
        _ => Duration::ZERO,
    };
    figures(&all, span.max(longest), payload)
}

// ---------------------------------------------------------------------------
// The child's side: `courier bench-client`.
// ---------------------------------------------------------------------------

/// The start barrier, child side: prints [`CLIENT_READY`], then waits for
/// the parent's `go` (read on a plain thread, which does not keep the
/// process alive at exit).
struct Barrier {
    go: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Barrier {
    /// Starts reading stdin for the `go` line.
    fn new() -> CliResult<Self> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("go-watch".into())
            .spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match std::io::stdin().read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim() == GO => {
                            let _ = tx.send(());
                            return;
                        }
                        Ok(_) => {}
                    }
                }
            })
            .map_err(|e| Error::io("start a thread to read stdin", e))?;
        Ok(Self { go: Some(rx) })
    }
}

impl Gate for Barrier {
    async fn open(&mut self) -> CliResult {
        let go = self
            .go
            .take()
            .ok_or_else(|| Error::Peer("the start barrier was opened twice".into()))?;
        out(CLIENT_READY)?;
        go.await
            .map_err(|_| Error::Peer(format!("stdin closed before the '{GO}' line")))
    }
}

/// `courier bench-client`.
pub(crate) async fn run(args: ClientArgs) -> CliResult {
    if let Some(cpu) = args.cpu {
        super::pin_current_thread(cpu)?;
    }
    let mut gate = Barrier::new()?;
    let spec = args.spec();
    let payload = Bytes::from(vec![0xa5u8; args.size]);
    let polling = args.progress_spin_us > 0;
    let sample = match args.layer {
        Layer::Engine | Layer::Counted | Layer::Timed => {
            let proto = super::Proto {
                name: args.protocol.clone(),
                plugin: String::new(),
                socket: None,
                in_process: false,
                set: args.protocol.contains(','),
            };
            let engine = super::client_builder(&proto)
                .progress_spin(Duration::from_micros(args.progress_spin_us))
                .stats(args.layer == Layer::Counted)
                .stats_timing(args.layer == Layer::Timed)
                .max_message_size(args.max_message_size)
                .build()
                .await
                .context(|| "client engine")?;
            let measured = async {
                let server = engine
                    .lookup(&args.address)
                    .await
                    .context(|| "lookup of the engine peer")?;
                let sink = EngineSink::new(&engine, &server, SINK_RPC);
                measure::sample(&sink, &payload, &spec, &mut gate).await
            }
            .await;
            engine.finalize().await;
            measured?
        }
        Layer::Raw => {
            let registry = courier::default_registry()?;
            let (_, transport) =
                registry.create(&args.protocol, &PluginOptions::new(), args.max_message_size)?;
            let addr: WireAddr = args.address.parse().context(|| "the raw peer's address")?;
            measure::raw_sample(&transport, &addr, &payload, &spec, polling, &mut gate).await?
        }
        Layer::Socket => {
            let registry = courier::default_registry()?;
            let entry = registry.resolve(&args.protocol)?;
            let kind = socket_kind(&entry).ok_or_else(|| {
                Error::Unsupported(format!(
                    "protocol '{}' (plugin '{}') has no plain-socket floor",
                    entry.name, entry.plugin
                ))
            })?;
            measure::socket_sample(kind, &args.address, &payload, &spec, polling, &mut gate).await?
        }
    };
    let report = Report::of(&sample)?;
    let line = serde_json::to_string(&report).map_err(|source| Error::Json {
        what: "the client's results",
        source,
    })?;
    out(format_args!("{CLIENT_RESULT}{line}"))
}

// ---------------------------------------------------------------------------
// The parent's side.
// ---------------------------------------------------------------------------

/// One measurement with many clients, as the parent sees it.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// What every client is given.
    pub(crate) client: ClientArgs,
    /// How many clients.
    pub(crate) clients: u32,
    /// `-v` given to the clients.
    pub(crate) verbose: u8,
}

/// Runs `load.clients` client processes against one server and merges
/// their figures; returns them with each client's calls. A client that
/// fails, exits early or says nothing in time makes this an error naming
/// it, with its last stderr lines; every client is killed then.
pub(crate) async fn measure(load: &Load) -> CliResult<(Figures, Vec<u64>)> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find the courier executable", e))?;
    let args = load.client.to_args();
    let mut commands = Vec::new();
    for _ in 0..load.clients {
        let mut cmd = Command::new(&exe);
        cmd.args(&args);
        for _ in 0..load.verbose {
            cmd.arg("-v");
        }
        commands.push(cmd);
    }
    let cap = Duration::from_millis(load.client.time_cap_ms);
    let guards = Guards {
        ready: READY_GUARD + cap / 4,
        result: RESULT_GUARD + cap * 2,
    };
    let samples = run_clients(commands, guards).await?;
    let figures = merge(&samples, load.client.size)?;
    Ok((figures, samples.iter().map(|s| s.histogram.len()).collect()))
}

/// How long the clients get, from the moment each stage starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guards {
    /// To print their ready line.
    pub(crate) ready: Duration,
    /// To report, once they have been told to go.
    pub(crate) result: Duration,
}

/// Starts the clients (`commands`, one per client), waits until all are
/// ready, tells them all to go, and reads their samples.
pub(crate) async fn run_clients(commands: Vec<Command>, guards: Guards) -> CliResult<Vec<Sample>> {
    let total = commands.len();
    let mut procs: Vec<ClientProc> = Vec::with_capacity(total);
    let mut outcome = Ok(Vec::new());
    for (i, cmd) in commands.into_iter().enumerate() {
        match ClientProc::spawn(cmd, format!("bench client {} of {total}", i + 1)) {
            Ok(p) => procs.push(p),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    if outcome.is_ok() {
        outcome = drive(&mut procs, guards).await;
    }
    if outcome.is_err() {
        for p in &mut procs {
            p.kill().await;
        }
    }
    outcome
}

async fn drive(procs: &mut [ClientProc], guards: Guards) -> CliResult<Vec<Sample>> {
    let ready_by = Instant::now() + guards.ready;
    for p in procs.iter_mut() {
        p.wait_line(CLIENT_READY, ready_by, "its ready line")
            .await?;
    }
    for p in procs.iter_mut() {
        p.go().await?;
    }
    let results_by = Instant::now() + guards.result;
    let mut samples = Vec::with_capacity(procs.len());
    for p in procs.iter_mut() {
        let line = p
            .wait_line(CLIENT_RESULT, results_by, "its results")
            .await?;
        let sample = serde_json::from_str::<Report>(&line)
            .map_err(|e| Error::Peer(format!("{e}")))
            .and_then(|r| r.sample());
        match sample {
            Ok(s) => samples.push(s),
            Err(e) => {
                let e = e.context(format!("{} sent malformed results", p.what));
                return Err(p.fail(e).await);
            }
        }
    }
    for p in procs.iter_mut() {
        p.finish().await?;
    }
    Ok(samples)
}

/// A `courier bench-client` child. Dropping it kills the child.
struct ClientProc {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<Vec<String>>>,
    done: bool,
}

impl ClientProc {
    fn spawn(cmd: Command, what: String) -> CliResult<Self> {
        let mut child = spawn_piped(cmd, true, &what)?;
        let what = match child.id() {
            Some(pid) => format!("{what} (pid {pid})"),
            None => what,
        };
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.start_kill();
            return Err(Error::Peer(format!("the pipes of {what} are missing")));
        };
        let stderr = drain(BufReader::new(stderr).lines(), format!("{what} stderr"));
        Ok(Self {
            what,
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            stderr: Some(stderr),
            done: false,
        })
    }

    /// Reads stdout until a line starting with `prefix` (returns the rest
    /// of it), by `deadline`.
    async fn wait_line(
        &mut self,
        prefix: &str,
        deadline: Instant,
        what: &str,
    ) -> CliResult<String> {
        let guard = deadline.saturating_duration_since(Instant::now());
        let tag = format!("{} stdout", self.what);
        let problem = match wait_ready(&mut self.stdout, prefix, &tag, guard).await {
            Ready::At(rest) => return Ok(rest),
            Ready::Ended => {
                let status = exit_status(&mut self.child, EXIT_GUARD).await;
                self.done = true;
                Error::Peer(format!(
                    "{} stopped before printing {what} ({status})",
                    self.what
                ))
            }
            Ready::Failed(e) => Error::io(format!("read the output of {}", self.what), e),
            Ready::Silent => Error::Peer(format!(
                "{} printed no {what} within {} s",
                self.what,
                guard.as_secs()
            )),
        };
        Err(self.fail(problem).await)
    }

    /// Opens the start barrier for this client.
    async fn go(&mut self) -> CliResult {
        let written = match self.stdin.as_mut() {
            Some(stdin) => {
                let line = format!("{GO}\n");
                match stdin.write_all(line.as_bytes()).await {
                    Ok(()) => stdin.flush().await,
                    Err(e) => Err(e),
                }
            }
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = Error::io(format!("tell {} to go", self.what), e);
                Err(self.fail(e).await)
            }
        }
    }

    /// Waits for the client to exit 0 after its results.
    async fn finish(&mut self) -> CliResult {
        drop(self.stdin.take());
        let problem = match tokio::time::timeout(EXIT_GUARD, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                self.done = true;
                return Ok(());
            }
            Ok(Ok(status)) => {
                self.done = true;
                Error::Peer(format!("{} {status}", self.what))
            }
            Ok(Err(e)) => Error::io(format!("wait for {}", self.what), e),
            Err(_) => Error::Peer(format!(
                "{} did not exit within {} s of reporting",
                self.what,
                EXIT_GUARD.as_secs()
            )),
        };
        Err(self.fail(problem).await)
    }

    /// Kills the client (unless it has exited) and adds its last stderr
    /// lines to `problem`.
    async fn fail(&mut self, problem: Error) -> Error {
        self.kill().await;
        let tail = match self.stderr.take() {
            Some(t) => stderr_tail(t).await,
            None => None,
        };
        problem.with_stderr(tail)
    }

    async fn kill(&mut self) {
        if !self.done {
            if let Err(e) = self.child.kill().await {
                tracing::warn!("cannot kill {}: {e}", self.what);
            }
            self.done = true;
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample(latencies_us: &[u64], start_ms: u64, elapsed_ms: u64) -> Sample {
        let mut h = histogram().unwrap();
        for us in latencies_us {
            h.record(us * 1000).unwrap();
        }
        Sample {
            histogram: h,
            elapsed: Duration::from_millis(elapsed_ms),
            started: UNIX_EPOCH
                + Duration::from_secs(1_700_000_000)
                + Duration::from_millis(start_ms),
        }
    }

    #[test]
    fn merge_sums_calls_over_the_common_span() {
        // Client A: 100 calls of 10 µs from t=0 to t=1 s; client B: 300
        // calls of 30 µs from t=0.5 s to t=2 s. Span 2 s, 400 calls.
        let a = sample(&[10; 100], 0, 1000);
        let b = sample(&[30; 300], 500, 1500);
        let f = merge(&[a, b], 1 << 20).unwrap();
        assert_eq!(f.calls, 400);
        assert!((f.elapsed_s - 2.0).abs() < 1e-9, "{f:?}");
        assert!((f.rpcs_per_s - 200.0).abs() < 1e-9, "{f:?}");
        assert!((f.mib_per_s - 200.0).abs() < 1e-9, "{f:?}");
        // A quarter of the calls took 10 µs, the rest 30 µs.
        assert!((f.p50_us - 30.0).abs() < 0.1, "{f:?}");
        assert!((f.p99_us - 30.0).abs() < 0.1, "{f:?}");
        let low = merge(&[sample(&[10; 300], 0, 10), sample(&[30; 100], 0, 10)], 0).unwrap();
        assert!((low.p50_us - 10.0).abs() < 0.1, "{low:?}");
        assert!((low.rpcs_per_s - 40_000.0).abs() < 1e-6, "{low:?}");
    }

    #[test]
    fn merge_never_takes_a_span_shorter_than_a_client() {
        // Clocks that disagree (a start after another's end) cannot make
        // the span shorter than the longest loop.
        let a = sample(&[5; 10], 0, 1000);
        let b = sample(&[5; 10], 0, 4000);
        let f = merge(&[a, b], 0).unwrap();
        assert!((f.elapsed_s - 4.0).abs() < 1e-9, "{f:?}");
        assert!((f.rpcs_per_s - 5.0).abs() < 1e-9, "{f:?}");
        assert!(merge(&[], 0).is_err());
    }

    #[test]
    fn reports_round_trip_through_json() {
        let s = sample(&[7, 7, 8, 1200, 65_000], 3, 250);
        let r = Report::of(&s).unwrap();
        assert_eq!(r.calls, 5);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let s2 = back.sample().unwrap();
        assert_eq!(s2.histogram, s.histogram);
        assert_eq!(s2.elapsed, s.elapsed);
        assert_eq!(s2.started, s.started);
        let mut bad = r.clone();
        bad.calls = 6;
        assert!(bad.sample().is_err());
    }

    #[test]
    fn client_args_parse_back() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            c: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            BenchClient(ClientArgs),
        }
        let a = ClientArgs {
            layer: Layer::Raw,
            protocol: "tcp".into(),
            address: "tcp://127.0.0.1:4000".into(),
            size: 64,
            in_flight: 4,
            calls: 100,
            warmup: 10,
            time_cap_ms: 1000,
            progress_spin_us: 50,
            max_message_size: 1 << 20,
            cpu: Some(0),
        };
        let argv = std::iter::once("courier".to_owned()).chain(a.to_args());
        let Sub::BenchClient(b) = Cli::try_parse_from(argv).unwrap().c;
        assert_eq!(b.to_args(), a.to_args());
        assert_eq!(b.spec(), a.spec());
    }

    #[cfg(unix)]
    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[cfg(unix)]
    const GUARDS: Guards = Guards {
        ready: Duration::from_secs(60),
        result: Duration::from_secs(60),
    };

    /// Stand-in clients (shell scripts): each waits for `go` before it
    /// reports, so the barrier must open for the test to end.
    #[cfg(unix)]
    #[tokio::test(flavor = "current_thread")]
    async fn the_parent_opens_the_barrier_and_merges_the_reports() {
        let report = |calls: u64, start_ns: u64| {
            let r = Report {
                calls,
                started_unix_ns: start_ns,
                elapsed_ns: 1_000_000_000,
                histogram: vec![(10_007, calls)],
            };
            serde_json::to_string(&r).unwrap()
        };
        let script = |json: String| {
            sh(&format!(
                "echo '{CLIENT_READY}'; read line; [ \"$line\" = go ] || exit 9; \
                 echo '{CLIENT_RESULT}{json}'"
            ))
        };
        let commands = vec![
            script(report(100, 1_000_000_000)),
            script(report(200, 1_500_000_000)),
            script(report(300, 2_000_000_000)),
        ];
        let samples = run_clients(commands, GUARDS).await.unwrap();
        let calls: Vec<u64> = samples.iter().map(|s| s.histogram.len()).collect();
        assert_eq!(calls, [100, 200, 300]);
        let f = merge(&samples, 0).unwrap();
        assert_eq!(f.calls, 600);
        // From 1 s to 3 s.
        assert!((f.rpcs_per_s - 300.0).abs() < 1e-9, "{f:?}");
    }

    #[cfg(unix)]
    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_fails_is_named_with_its_stderr() {
        let good = format!("echo '{CLIENT_READY}'; read line; exit 0");
        // Fails before it is ready.
        let commands = vec![sh(&good), sh("echo 'cannot connect: refused' >&2; exit 3")];
        let e = run_clients(commands, GUARDS).await.unwrap_err().to_string();
        assert!(e.contains("bench client 2 of 2 (pid "), "{e}");
        assert!(e.contains("before printing its ready line"), "{e}");
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("cannot connect: refused"), "{e}");
        // Ready, then gone without results.
        let commands = vec![sh(&format!(
            "echo '{CLIENT_READY}'; read line; echo 'the server went away' >&2; exit 1"
        ))];
        let e = run_clients(commands, GUARDS).await.unwrap_err().to_string();
        assert!(e.contains("bench client 1 of 1"), "{e}");
        assert!(e.contains("before printing its results"), "{e}");
        assert!(e.contains("the server went away"), "{e}");
        // Results that do not add up.
        let commands = vec![sh(&format!(
            "echo '{CLIENT_READY}'; read line; \
             echo '{CLIENT_RESULT}{{\"calls\":5,\"started_unix_ns\":1,\"elapsed_ns\":1,\"histogram\":[[100,4]]}}'"
        ))];
        let e = run_clients(commands, GUARDS).await.unwrap_err().to_string();
        assert!(e.contains("sent malformed results"), "{e}");
        assert!(e.contains("reported 5 calls but a histogram of 4"), "{e}");
    }
}
