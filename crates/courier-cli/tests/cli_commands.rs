//! The `courier` binary, run as a user runs it: `protocols`, `serve` with
//! `call`, `ping` and `shutdown` against it over tcp and unix, errors, and
//! `demo`.
//!
//! Timeouts here are hang guards only; nothing waits on a sleep.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{courier, lines, run_cmd, run_cmd_with_input, Run};

use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// How long any one command may take before the test gives up on it.
const GUARD: Duration = Duration::from_secs(60);

/// Runs `courier ARGS` to completion; kills it if it outlives the guard.
fn run(args: &[&str]) -> Run {
    run_cmd(courier(), args, GUARD)
}

/// Runs `courier ARGS` with `$COURIER_PROTOCOLS` naming a table holding
/// `toml` (removed afterwards).
fn run_with_table(args: &[&str], name: &str, toml: &str) -> Run {
    let path = std::env::temp_dir().join(format!(
        "courier-cli-test-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, toml).expect("write the protocol table");
    let mut cmd = courier();
    cmd.env("COURIER_PROTOCOLS", &path);
    let r = run_cmd(cmd, args, GUARD);
    let _ = std::fs::remove_file(&path);
    r
}

/// A protocol table declaring a protocol whose plugin no build has.
const MISSING_PLUGIN_TABLE: &str =
    "[protocols.pigeon]\nplugin = \"avian\"\naliases = [\"ipoac\"]\n";

/// A `courier serve` child process; killed on drop unless it has exited.
struct Server {
    child: Child,
    address: String,
    stdout: Receiver<String>,
    exited: bool,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = courier()
            .arg("serve")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier serve");
        let rx = lines(child.stdout.take().unwrap());
        let mut server = Self {
            child,
            address: String::new(),
            stdout: rx,
            exited: false,
        };
        let first = server.next_line().expect("serve printed nothing");
        server.address = first
            .strip_prefix("Service running at ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_owned();
        server
    }

    /// The next stdout line; `None` once the process closed stdout.
    fn next_line(&self) -> Option<String> {
        match self.stdout.recv_timeout(GUARD) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!("serve wrote nothing within {GUARD:?}"),
        }
    }

    /// Waits for the process to exit (its stdout closes first).
    fn wait_exit(&mut self) -> (ExitStatus, Vec<String>) {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line() {
            rest.push(line);
        }
        let status = self.child.wait().expect("wait for serve");
        self.exited = true;
        (status, rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn protocols_lists_the_table_and_what_is_built_in() {
    let r = run_with_table(&["protocols"], "protocols", MISSING_PLUGIN_TABLE);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let row = |name: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{}", r.stdout))
            .to_owned()
    };
    assert!(row("tcp").contains("ofi+tcp"), "{}", r.stdout);
    assert!(row("tcp").contains("available"), "{}", r.stdout);
    assert!(row("unix").contains("available"), "{}", r.stdout);
    assert!(row("shm").contains("na+sm"), "{}", r.stdout);
    assert!(row("quic").contains("quic"), "{}", r.stdout);
    assert!(row("pigeon").contains("ipoac"), "{}", r.stdout);
    assert!(row("pigeon").contains("not built in"), "{}", r.stdout);
    assert!(row("chaos+…").contains("chaos (layer)"), "{}", r.stdout);
    assert!(row("chaos+…").contains("available"), "{}", r.stdout);
    assert!(
        r.stdout.lines().next().unwrap().contains("protocol"),
        "{}",
        r.stdout
    );
}

/// serve, then call hello / echo / an unknown RPC, ping, shutdown.
fn serve_call_ping_shutdown(protocol: &str) {
    let mut server = Server::start(&["--protocol", protocol, "--enable-remote-shutdown"]);
    let addr = server.address.clone();
    assert!(addr.starts_with(&format!("{protocol}://")), "{addr}");

    let r = run(&["call", &addr, "hello", "Matthieu", "Dorier"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "Good bye Matthieu\n");
    assert_eq!(
        server.next_line().as_deref(),
        Some("Hello Matthieu Dorier!")
    );

    let r = run(&["call", &addr, "echo", "--raw", "hello", "world"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "hello world\n");

    // One string argument comes back as that string.
    let r = run(&["call", &addr, "echo", "one string"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "one string\n");

    let r = run(&["call", &addr, "sleep", "--u64", "1"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "");

    // A string where `sleep` takes a number: refused as a type mismatch
    // (postcard would read the string's length as the number).
    let r = run(&["call", &addr, "sleep", "notanumber"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("RPC 'sleep'") && r.stderr.contains("type mismatch"),
        "{r:?}"
    );

    let r = run(&["call", &addr, "no_such_rpc"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.starts_with("courier: "), "{r:?}");
    assert!(r.stderr.contains("no such RPC 'no_such_rpc'"), "{r:?}");

    let r = run(&["call", &addr, "hello", "--provider", "7", "a", "b"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("at provider 7"), "{r:?}");

    let r = run(&["ping", &addr, "--count", "3"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(
        r.stdout.lines().filter(|l| l.starts_with("seq=")).count(),
        3,
        "{r:?}"
    );
    assert!(r.stdout.contains("3 sent, 3 answered"), "{r:?}");
    assert!(r.stdout.contains("min/avg/max"), "{r:?}");

    let r = run(&["shutdown", &addr]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let (status, rest) = server.wait_exit();
    assert!(
        status.success(),
        "serve exited with {status}; stdout after: {rest:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");

    // Nobody there any more.
    let r = run(&["call", &addr, "hello", "a", "b"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("cannot connect"), "{r:?}");
}

#[test]
fn serve_call_ping_shutdown_over_tcp() {
    serve_call_ping_shutdown("tcp");
}

#[test]
fn serve_call_ping_shutdown_over_unix() {
    serve_call_ping_shutdown("unix");
}

#[test]
fn mochi_aliases_work_for_serve_and_call() {
    let mut server = Server::start(&["--protocol", "ofi+tcp", "--enable-remote-shutdown"]);
    let addr = server.address.clone();
    assert!(addr.starts_with("tcp://"), "{addr}");
    let alias = addr.replacen("tcp://", "ofi+tcp://", 1);
    let r = run(&["call", &alias, "hello", "Matthieu", "Dorier"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "Good bye Matthieu\n");
    let r = run(&["shutdown", &alias]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(server.wait_exit().0.success());
}

#[test]
fn shutdown_is_refused_unless_enabled_and_timeouts_are_errors() {
    let server = Server::start(&["--listen", "tcp://127.0.0.1:0"]);
    let addr = server.address.clone();
    let r = run(&["shutdown", &addr]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("refused"), "{r:?}");
    // A sleep far longer than the call's timeout.
    let r = run(&[
        "call",
        &addr,
        "sleep",
        "--u64",
        "3600000",
        "--timeout-ms",
        "200",
    ]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("timed out"), "{r:?}");
    // Still serving.
    let r = run(&["call", &addr, "hello", "Matthieu", "Dorier"]);
    assert_eq!(r.stdout, "Good bye Matthieu\n", "{r:?}");
    drop(server); // killed through its Child handle
}

/// Bytes that are not text, and differ from one MiB to the next.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect()
}

/// `call --input FILE` and `--input -` send several MiB to `echo`, which
/// sends them back, byte for byte.
#[test]
fn call_input_sends_a_file_or_stdin_as_the_payload() {
    let mut server = Server::start(&["--protocol", "tcp", "--enable-remote-shutdown"]);
    let addr = server.address.clone();
    let dir = std::env::temp_dir().join(format!("courier-cli-test-{}-input", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // The call succeeded and printed what was sent, byte for byte.
    let echoed = |r: Run, sent: &[u8], from: &str| {
        assert_eq!(r.code(), Some(0), "{}", r.stderr);
        assert!(
            r.stdout_bytes == sent,
            "echo sent back {} bytes, not the {} of {from}",
            r.stdout_bytes.len(),
            sent.len()
        );
    };

    let file = dir.join("payload.bin");
    let bytes = pattern((5 << 20) + 3);
    std::fs::write(&file, &bytes).unwrap();
    let r = run(&["call", &addr, "echo", "--input", file.to_str().unwrap()]);
    echoed(r, &bytes, "the file");

    let bytes = pattern((3 << 20) + 1);
    let r = run_cmd_with_input(
        courier(),
        &["call", &addr, "echo", "--input", "-"],
        Some(bytes.clone()),
        GUARD,
    );
    echoed(r, &bytes, "stdin");

    // An empty file is an empty payload.
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let r = run(&["call", &addr, "echo", "--input", empty.to_str().unwrap()]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout_bytes.is_empty(), "{r:?}");

    // A file that is not there, and ARGS besides --input, are errors.
    let missing = dir.join("missing");
    let r = run(&["call", &addr, "echo", "--input", missing.to_str().unwrap()]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.starts_with("courier: cannot read the input file"),
        "{r:?}"
    );
    assert!(r.stderr.contains("missing"), "{r:?}");
    let r = run(&[
        "call",
        &addr,
        "echo",
        "text",
        "--input",
        file.to_str().unwrap(),
    ]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("--input"), "{r:?}");

    let _ = std::fs::remove_dir_all(&dir);
    let r = run(&["shutdown", &addr]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(server.wait_exit().0.success());
}

/// A loopback tcp address nobody listens at (a port just freed).
fn dead_tcp_address() -> String {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    format!("tcp://127.0.0.1:{port}")
}

#[test]
fn call_to_a_dead_address_says_cannot_connect() {
    let tcp = dead_tcp_address();
    let path = std::env::temp_dir().join(format!(
        "courier-cli-test-{}-nobody.sock",
        std::process::id()
    ));
    let unix = format!("unix://{}", path.display());
    for addr in [tcp, unix] {
        let r = run(&["call", &addr, "hello", "a", "b"]);
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(r.stderr.starts_with("courier: "), "{r:?}");
        assert!(r.stderr.contains("cannot connect"), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
        let r = run(&["ping", &addr, "--count", "1"]);
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(r.stderr.contains("cannot connect"), "{r:?}");
    }
}

#[test]
fn bad_input_is_an_error_message_and_exit_1() {
    for args in [
        &["call", "not-an-address", "hello"][..],
        &["call", "carrier-pigeon://coop", "hello"][..],
        &["call", "shm://x", "hello"][..],
        &["call", "tcp://127.0.0.1:1", "sleep", "--u64", "soon"][..],
        &["serve", "--protocol", "carrier-pigeon"][..],
        &["serve", "--config", "{\"no_such_key\": 1}"][..],
        &["no-such-command"][..],
        &["call"][..],
    ] {
        let r = run(args);
        assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("courier: "), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
    }
    let r = run(&["--help"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(r.stdout.contains("demo"), "{r:?}");
}

#[test]
fn demo_runs_every_built_in_protocol() {
    let r = run(&["demo", "--calls", "50"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    for protocol in ["tcp", "unix"] {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {protocol} ")))
            .unwrap_or_else(|| panic!("no row for {protocol}:\n{}", r.stdout));
        assert!(row.contains(&format!("{protocol}://")), "{row}");
        assert!(row.contains("| ok "), "{row}");
        assert!(row.contains("exit 0"), "{row}");
    }
}

#[test]
fn demo_fails_for_a_protocol_that_is_not_built_in() {
    let r = run_with_table(
        &["demo", "--protocols", "tcp,ipoac", "--calls", "5"],
        "demo-missing",
        MISSING_PLUGIN_TABLE,
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("| tcp ") && l.contains("exit 0")),
        "{r:?}"
    );
    assert!(r.stderr.contains("demo over ipoac failed"), "{r:?}");
    assert!(r.stderr.contains("not built in"), "{r:?}");
}

/// Logs written to a pipe (or a file) are plain text: ANSI colour codes
/// only go to a terminal.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let addr = dead_tcp_address();
    for (env, args) in [
        (Some("debug"), vec!["call", &addr, "hello", "a", "b"]),
        (None, vec!["-vv", "call", &addr, "hello", "a", "b"]),
    ] {
        let mut cmd = courier();
        if let Some(level) = env {
            cmd.env("RUST_LOG", level);
        }
        // Whatever the caller's environment says about colours.
        cmd.env_remove("NO_COLOR");
        let r = run_cmd(cmd, &args, GUARD);
        assert_eq!(r.code(), Some(1), "{r:?}");
        assert!(r.stderr.contains("DEBUG"), "no debug log line: {r:?}");
        assert!(!r.stderr.contains("\x1b["), "colour codes in a pipe: {r:?}");
    }
}

/// The path `ping` says each reply took (`seq=N via PATH time=…`), one per
/// answered ping.
fn ping_paths(r: &Run) -> Vec<String> {
    r.stdout
        .lines()
        .filter(|l| l.starts_with("seq="))
        .map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "via")
                .nth(1)
                .unwrap_or_else(|| panic!("no path in {l:?}"))
                .to_owned()
        })
        .collect()
}

/// `serve --protocol tcp,shm` prints one address set; a client given the
/// set reaches it by shm (same host), one pinned to tcp (or given the tcp
/// part alone) by tcp; every subcommand takes the set.
#[test]
fn serve_on_an_address_set_and_ping_it_by_shm_or_tcp() {
    let mut server = Server::start(&["--protocol", "tcp,shm", "--enable-remote-shutdown"]);
    let set = server.address.clone();
    let parts: Vec<&str> = set.split(',').collect();
    assert_eq!(parts.len(), 3, "{set}");
    assert!(parts[0].starts_with("tcp://127.0.0.1:"), "{set}");
    assert!(parts[1].starts_with("shm://"), "{set}");
    // The engine's in-process path, of no use to another process.
    assert!(parts[2].starts_with("mem://"), "{set}");

    let r = run(&["ping", &set, "--count", "2"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(ping_paths(&r), vec![parts[1]; 2], "{r:?}");
    assert!(r.stdout.contains("2 sent, 2 answered"), "{r:?}");

    let r = run(&["ping", &set, "--count", "1", "--protocol", "tcp"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(ping_paths(&r), vec![parts[0]], "{r:?}");

    let r = run(&["ping", parts[0], "--count", "1"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(ping_paths(&r), vec![parts[0]], "{r:?}");

    let r = run(&["call", &set, "hello", "Matthieu", "Dorier"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "Good bye Matthieu\n", "{r:?}");
    assert_eq!(
        server.next_line().as_deref(),
        Some("Hello Matthieu Dorier!")
    );

    let r = run(&["shutdown", &set]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, format!("shutdown requested: {set}\n"), "{r:?}");
    assert!(server.wait_exit().0.success());
}

/// A full set as `--protocol` (or `--listen`): the listen address of each
/// protocol.
#[test]
fn serve_listens_on_a_set_of_full_addresses() {
    let mut server = Server::start(&[
        "--listen",
        "tcp://127.0.0.1:0,shm",
        "--enable-remote-shutdown",
    ]);
    let set = server.address.clone();
    assert!(set.starts_with("tcp://127.0.0.1:"), "{set}");
    assert!(set.contains(",shm://"), "{set}");
    let r = run(&["ping", &set, "--count", "1"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert!(ping_paths(&r)[0].starts_with("shm://"), "{r:?}");
    assert_eq!(run(&["shutdown", &set]).code(), Some(0));
    assert!(server.wait_exit().0.success());
}

#[test]
fn a_bad_address_set_is_an_error_that_says_what_is_wrong() {
    for (set, says) in [
        ("tcp://127.0.0.1:1,,shm://x", "part 2 is empty"),
        ("tcp://127.0.0.1:1,tcp://127.0.0.1:1", "is given twice"),
        (
            "tcp://127.0.0.1:1,pigeon://coop",
            "unknown protocol 'pigeon' (known: ",
        ),
        (
            "tcp://127.0.0.1:1,not an address",
            "part 2 ('not an address')",
        ),
    ] {
        for args in [
            &["ping", set][..],
            &["call", set, "hello"][..],
            &["shutdown", set][..],
        ] {
            let r = run(args);
            assert_eq!(r.code(), Some(1), "{args:?}: {r:?}");
            assert!(
                r.stderr
                    .starts_with(&format!("courier: invalid address set '{set}': ")),
                "{args:?}: {r:?}"
            );
            assert!(r.stderr.contains(says), "{args:?}: {r:?}");
            assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        }
    }
    // Nothing listens at any part: each path tried is named.
    let tcp = dead_tcp_address();
    let set = format!("{tcp},shm://courier-nobody-0");
    let r = run(&["ping", &set, "--count", "1"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("no path to {set} could connect")),
        "{r:?}"
    );
    assert!(r.stderr.contains("shm://courier-nobody-0: "), "{r:?}");
    assert!(r.stderr.contains(&format!("{tcp}: ")), "{r:?}");
}
