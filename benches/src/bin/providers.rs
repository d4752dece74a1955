//! Providers under load (issue 16): the latency of a small provider B
//! while another provider A of the same server is saturated, with and
//! without A's limits and pool.
//!
//! ```sh
//! cargo run --release -p courier-benches --bin providers -- \
//!     [--modes idle,shared,limits,pool,pool+limits] [--runs 3] [--calls 5000] \
//!     [--warmup 500] [--in-flight 64] [--work spin|sleep] [--work-us 1000] \
//!     [--pool-threads 1] [--max-running 1] [--max-queued 16] \
//!     [--busy-backoff-us 1000] [--size 64] [--loader-spin-us 0] \
//!     [--server-spin-us US] [--measure-spin-us US] [--max-seconds 10]
//! ```
//!
//! One server engine over tcp on 127.0.0.1, on a runtime of one worker
//! thread (its progress loop: handlers without a pool run there, as with
//! Margo's defaults). Provider 1 ("A") answers after `--work-us` of work:
//! a busy loop (`spin`, a computing handler) or a blocking sleep (`sleep`,
//! a handler that blocks its thread on I/O). Provider 2 ("B") echoes
//! `--size` bytes.
//!
//! A loading client (its own engine and runtime) keeps `--in-flight` calls
//! to A outstanding; a call refused with `Busy` is counted and sent again
//! after `--busy-backoff-us` (a client told "busy" backs off). Its engine
//! polls before parking for `--loader-spin-us` (default 0: it parks at
//! once; with the engine's default, a client whose calls wait keeps its
//! runtime polling, and a load generator that always has calls waiting
//! would keep one of the two cores of the project's machines busy
//! polling, which is not what is measured here). A measuring
//! client (its own engine and runtime) makes `--calls` sequential calls to
//! B (or as many as fit in `--max-seconds`), after `--warmup`, and records
//! each call's latency. The server and the measuring client poll before
//! parking as the engine does by default, unless `--server-spin-us` and
//! `--measure-spin-us` say otherwise.
//!
//! Modes:
//! * `idle`: nobody calls A (B's reference latency);
//! * `shared`: A loaded, no limits, no pool (its handlers run on the
//!   server's one thread, where B's run);
//! * `limits`: A loaded with `max_running`/`max_queued`, no pool;
//! * `pool`: A loaded, on a pool of `--pool-threads` threads, no limits;
//! * `pool+limits`: both.
//!
//! Every mode builds fresh engines; the modes are interleaved run by run,
//! so that the machine's noise spreads over all of them. The last table
//! gives, per mode, the median over runs of B's p50 and p99 and its p99
//! over the idle p99's median.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::{Engine, Error, Handle, RpcOptions};
use hdrhistogram::Histogram;
use tokio::runtime::Runtime;

const A: u16 = 1;
const B: u16 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idle,
    Shared,
    Limits,
    Pool,
    PoolLimits,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Shared => "shared",
            Self::Limits => "limits",
            Self::Pool => "pool",
            Self::PoolLimits => "pool+limits",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        [
            Self::Idle,
            Self::Shared,
            Self::Limits,
            Self::Pool,
            Self::PoolLimits,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("--modes: unknown mode '{s}'"))
    }

    fn loaded(self) -> bool {
        self != Self::Idle
    }

    fn limits(self) -> bool {
        matches!(self, Self::Limits | Self::PoolLimits)
    }

    fn pool(self) -> bool {
        matches!(self, Self::Pool | Self::PoolLimits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Spin,
    Sleep,
}

#[derive(Debug, Clone)]
struct Options {
    modes: Vec<Mode>,
    runs: usize,
    calls: usize,
    warmup: usize,
    in_flight: usize,
    work: Work,
    work_us: u64,
    pool_threads: usize,
    max_running: usize,
    max_queued: usize,
    busy_backoff_us: u64,
    size: usize,
    loader_spin_us: u64,
    server_spin_us: Option<u64>,
    measure_spin_us: Option<u64>,
    max_seconds: u64,
}

const USAGE: &str = "usage: providers [--modes idle,shared,limits,pool,pool+limits] [--runs N] \
[--calls N] [--warmup N] [--in-flight N] [--work spin|sleep] [--work-us US] [--pool-threads N] \
[--max-running N] [--max-queued N] [--busy-backoff-us US] [--size BYTES] [--loader-spin-us US] \
[--server-spin-us US] [--measure-spin-us US] [--max-seconds S]";

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{flag}: bad value '{v}'"))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        modes: vec![
            Mode::Idle,
            Mode::Shared,
            Mode::Limits,
            Mode::Pool,
            Mode::PoolLimits,
        ],
        runs: 3,
        calls: 5000,
        warmup: 500,
        in_flight: 64,
        work: Work::Spin,
        work_us: 1000,
        pool_threads: 1,
        max_running: 1,
        max_queued: 16,
        busy_backoff_us: 1000,
        size: 64,
        loader_spin_us: 0,
        server_spin_us: None,
        measure_spin_us: None,
        max_seconds: 10,
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--modes" => {
                o.modes = value
                    .split(',')
                    .map(Mode::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--runs" => o.runs = number(&flag, &value)?,
            "--calls" => o.calls = number(&flag, &value)?,
            "--warmup" => o.warmup = number(&flag, &value)?,
            "--in-flight" => o.in_flight = number(&flag, &value)?,
            "--work" => {
                o.work = match value.as_str() {
                    "spin" => Work::Spin,
                    "sleep" => Work::Sleep,
                    _ => return Err(format!("--work: '{value}' is neither spin nor sleep")),
                }
            }
            "--work-us" => o.work_us = number(&flag, &value)?,
            "--pool-threads" => o.pool_threads = number(&flag, &value)?,
            "--max-running" => o.max_running = number(&flag, &value)?,
            "--max-queued" => o.max_queued = number(&flag, &value)?,
            "--busy-backoff-us" => o.busy_backoff_us = number(&flag, &value)?,
            "--size" => o.size = number(&flag, &value)?,
            "--loader-spin-us" => o.loader_spin_us = number(&flag, &value)?,
            "--server-spin-us" => o.server_spin_us = Some(number(&flag, &value)?),
            "--measure-spin-us" => o.measure_spin_us = Some(number(&flag, &value)?),
            "--max-seconds" => o.max_seconds = number(&flag, &value)?,
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if o.calls == 0 || o.runs == 0 || o.in_flight == 0 || o.modes.is_empty() {
        return Err("--calls, --runs, --in-flight and --modes must be positive".to_owned());
    }
    Ok(o)
}

/// A runtime of one worker thread.
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// `d` of work on this thread: computing, or blocked.
fn work(kind: Work, d: Duration) {
    match kind {
        Work::Spin => {
            let end = Instant::now() + d;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        Work::Sleep => std::thread::sleep(d),
    }
}

/// The server's configuration for `mode`.
fn server_config(mode: Mode, o: &Options) -> String {
    let mut provider = Vec::new();
    if mode.limits() {
        provider.push(format!(
            r#""max_running": {}, "max_queued": {}"#,
            o.max_running, o.max_queued
        ));
    }
    if mode.pool() {
        provider.push(r#""pool": "a""#.to_owned());
    }
    let pools = if mode.pool() {
        format!(r#", "pools": {{"a": {{"threads": {}}}}}"#, o.pool_threads)
    } else {
        String::new()
    };
    format!(
        r#"{{"listen": "tcp://127.0.0.1:0", "providers": {{"{A}": {{{}}}}}{pools}}}"#,
        provider.join(", ")
    )
}

/// What one run of one mode measured.
#[derive(Debug, Clone)]
struct Row {
    mode: Mode,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    a_ok_per_s: f64,
    a_busy_per_s: f64,
    calls: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    busy: AtomicU64,
}

fn run_mode(mode: Mode, o: &Options) -> Row {
    let server_rt = runtime("bench-server");
    let load_rt = runtime("bench-load");
    let measure_rt = runtime("bench-measure");
    let mut builder = Engine::builder("tcp").config_json(&server_config(mode, o));
    if let Some(us) = o.server_spin_us {
        builder = builder.progress_spin(Duration::from_micros(us));
    }
    let server = server_rt
        .block_on(builder.build())
        .expect("the server engine");
    let (kind, d) = (o.work, Duration::from_micros(o.work_us));
    server
        .register_with(
            "work",
            RpcOptions::provider(A),
            move |h: Handle, x: u64| async move {
                work(kind, d);
                h.respond(&x).await
            },
        )
        .expect("register A");
    server
        .register_raw(
            "echo",
            RpcOptions::provider(B),
            |h: Handle, payload| async move { h.respond_raw(&payload).await },
        )
        .expect("register B");
    let at = server.address().to_string();

    let connect = |rt: &Runtime, spin: Option<Duration>| {
        let at = at.clone();
        rt.block_on(async move {
            let mut builder = Engine::builder("tcp").client();
            if let Some(spin) = spin {
                builder = builder.progress_spin(spin);
            }
            let client = builder.build().await?;
            let address = client.lookup(&at).await?;
            Ok::<_, Error>((client, address))
        })
        .expect("a client engine")
    };
    let loader_spin = Duration::from_micros(o.loader_spin_us);
    let (loader, a_address) = connect(&load_rt, Some(loader_spin));
    let measure_spin = o.measure_spin_us.map(Duration::from_micros);
    let (measurer, b_address) = connect(&measure_rt, measure_spin);

    // The load: `in_flight` callers of A, each backing off after Busy.
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut load_tasks = Vec::new();
    if mode.loaded() {
        let a = loader.remote::<u64, u64>("work").on_provider(&a_address, A);
        let backoff = Duration::from_micros(o.busy_backoff_us);
        for t in 0..o.in_flight as u64 {
            let (a, stop, counters) = (a.clone(), stop.clone(), counters.clone());
            load_tasks.push(load_rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match a.call(&t).await {
                        Ok(x) => {
                            assert_eq!(x, t);
                            counters.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Busy { .. }) => {
                            counters.busy.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(backoff).await;
                        }
                        Err(e) => panic!("a call to A failed: {e}"),
                    }
                }
            }));
        }
        // Saturated: A has answered (or refused) a first round of calls.
        let first = o.in_flight as u64;
        while counters.ok.load(Ordering::Relaxed) + counters.busy.load(Ordering::Relaxed) < first {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // The measure: sequential calls to B.
    let b = measurer.remote_raw("echo").on_provider(&b_address, B);
    let payload = vec![7u8; o.size];
    let (calls, warmup) = (o.calls, o.warmup);
    let budget = Duration::from_secs(o.max_seconds);
    let (hist, elapsed, ok, busy) = measure_rt.block_on({
        let counters = counters.clone();
        async move {
            for _ in 0..warmup {
                b.call(&payload).await.expect("B's warm-up call");
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let (ok0, busy0) = (
                counters.ok.load(Ordering::Relaxed),
                counters.busy.load(Ordering::Relaxed),
            );
            let start = Instant::now();
            for _ in 0..calls {
                if start.elapsed() > budget {
                    break;
                }
                let t = Instant::now();
                let back = b.call(&payload).await.expect("B's call");
                let took = t.elapsed();
                assert_eq!(back.len(), payload.len());
                let _ = hist.record(took.as_nanos().clamp(1, 60_000_000_000) as u64);
            }
            let elapsed = start.elapsed();
            (
                hist,
                elapsed,
                counters.ok.load(Ordering::Relaxed) - ok0,
                counters.busy.load(Ordering::Relaxed) - busy0,
            )
        }
    });

    stop.store(true, Ordering::Relaxed);
    load_rt.block_on(async move {
        for t in load_tasks {
            t.await.expect("a loading task");
        }
    });
    measure_rt.block_on(measurer.finalize());
    load_rt.block_on(loader.finalize());
    server_rt.block_on(server.finalize());
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1e3;
    let secs = elapsed.as_secs_f64();
    Row {
        mode,
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: hist.max() as f64 / 1e3,
        a_ok_per_s: ok as f64 / secs,
        a_busy_per_s: busy as f64 / secs,
        calls: hist.len(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "providers: A = {} µs of {:?} per call, {} in flight, Busy backoff {} µs, loader spin {} µs, server spin {}, measure spin {}; \
         limits: max_running {}, max_queued {}; pool: {} thread(s); B = {} B echo, {} calls \
         after {} warm-up; {} run(s); loadavg {}",
        o.work_us,
        o.work,
        o.in_flight,
        o.busy_backoff_us,
        o.loader_spin_us,
        o.server_spin_us
            .map_or_else(|| "default".to_owned(), |us| format!("{us} µs")),
        o.measure_spin_us
            .map_or_else(|| "default".to_owned(), |us| format!("{us} µs")),
        o.max_running,
        o.max_queued,
        o.pool_threads,
        o.size,
        o.calls,
        o.warmup,
        o.runs,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<4} {:<12} {:>7} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "run",
        "mode",
        "B calls",
        "B p50 µs",
        "B p99 µs",
        "B p99.9 µs",
        "B max µs",
        "A ok/s",
        "A busy/s"
    );
    let mut rows = Vec::new();
    for run in 1..=o.runs {
        for &mode in &o.modes {
            let r = run_mode(mode, &o);
            println!(
                "{:<4} {:<12} {:>7} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>10.0} {:>10.0}",
                run,
                mode.name(),
                r.calls,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.max_us,
                r.a_ok_per_s,
                r.a_busy_per_s
            );
            rows.push(r);
        }
    }
    let of =
        |m: Mode, f: fn(&Row) -> f64| median(rows.iter().filter(|r| r.mode == m).map(f).collect());
    let idle_p99 = of(Mode::Idle, |r| r.p99_us);
    println!();
    println!(
        "{:<12} {:>13} {:>13} {:>14} {:>12}  within 2x",
        "mode", "B p50 (med)", "B p99 (med)", "B p99 range", "p99 / idle"
    );
    for &mode in &o.modes {
        let p99s: Vec<f64> = rows
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| r.p99_us)
            .collect();
        let lo = p99s.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p99s.iter().copied().fold(0.0, f64::max);
        let p99 = of(mode, |r| r.p99_us);
        let ratio = p99 / idle_p99;
        println!(
            "{:<12} {:>13.1} {:>13.1} {:>14} {:>12.2}  {}",
            mode.name(),
            of(mode, |r| r.p50_us),
            p99,
            format!("{lo:.0}-{hi:.0}"),
            ratio,
            if ratio.is_finite() && ratio <= 2.0 {
                "yes"
            } else {
                "no"
            }
        );
    }
}
