//! Courier against tonic and tarpc, in the shape of `courier bench`: the
//! 64 B "sink" RPC (64-byte request, empty response), 1 and 32 calls in
//! flight, the server in a child process pinned to one CPU, the client (this
//! process) on another, current-thread tokio runtimes on both sides. The
//! measurement loop, the figures, their spreads over runs and the tables
//! are `courier bench`'s own (`courier_cli::bench`).
//!
//! Not a member of the Courier workspace (CI never builds it); run by hand:
//!
//! ```sh
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- compare
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- server tonic --port 50051 --cpu 1
//! cargo run --release --manifest-path benches/peers/Cargo.toml -- client tonic --address 127.0.0.1:50051 --cpu 0
//! ```

mod systems;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
// The measurement and report code of `courier bench`.
use courier_cli::bench::{
    format_rate, format_us, measure, pin_current_thread, Align, Figures, Machine, Spec, Spinner,
    Summary, Table,
};
use systems::{Client, ServerArgs, System, READY};

const USAGE: &str = "\
usage:
  courier-peer-bench compare [--systems courier-tcp,tonic,tarpc] [--in-flight 1,32]
                             [--spin-us 50,0] [--runs 3] [--warmup 2000] [--calls 20000]
                             [--calls-per-task 2000] [--size 64] [--client-cpu 0]
                             [--server-cpu 1] [--poll-others]
  courier-peer-bench server <courier-tcp|tonic|tarpc> [--port 0] [--cpu N] [--spin-us 50] [--poll]
  courier-peer-bench client <courier-tcp|tonic|tarpc> --address A [--in-flight 1,32]
                            [--spin-us 50] [--cpu N] [--poll] [--warmup 2000] [--calls 20000]
                            [--calls-per-task 2000] [--size 64]

compare starts each server itself (this executable, `server ...`, in a child
process on --server-cpu), measures it from this process (on --client-cpu)
and prints markdown tables: median (min..max) over --runs runs, each run
measuring every system in turn. Calls measured at N in flight:
max(--calls, N x --calls-per-task), after --warmup calls at the same N.
--spin-us: Courier's progress_spin_us, one table per value (both engines).
--poll-others: also measure tonic and tarpc with both runtimes kept polling
(a task yielding in a loop, as `courier bench` does for its raw floors).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => server_main(&args[1..]),
        Some("client") => client_main(&args[1..]),
        Some("compare") => compare_main(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("a subcommand is needed\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("courier-peer-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// arguments
// ---------------------------------------------------------------------------

/// `--name value` pairs and `--flag`s after an optional positional.
struct Opts {
    positional: Option<String>,
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Result<Self, String> {
        let mut o = Self {
            positional: None,
            values: BTreeMap::new(),
            flags: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if let Some((k, v)) = name.split_once('=') {
                    o.values.insert(k.to_owned(), v.to_owned());
                } else if flags.contains(&name) {
                    o.flags.push(name.to_owned());
                } else {
                    let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    o.values.insert(name.to_owned(), v.clone());
                }
            } else if o.positional.is_none() {
                o.positional = Some(a.clone());
            } else {
                return Err(format!("unexpected argument '{a}'\n{USAGE}"));
            }
        }
        Ok(o)
    }

    fn check(&self, known: &[&str]) -> Result<(), String> {
        for k in self.values.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option --{k}\n{USAGE}"));
            }
        }
        Ok(())
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v}: {e}")),
        }
    }

    fn list<T>(&self, name: &str, default: &[T]) -> Result<Vec<T>, String>
    where
        T: std::str::FromStr + Clone,
        T::Err: std::fmt::Display,
    {
        match self.values.get(name) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .split(',')
                .map(|x| x.trim().parse().map_err(|e| format!("--{name} {x}: {e}")))
                .collect(),
        }
    }

    fn system(&self) -> Result<System, String> {
        System::parse(
            self.positional
                .as_deref()
                .ok_or_else(|| format!("which system?\n{USAGE}"))?,
        )
    }
}

fn pin(cpu: Option<usize>) -> Result<(), String> {
    match cpu {
        Some(cpu) => pin_current_thread(cpu).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

// ---------------------------------------------------------------------------
// server
// ---------------------------------------------------------------------------

fn server_main(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["poll"])?;
    o.check(&["port", "cpu", "spin-us"])?;
    let server = ServerArgs {
        system: o.system()?,
        port: o.get("port", 0)?,
        spin_us: o.get("spin-us", courier::DEFAULT_PROGRESS_SPIN_US)?,
        poll: o.flag("poll"),
    };
    pin(o
        .values
        .get("cpu")
        .map(|c| c.parse())
        .transpose()
        .map_err(|e| format!("--cpu: {e}"))?)?;
    // Serve until stdin closes: the parent dropped its end, or died.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        })
        .map_err(|e| format!("thread: {e}"))?;
    runtime()?.block_on(systems::serve(server, async move {
        let _ = rx.await;
    }))
}

// ---------------------------------------------------------------------------
// client
// ---------------------------------------------------------------------------

struct Load {
    in_flight: Vec<usize>,
    warmup: u64,
    calls: u64,
    calls_per_task: u64,
    size: usize,
}

impl Load {
    fn parse(o: &Opts) -> Result<Self, String> {
        Ok(Self {
            in_flight: o.list("in-flight", &[1, 32])?,
            warmup: o.get("warmup", 2000)?,
            calls: o.get("calls", 20_000)?,
            calls_per_task: o.get("calls-per-task", 2000)?,
            size: o.get("size", 64)?,
        })
    }

    fn spec(&self, in_flight: usize) -> Spec {
        Spec {
            in_flight,
            warmup: self.warmup.max(in_flight as u64),
            calls: self.calls.max(in_flight as u64 * self.calls_per_task),
            time_cap: Duration::from_secs(60),
        }
    }
}

/// Connects, measures every N in turn on the same connection, closes.
async fn measure_system(
    system: System,
    address: &str,
    spin_us: u64,
    poll: bool,
    load: &Load,
) -> Result<Vec<(usize, Figures)>, String> {
    let payload = Bytes::from(vec![0xa5u8; load.size]);
    let client = Client::connect(system, address, spin_us).await?;
    let _spin = Spinner::start(poll);
    let mut out = Vec::new();
    let mut result = Ok(());
    for &n in &load.in_flight {
        let spec = load.spec(n);
        let r = match &client {
            Client::Courier { sink, .. } => measure(sink, &payload, &spec).await,
            Client::Tonic(sink) => measure(sink, &payload, &spec).await,
            Client::Tarpc(sink) => measure(sink, &payload, &spec).await,
        };
        match r {
            Ok(f) => out.push((n, f)),
            Err(e) => {
                result = Err(format!("{} at {n} in flight: {e}", system.name()));
                break;
            }
        }
    }
    drop(_spin);
    client.close().await;
    result.map(|()| out)
}

fn client_main(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["poll"])?;
    o.check(&[
        "address",
        "in-flight",
        "spin-us",
        "cpu",
        "warmup",
        "calls",
        "calls-per-task",
        "size",
    ])?;
    let system = o.system()?;
    let address: String = o
        .values
        .get("address")
        .cloned()
        .ok_or("--address is needed")?;
    let load = Load::parse(&o)?;
    let spin_us = o.get("spin-us", courier::DEFAULT_PROGRESS_SPIN_US)?;
    pin(o
        .values
        .get("cpu")
        .map(|c| c.parse())
        .transpose()
        .map_err(|e| format!("--cpu: {e}"))?)?;
    let rows = runtime()?.block_on(measure_system(
        system,
        &address,
        spin_us,
        o.flag("poll"),
        &load,
    ))?;
    for (n, f) in rows {
        println!(
            "{} in_flight={n} calls={} p50_us={:.2} p99_us={:.2} rpcs_per_s={:.0}",
            system.name(),
            f.calls,
            f.p50_us,
            f.p99_us,
            f.rpcs_per_s
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// compare
// ---------------------------------------------------------------------------

/// A server child process, killed (by its handle) if not stopped cleanly.
struct ServerProc {
    child: Option<Child>,
    address: String,
}

impl ServerProc {
    fn start(system: System, cpu: Option<usize>, spin_us: u64, poll: bool) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.arg("server")
            .arg(system.name())
            .arg("--spin-us")
            .arg(spin_us.to_string());
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        if poll {
            cmd.arg("--poll");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the {} server: {e}", system.name()))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|s| BufReader::new(s).read_line(&mut line));
        let mut me = Self {
            child: Some(child),
            address: String::new(),
        };
        match (read, line.trim().strip_prefix(READY)) {
            (Some(Ok(_)), Some(addr)) => {
                me.address = addr.to_owned();
                Ok(me)
            }
            _ => {
                me.stop();
                Err(format!(
                    "the {} server did not print its address (got {line:?})",
                    system.name()
                ))
            }
        }
    }

    /// Closes its stdin, waits up to 5 s, then kills it.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One row group: a system under one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    system: System,
    /// Courier's progress_spin_us (0 for the others).
    spin_us: u64,
    /// tonic / tarpc with their runtimes kept polling.
    poll: bool,
}

impl Entry {
    fn label(&self) -> String {
        match self.system {
            System::CourierTcp if self.spin_us == 0 => "Courier tcp, park".to_owned(),
            System::CourierTcp => format!("Courier tcp, spin {}µs", self.spin_us),
            s if self.poll => format!("{}, polling", s.name()),
            s => s.name().to_owned(),
        }
    }
}

fn lock_version(name: &str) -> String {
    let lock = include_str!("../Cargo.lock");
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .and_then(|i| lock[i + needle.len()..].split('"').next())
        .unwrap_or("?")
        .to_owned()
}

fn compare_main(args: &[String]) -> Result<(), String> {
    let o = Opts::parse(args, &["poll-others"])?;
    o.check(&[
        "systems",
        "in-flight",
        "spin-us",
        "runs",
        "warmup",
        "calls",
        "calls-per-task",
        "size",
        "client-cpu",
        "server-cpu",
    ])?;
    if o.positional.is_some() {
        return Err(format!("compare takes no positional argument\n{USAGE}"));
    }
    let systems: Vec<System> = o
        .list::<String>(
            "systems",
            &["courier-tcp".into(), "tonic".into(), "tarpc".into()],
        )?
        .iter()
        .map(|s| System::parse(s))
        .collect::<Result<_, _>>()?;
    let spins: Vec<u64> = o.list("spin-us", &[courier::DEFAULT_PROGRESS_SPIN_US, 0])?;
    let runs: usize = o.get("runs", 3)?;
    let client_cpu: usize = o.get("client-cpu", 0)?;
    let server_cpu: usize = o.get("server-cpu", 1)?;
    let poll_others = o.flag("poll-others");
    let load = Load::parse(&o)?;

    let mut entries = Vec::new();
    for &s in &systems {
        match s {
            System::CourierTcp => {
                entries.extend(spins.iter().map(|&spin_us| Entry {
                    system: s,
                    spin_us,
                    poll: false,
                }));
            }
            _ => {
                entries.push(Entry {
                    system: s,
                    spin_us: 0,
                    poll: false,
                });
                if poll_others {
                    entries.push(Entry {
                        system: s,
                        spin_us: 0,
                        poll: true,
                    });
                }
            }
        }
    }

    // Before pinning: pinned, this process sees one CPU.
    let machine = Machine::read();
    pin(Some(client_cpu))?;
    let rt = runtime()?;
    let started = Instant::now();
    let mut figures: BTreeMap<(Entry, usize), Vec<Figures>> = BTreeMap::new();
    for run in 0..runs {
        for e in &entries {
            eprintln!("run {}/{runs}: {}", run + 1, e.label());
            let mut server = ServerProc::start(e.system, Some(server_cpu), e.spin_us, e.poll)?;
            let rows = rt.block_on(measure_system(
                e.system,
                &server.address,
                e.spin_us,
                e.poll,
                &load,
            ));
            server.stop();
            for (n, f) in rows? {
                figures.entry((*e, n)).or_default().push(f);
            }
        }
    }
    let elapsed = started.elapsed();

    let row = |e: &Entry, n: usize| figures.get(&(*e, n)).map(Summary::of);

    println!(
        "courier-peer-bench compare: the sink RPC ({} B request, empty response); server in a child \
         process on CPU {server_cpu}, client (this process) on CPU {client_cpu}; current-thread \
         tokio runtimes; at N in flight, N tasks calling in a loop: {} warm-up calls, then \
         max({}, N × {}) measured; {}",
        load.size,
        load.warmup,
        load.calls,
        load.calls_per_task,
        if runs > 1 {
            format!("median (min..max) of {runs} runs")
        } else {
            "1 run".to_owned()
        }
    );
    println!(
        "versions: courier {}, tonic {} (hyper {}, h2 {}), tarpc {} (bincode {}), tokio {}",
        lock_version("courier"),
        lock_version("tonic"),
        lock_version("hyper"),
        lock_version("h2"),
        lock_version("tarpc"),
        lock_version("bincode"),
        lock_version("tokio"),
    );
    println!("machine: {machine}");

    let others: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.system != System::CourierTcp)
        .collect();
    let couriers: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.system == System::CourierTcp)
        .collect();
    let baselines: Vec<Option<&Entry>> = if couriers.is_empty() {
        vec![None]
    } else {
        couriers.iter().map(|e| Some(*e)).collect()
    };
    for base in baselines {
        println!();
        match base {
            Some(b) => println!("{} (both engines):", b.label()),
            None => println!("without Courier:"),
        }
        println!();
        let mut table = Table::new(&[
            "system",
            "in flight",
            "p50 µs",
            "p99 µs",
            "RPCs/s",
            "p50 ÷ Courier p50",
            "Courier RPCs/s ÷ RPCs/s",
        ])
        .align(1..=6, Align::Right);
        for &n in &load.in_flight {
            let base_row = base.and_then(|b| row(b, n));
            let group = base.into_iter().chain(others.iter().copied());
            for e in group {
                let Some(r) = row(e, n) else { continue };
                let (p50_ratio, rate_ratio) = match &base_row {
                    Some(b) if e.system != System::CourierTcp => (
                        format!("{:.2}", r.p50_us.median / b.p50_us.median),
                        format!("{:.2}", b.rpcs_per_s.median / r.rpcs_per_s.median),
                    ),
                    Some(_) => ("1.00".to_owned(), "1.00".to_owned()),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                table.row(vec![
                    e.label(),
                    n.to_string(),
                    r.p50_us.cell(r.runs, format_us),
                    r.p99_us.cell(r.runs, format_us),
                    r.rpcs_per_s.cell(r.runs, format_rate),
                    p50_ratio,
                    rate_ratio,
                ]);
            }
        }
        table.print().map_err(|e| e.to_string())?;
        if let Some(b) = base {
            println!();
            let find = |s: System| others.iter().find(|e| e.system == s && !e.poll).copied();
            let n_max = load.in_flight.iter().copied().max().unwrap_or(1);
            let n_min = load.in_flight.iter().copied().min().unwrap_or(1);
            if let (Some(t), Some(c), Some(x)) = (
                find(System::Tonic),
                row(b, n_max),
                find(System::Tonic).and_then(|t| row(t, n_max)),
            ) {
                let r = c.rpcs_per_s.median / x.rpcs_per_s.median;
                println!(
                    "target 1: Courier RPCs/s ÷ {} RPCs/s at {n_max} in flight = {r:.2} (≥ 2 wanted: {})",
                    t.system.name(),
                    if r >= 2.0 { "met" } else { "NOT met" }
                );
            }
            if let (Some(t), Some(c), Some(x)) = (
                find(System::Tarpc),
                row(b, n_min),
                find(System::Tarpc).and_then(|t| row(t, n_min)),
            ) {
                println!(
                    "target 2: p50 at {n_min} in flight, Courier {} µs vs {} {} µs (lower wanted: {})",
                    format_us(c.p50_us.median),
                    t.system.name(),
                    format_us(x.p50_us.median),
                    if c.p50_us.median < x.p50_us.median { "met" } else { "NOT met" }
                );
            }
        }
    }
    println!();
    println!(
        "p50 ÷ Courier p50 above 1 and Courier RPCs/s ÷ RPCs/s above 1 both mean Courier is faster. \
         {} measurements in {:.1} s",
        figures.values().map(Vec::len).sum::<usize>(),
        elapsed.as_secs_f64()
    );
    let _ = std::io::stdout().flush();
    Ok(())
}
