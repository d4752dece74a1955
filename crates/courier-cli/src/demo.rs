//! `courier demo`: for each protocol, a `courier serve` child process, the
//! seed's hello against it, a latency measurement, and a remote shutdown.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use clap::Args;
use courier::{Address, Engine};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::bench::{histogram, nanos};
use crate::child::{drain, exit_status, spawn_piped, stderr_tail, wait_ready, Ready};
use crate::serve::READY_PREFIX;
use crate::table::{Align, Table};
use crate::{client, CliResult, Context, Error};

/// How long a server may take to print its address.
const STARTUP_GUARD: Duration = Duration::from_secs(10);
/// How long one request may take (a hang guard, not a measurement).
const CALL_GUARD: Duration = Duration::from_secs(10);
/// How long the client side of one protocol may take in all.
const PROTOCOL_GUARD: Duration = Duration::from_secs(60);
/// How long a server may take to exit after the shutdown request.
const EXIT_GUARD: Duration = Duration::from_secs(10);
/// Size of the `echo` payload.
const ECHO_BYTES: usize = 64;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Protocols to run, comma-separated (default: every protocol whose plugin
    /// is built in; see `courier protocols`).
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    protocols: Vec<String>,

    /// Sequential `echo` calls (and pings) to time per protocol.
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
}

/// One row of the result table.
#[derive(Debug, Default)]
struct Row {
    protocol: String,
    address: String,
    hello: String,
    echo_p50: String,
    echo_p99: String,
    calls_per_s: String,
    ping_p50: String,
    shutdown: String,
    error: Option<Error>,
}

impl Row {
    fn new(protocol: &str) -> Self {
        Self {
            protocol: protocol.to_owned(),
            address: "-".into(),
            hello: "-".into(),
            echo_p50: "-".into(),
            echo_p99: "-".into(),
            calls_per_s: "-".into(),
            ping_p50: "-".into(),
            shutdown: "-".into(),
            error: None,
        }
    }

    fn fail(&mut self, why: Error) {
        if self.error.is_none() {
            self.error = Some(why);
        }
    }

    fn cells(&self) -> Vec<String> {
        let address = if self.error.is_some() && self.address == "-" {
            "FAILED (see below)".to_owned()
        } else {
            self.address.clone()
        };
        vec![
            self.protocol.clone(),
            address,
            self.hello.clone(),
            self.echo_p50.clone(),
            self.echo_p99.clone(),
            self.calls_per_s.clone(),
            self.ping_p50.clone(),
            self.shutdown.clone(),
        ]
    }
}

/// The protocols a command runs on: the ones named on its command line
/// (trimmed, empty names dropped), or every protocol whose plugin is built
/// in — leaving out those that reach their own process only (`mem`) unless
/// `in_process_too`, since `demo` serves from child processes.
pub(crate) fn selected_protocols(
    registry: &courier::transport::Registry,
    named: &[String],
    in_process_too: bool,
) -> Vec<String> {
    if named.is_empty() {
        registry
            .protocols()
            .filter(|p| registry.is_available(p))
            .filter(|p| {
                in_process_too || registry.reach(p) != Some(courier::transport::Reach::Process)
            })
            .map(|p| p.name.clone())
            .collect()
    } else {
        named
            .iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect()
    }
}

pub(crate) async fn run(args: DemoArgs, verbose: u8) -> CliResult {
    let registry = courier::default_registry()?;
    let protocols = selected_protocols(&registry, &args.protocols, false);
    if protocols.is_empty() {
        return Err(Error::Unsupported(
            "no protocol to run: no transport plugin is built in".into(),
        ));
    }
    let all = async {
        let mut rows = Vec::new();
        for p in &protocols {
            let mut row = Row::new(p);
            match registry.resolve(p) {
                Err(e) => row.fail(e.into()),
                Ok(entry) if !registry.is_available(&entry) => {
                    row.fail(Error::Unsupported(format!(
                        "protocol '{}' needs the '{}' transport plugin, which is not built in",
                        entry.name, entry.plugin
                    )))
                }
                Ok(_) => demo_one(&mut row, args.calls, verbose).await,
            }
            rows.push(row);
        }
        rows
    };
    // On Ctrl-C or SIGTERM, dropping `all` drops the running server's Child
    // handle, which kills that child (kill_on_drop).
    let rows = tokio::select! {
        rows = all => rows,
        () = crate::serve::stop_signal() => return Err(Error::Interrupted("demo")),
    };

    crate::out(format_args!(
        "courier demo: {} sequential echo calls of {ECHO_BYTES} B and {} engine pings per protocol",
        args.calls, args.calls
    ))?;
    let mut t = Table::new(&[
        "protocol",
        "address",
        "hello",
        "echo 64 B p50 µs",
        "p99 µs",
        "calls/s",
        "ping p50 µs",
        "shutdown",
    ])
    .align(3..=6, Align::Right);
    for r in &rows {
        t.row(r.cells());
    }
    t.print()?;

    crate::fail_with_last(rows.into_iter().filter_map(|r| {
        let protocol = r.protocol;
        r.error
            .map(|e| e.context(format!("demo over {protocol} failed")))
    }))
}

/// A `courier serve` child process.
#[derive(Debug)]
struct Server {
    child: Child,
    address: String,
    stdout: JoinHandle<Vec<String>>,
    stderr: JoinHandle<Vec<String>>,
}

async fn kill(child: &mut Child) {
    if let Err(e) = child.kill().await {
        tracing::warn!("cannot kill the server (pid {:?}): {e}", child.id());
    }
}

impl Server {
    /// Starts `courier serve --protocol P --enable-remote-shutdown` and waits
    /// for its `Service running at` line.
    async fn spawn(protocol: &str, verbose: u8) -> CliResult<Self> {
        let exe =
            std::env::current_exe().map_err(|e| Error::io("find the courier executable", e))?;
        let mut cmd = Command::new(exe);
        cmd.args(["serve", "--protocol", protocol, "--enable-remote-shutdown"]);
        for _ in 0..verbose {
            cmd.arg("-v");
        }
        let mut child = spawn_piped(
            cmd,
            false,
            &format!("`courier serve --protocol {protocol}`"),
        )?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            kill(&mut child).await;
            return Err(Error::Peer("the server's output pipes are missing".into()));
        };
        let stderr = drain(
            BufReader::new(stderr).lines(),
            format!("serve {protocol} stderr"),
        );
        let mut lines = BufReader::new(stdout).lines();
        let what = format!("serve {protocol} stdout");
        let why = match wait_ready(&mut lines, READY_PREFIX, &what, STARTUP_GUARD).await {
            Ready::At(address) => {
                let stdout = drain(lines, what);
                return Ok(Self {
                    child,
                    address,
                    stdout,
                    stderr,
                });
            }
            Ready::Ended => {
                let status = exit_status(&mut child, EXIT_GUARD).await;
                Error::Peer(format!(
                    "the server stopped before printing its address ({status})"
                ))
            }
            Ready::Failed(e) => {
                kill(&mut child).await;
                Error::io("read the server's stdout", e)
            }
            Ready::Silent => {
                kill(&mut child).await;
                Error::Peer(format!(
                    "the server printed no '{}<address>' line within {} s",
                    READY_PREFIX,
                    STARTUP_GUARD.as_secs()
                ))
            }
        };
        Err(why.with_stderr(stderr_tail(stderr).await))
    }

    /// Waits for the server to exit after a shutdown request.
    async fn wait_exit(&mut self) -> CliResult<ExitStatus> {
        match tokio::time::timeout(EXIT_GUARD, self.child.wait()).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(Error::io("wait for the server", e)),
            Err(_) => Err(Error::Peer(format!(
                "the server did not exit within {} s of the shutdown request",
                EXIT_GUARD.as_secs()
            ))),
        }
    }
}

/// Runs the whole demo for one protocol, filling `row`.
async fn demo_one(row: &mut Row, calls: u64, verbose: u8) {
    let mut server = match Server::spawn(&row.protocol, verbose).await {
        Ok(s) => s,
        Err(e) => {
            row.fail(e);
            return;
        }
    };
    row.address.clone_from(&server.address);
    let exercised =
        tokio::time::timeout(PROTOCOL_GUARD, exercise(row, &server.address, calls)).await;
    let outcome = match exercised {
        Ok(Ok(())) => match server.wait_exit().await {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(Error::Peer(format!(
                "the server {status} after the shutdown"
            ))),
            Err(e) => Err(e),
        },
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Peer(format!(
            "gave up after {} s",
            PROTOCOL_GUARD.as_secs()
        ))),
    };
    if let Err(e) = outcome {
        // Whatever went wrong, leave nothing running.
        kill(&mut server.child).await;
        row.shutdown = match row.shutdown.as_str() {
            // Acknowledged, but the process did not exit 0.
            "ok" => "FAILED".into(),
            // Never asked: the failure came first.
            "-" => "killed".into(),
            other => other.to_owned(),
        };
        row.fail(e.with_stderr(stderr_tail(server.stderr).await));
        server.stdout.abort();
        return;
    }
    row.shutdown = "ok, exit 0".into();
    // The server printed the seed's greeting before it answered hello.
    let printed = tokio::time::timeout(Duration::from_secs(2), server.stdout)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if !printed.iter().any(|l| l == "Hello Matthieu Dorier!") {
        row.hello = "FAILED".into();
        row.fail(Error::Peer(format!(
            "the server did not print \"Hello Matthieu Dorier!\" (its stdout: {printed:?})"
        )));
    }
}

/// The client side: lookup, hello, echo timing, pings, shutdown.
async fn exercise(row: &mut Row, address: &str, calls: u64) -> CliResult {
    let (engine, server) = client::connect(address, None, Some(CALL_GUARD)).await?;
    let result = exercise_with(row, &engine, &server, calls).await;
    engine.finalize().await;
    result
}

fn us(nanos: u64) -> String {
    // Lossless for any latency this measures (< 2^53 ns).
    #[allow(clippy::cast_precision_loss)]
    let v = nanos as f64 / 1000.0;
    format!("{v:.1}")
}

async fn exercise_with(row: &mut Row, engine: &Engine, server: &Address, calls: u64) -> CliResult {
    // The seed's hello.
    let answer = engine
        .remote::<(&str, &str), String>("hello")
        .on(server)
        .timeout(CALL_GUARD)
        .call(&("Matthieu", "Dorier"))
        .await
        .map_err(|e| {
            row.hello = "FAILED".into();
            Error::from(e).context("hello")
        })?;
    if answer != "Good bye Matthieu" {
        row.hello = "FAILED".into();
        return Err(Error::Peer(format!(
            "hello answered {answer:?}, not \"Good bye Matthieu\""
        )));
    }
    row.hello = "ok".into();

    // Sequential 64-byte echo calls.
    let payload: Vec<u8> = (0..ECHO_BYTES).map(|i| (i % 251) as u8).collect();
    let echo = engine.remote_raw("echo").on(server).timeout(CALL_GUARD);
    let check = |reply: &[u8]| {
        if reply == payload.as_slice() {
            Ok(())
        } else {
            Err(Error::Peer(format!(
                "echo answered {} bytes that differ from the {ECHO_BYTES} sent",
                reply.len()
            )))
        }
    };
    for _ in 0..calls.min(100) {
        let reply = echo.call(&payload).await.context(|| "echo")?;
        check(&reply)?;
    }
    let mut h = histogram()?;
    let start = Instant::now();
    for _ in 0..calls {
        let t = Instant::now();
        let reply = echo.call(&payload).await.context(|| "echo")?;
        h.saturating_record(nanos(t.elapsed()));
        check(&reply)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    row.echo_p50 = us(h.value_at_quantile(0.5));
    row.echo_p99 = us(h.value_at_quantile(0.99));
    #[allow(clippy::cast_precision_loss)]
    let rate = calls as f64 / elapsed.max(1e-9);
    row.calls_per_s = format!("{rate:.0}");

    // Engine-level pings.
    let mut h = histogram()?;
    for _ in 0..calls {
        let rtt = server.ping(Some(CALL_GUARD)).await.context(|| "ping")?;
        h.saturating_record(nanos(rtt));
    }
    row.ping_p50 = us(h.value_at_quantile(0.5));

    // Remote shutdown; the caller waits for the process to exit.
    server.shutdown().await.map_err(|e| {
        row.shutdown = "FAILED".into();
        Error::from(e).context("shutdown")
    })?;
    row.shutdown = "ok".into();
    Ok(())
}

/// The long help of the subcommand (clap takes it from the enum variant).
pub(crate) const DEMO_LONG_ABOUT: &str = "For each protocol: start `courier serve --protocol P \
    --enable-remote-shutdown` as a child process and read its address; look it up; \
    call hello(\"Matthieu\", \"Dorier\") and check the answer is \"Good bye Matthieu\"; \
    time N sequential 64-byte `echo` calls (p50/p99 latency, calls/s) and N \
    engine-level pings (p50); then shut the server down remotely and check it exits 0. \
    Prints one table. Exits 1 if any protocol failed, saying which and why. Needs \
    nothing started by hand; a server that misbehaves is killed.";
