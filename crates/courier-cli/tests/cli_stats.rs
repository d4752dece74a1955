//! Statistics from the command line, as a user runs them (issue 18):
//! `courier serve --stats` in the background, loaded with `courier call
//! --count`, read with `courier stats` (table, `--json`, `--format
//! prometheus`, `--advise`) and `courier top -n`; and the errors: a dead
//! address, a service that does not serve its statistics, a listener that
//! is not Courier, a garbage address.
//!
//! Loopback only. Timeouts here are hang guards, or the commands' own
//! `--timeout-ms` in the error cases; nothing waits on a sleep, and no
//! outcome depends on how fast anything was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

/// The checker of the Prometheus text format that the `courier` crate's
/// own tests use.
#[path = "../../courier/src/stats/prometheus_check.rs"]
mod prometheus_check;

use common::{courier, lines, run_cmd, Run};

use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::Duration;

use courier::stats::Stats;

/// How long any one command may take before the test gives up on it.
const GUARD: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Run {
    run_cmd(courier(), args, GUARD)
}

/// A `courier serve` child process; shut down (or killed) on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = courier()
            .args(["serve", "--enable-remote-shutdown"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier serve");
        let stdout: Receiver<String> = lines(child.stdout.take().unwrap());
        let first = stdout.recv_timeout(GUARD).expect("serve printed nothing");
        let address = first
            .strip_prefix("Service running at ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_owned();
        // hello's greetings: read, not looked at.
        thread::spawn(move || while stdout.recv().is_ok() {});
        Self { child, address }
    }

    /// Shuts the service down remotely and waits for it to exit.
    fn shutdown(mut self) {
        let r = run(&["shutdown", &self.address]);
        assert_eq!(r.code(), Some(0), "{r:?}");
        let status = self.child.wait().expect("wait for serve");
        assert!(status.success(), "serve exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The cells of the table row of `rpc` in the section `title` of `courier
/// stats`' table output.
fn row(stdout: &str, title: &str, rpc: &str) -> Vec<String> {
    let section = stdout
        .split(&format!("\n{title}:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {title:?} in:\n{stdout}"));
    let line = section
        .lines()
        .take_while(|l| l.starts_with('|'))
        .find(|l| l.starts_with(&format!("| {rpc} ")))
        .unwrap_or_else(|| panic!("no row for {rpc} under {title:?} in:\n{stdout}"));
    line.trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

/// `serve --stats`, 5 calls of `echo` and 1 of `hello`, then every way of
/// reading the statistics.
fn stats_of_a_loaded_service(protocol: &str) {
    let server = Server::start(&["--protocol", protocol, "--stats"]);
    let addr = server.address.clone();

    let r = run(&["call", &addr, "echo", "--raw", "load", "--count", "5"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let mut out = r.stdout.lines();
    assert_eq!(out.next(), Some("load"), "{r:?}");
    assert!(
        out.next().unwrap_or("").contains("5 calls, 5 answered"),
        "{r:?}"
    );
    let r = run(&["call", &addr, "hello", "Matthieu", "Dorier"]);
    assert_eq!(r.code(), Some(0), "{r:?}");

    // The table.
    let r = run(&["stats", &addr]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(
        r.stdout
            .starts_with(&format!("Statistics of {addr} ({protocol}), up ")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.lines().next().unwrap().ends_with("timing on"));
    let echo = row(&r.stdout, "RPCs served", "echo");
    // rpc, provider, calls, ok, errors, in flight, bytes in, bytes out,
    // then p50/p99 of queue, handler, respond.
    assert_eq!(&echo[..6], ["echo", "0", "5", "5", "0", "0"], "{echo:?}");
    assert_eq!(echo[6], "20 B", "{echo:?}");
    assert_eq!(echo.len(), 11, "{echo:?}");
    assert!(echo[8..].iter().all(|c| c.contains('/')), "{echo:?}");
    let hello = row(&r.stdout, "RPCs served", "hello");
    assert_eq!(&hello[..4], ["hello", "0", "1", "1"], "{hello:?}");

    // JSON: the schema the engine documents, with counts as made.
    let r = run(&["stats", &addr, "--json"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let stats = Stats::from_json(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout));
    assert_eq!(stats.address, addr);
    assert!(stats.timing);
    let served = stats.rpc("echo", 0).unwrap().served.as_ref().unwrap();
    assert_eq!((served.calls, served.ok, served.in_flight), (5, 5, 0));
    assert_eq!(served.bytes_in, 20);
    for phase in ["queue", "handler", "respond"] {
        assert_eq!(served.phase(phase).map(|l| l.count), Some(5), "{phase}");
    }
    let hello = stats.rpc("hello", 0).unwrap().served.as_ref().unwrap();
    assert_eq!((hello.calls, hello.ok), (1, 1));
    let value: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(value.get("advice").is_none(), "{}", r.stdout);
    // --format json is --json.
    let r = run(&["stats", &addr, "--format", "json"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    Stats::from_json(&r.stdout).unwrap();

    // --advise: a list next to the statistics, or after the tables.
    let r = run(&["stats", &addr, "--json", "--advise"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let value: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(value["advice"].is_array(), "{}", r.stdout);
    assert_eq!(value["schema"], 1);
    Stats::from_json(&r.stdout).unwrap();
    let r = run(&["stats", &addr, "--advise"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(
        r.stdout.lines().any(|l| l.starts_with("Advice:")),
        "{}",
        r.stdout
    );

    // Prometheus: every line passes the checker; the counts are there.
    let r = run(&["stats", &addr, "--format", "prometheus", "--advise"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let e = prometheus_check::check(&r.stdout).unwrap_or_else(|e| panic!("{e}\n{}", r.stdout));
    let echo = [("rpc", "echo"), ("provider", "0"), ("side", "served")];
    assert_eq!(e.value("courier_rpc_calls_total", &echo), Some(5.0));
    assert_eq!(e.value("courier_rpc_ok_total", &echo), Some(5.0));
    assert_eq!(e.types["courier_rpc_latency_seconds"], "histogram");
    let handler = [("rpc", "echo"), ("side", "served"), ("phase", "handler")];
    assert_eq!(
        e.value("courier_rpc_latency_seconds_count", &handler),
        Some(5.0)
    );
    assert!(r.stdout.contains("\n# Advice:"), "{}", r.stdout);

    // top: two frames as plain text (stdout is a pipe), with rates.
    let r = run(&["top", &addr, "-n", "2", "--interval", "100ms"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
    let frames: Vec<&str> = r.stdout.split("\n\ncourier top - ").collect();
    assert_eq!(frames.len(), 2, "{}", r.stdout);
    assert!(frames[0].starts_with(&format!("courier top - {addr} ({protocol})")));
    assert!(frames[0].contains("- since start\n"), "{}", frames[0]);
    assert!(frames[1].contains("- last "), "{}", frames[1]);
    for frame in frames {
        assert!(frame.contains("calls/s"), "{frame}");
        assert!(frame.contains("CALLS/S"), "{frame}");
        let echo: Vec<&str> = frame
            .lines()
            .find(|l| l.starts_with("echo "))
            .unwrap_or_else(|| panic!("no line for echo in:\n{frame}"))
            .split_whitespace()
            .collect();
        assert_eq!(&echo[..3], ["echo", "0", "served"], "{echo:?}");
        // calls/s, errors/s: rates, whatever their value.
        for cell in &echo[3..5] {
            assert!(cell.parse::<f64>().is_ok(), "{echo:?}");
        }
        assert!(frame.contains("Advice:"), "{frame}");
    }

    server.shutdown();
}

#[test]
fn stats_and_top_of_a_loaded_service_over_tcp() {
    stats_of_a_loaded_service("tcp");
}

#[test]
fn stats_and_top_of_a_loaded_service_over_unix() {
    stats_of_a_loaded_service("unix");
}

/// `cmd` failed with a message on stderr holding every one of `needles`.
fn fails_saying(r: &Run, needles: &[&str]) {
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.starts_with("courier: "), "{r:?}");
    for n in needles {
        assert!(r.stderr.contains(n), "no {n:?} in {:?}", r.stderr);
    }
}

#[test]
fn a_dead_address_is_a_clear_error() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp://127.0.0.1:{port}");
    for cmd in ["stats", "top"] {
        let r = run(&[cmd, &addr, "--timeout-ms", "5000"]);
        fails_saying(
            &r,
            &[
                &format!("cannot read the statistics of {addr}"),
                "is a Courier service running there?",
            ],
        );
    }
}

#[test]
fn a_service_without_stats_says_how_to_turn_them_on() {
    let server = Server::start(&["--protocol", "tcp"]);
    let addr = server.address.clone();
    for cmd in ["stats", "top"] {
        let r = run(&[cmd, &addr]);
        fails_saying(
            &r,
            &[
                &format!("cannot read the statistics of {addr}"),
                "does not serve its statistics",
                "courier serve --stats",
            ],
        );
    }
    server.shutdown();
}

#[test]
fn a_listener_that_never_answers_fails_within_the_timeout() {
    // Accepted by the kernel, never read nor written: no Courier there.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp://{}", silent.local_addr().unwrap());
    for cmd in ["stats", "top"] {
        let r = run(&[cmd, &addr, "--timeout-ms", "300"]);
        fails_saying(&r, &[&format!("cannot read the statistics of {addr}")]);
        assert!(
            r.stderr.contains("300ms") || r.stderr.contains("300 ms"),
            "{r:?}"
        );
    }
    drop(silent);
}

#[test]
fn garbage_addresses_are_refused() {
    let r = run(&["stats", "garbage"]);
    fails_saying(
        &r,
        &["cannot read the statistics of 'garbage'", "invalid address"],
    );
    let r = run(&["top", "pigeon://loft"]);
    fails_saying(&r, &["unknown protocol 'pigeon'"]);
    let r = run(&["top", "tcp://127.0.0.1:1", "--interval", "soon"]);
    fails_saying(&r, &["'soon' is not a time"]);
}

#[test]
fn help_names_the_commands_and_serve_stats() {
    let r = run(&["--help"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    for cmd in ["stats", "top"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{}",
            r.stdout
        );
    }
    let r = run(&["serve", "--help"]);
    assert!(r.stdout.contains("--stats"), "{}", r.stdout);
    assert!(r.stdout.contains("courier stats ADDR"), "{}", r.stdout);
    let r = run(&["stats", "--help"]);
    for needle in [
        "--json",
        "--format",
        "prometheus",
        "--advise",
        "--timeout-ms",
    ] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
    let r = run(&["top", "--help"]);
    for needle in ["--interval", "--iterations", "Ctrl-C"] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
}

/// Ctrl-C (SIGINT) ends `courier top` cleanly: exit 0.
#[cfg(unix)]
#[test]
fn ctrl_c_ends_top_cleanly() {
    let server = Server::start(&["--protocol", "tcp", "--stats"]);
    let mut top = courier()
        .args(["top", &server.address, "--interval", "50ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier top");
    let frames = lines(top.stdout.take().unwrap());
    let stderr = common::read_all(top.stderr.take().unwrap());
    // A first frame: top runs, its signal handlers are in place.
    let first = frames.recv_timeout(GUARD).expect("top printed no frame");
    assert!(first.starts_with("courier top - "), "{first:?}");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &top.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    // Its stdout closes when it exits.
    while frames.recv_timeout(GUARD).is_ok() {}
    let status = top.wait().expect("wait for top");
    let err = stderr.recv_timeout(GUARD).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "top: {status}; stderr: {err}");
    assert!(err.is_empty(), "{err}");
    server.shutdown();
}
