//! Every call bounded (issue 16), as a user sees it from the command line:
//! three processes, `courier call` → `courier serve` A (`relay`) →
//! `courier serve` B (`sleep`). The call's `--timeout-ms` passes; A's
//! handler is cancelled, which drops its relayed call and cancels B's
//! `sleep`; both servers say so on stderr at their default log level.
//!
//! The servers' logs are read line by line until the line comes; the
//! timeouts here are hang guards only, nothing waits on a sleep and no
//! outcome depends on how fast anything was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{courier, lines, run_cmd, Run};

use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

/// How long any one command, or the wait for one log line, may take
/// before the test gives up on it.
const GUARD: Duration = Duration::from_secs(60);

/// Runs `courier ARGS` to completion; kills it if it outlives the guard.
fn run(args: &[&str]) -> Run {
    run_cmd(courier(), args, GUARD)
}

/// A `courier serve` child process, with its default logging (no `-v`, no
/// `RUST_LOG`), its stdout and stderr read line by line; shut down on drop.
struct Server {
    child: Child,
    address: String,
    stderr: Receiver<String>,
    /// The stderr lines read so far, for a failure's message.
    seen: Vec<String>,
}

impl Server {
    fn start(protocol: &str) -> Self {
        let mut child = courier()
            .args(["serve", "--protocol", protocol, "--enable-remote-shutdown"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn courier serve");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        let first = stdout.recv_timeout(GUARD);
        let mut server = Self {
            child,
            address: String::new(),
            stderr,
            seen: Vec::new(),
        };
        let first = first.unwrap_or_else(|e| {
            server.drain();
            panic!(
                "serve --protocol {protocol} printed no address ({e}); stderr: {:?}",
                server.seen
            )
        });
        server.address = first
            .strip_prefix("Service running at ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_owned();
        // Its stdout (hello's greetings) is not looked at: read it to the end.
        thread::spawn(move || while stdout.recv().is_ok() {});
        server
    }

    /// Reads stderr until a line holds every one of `needles`; returns it.
    fn wait_for_log(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = needles.iter().all(|n| line.contains(n));
                    self.seen.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "{}: no log line with {needles:?} ({e}); stderr so far: {:#?}",
                    self.address, self.seen
                ),
            }
        }
    }

    /// Keeps what stderr holds already (after a failure).
    fn drain(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push(line);
        }
    }
}

impl Drop for Server {
    /// Shuts the service down the way a user would (it finalizes, and a
    /// unix server removes its socket's folder); kills it only if that
    /// fails.
    fn drop(&mut self) {
        let asked = courier()
            .args(["shutdown", &self.address, "--timeout-ms", "10000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !asked {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `courier call A relay -- B RPC ARGS`: the call A's `relay` makes.
fn relay_args<'a>(a: &'a str, b: &'a str, rest: &[&'a str], timeout_ms: &'a str) -> Vec<&'a str> {
    let mut args = vec!["call", a, "relay", "--timeout-ms", timeout_ms, "--", b];
    args.extend_from_slice(rest);
    args
}

fn cancel_chain(protocol: &str) {
    let mut a = Server::start(protocol);
    let mut b = Server::start(protocol);
    let (at_a, at_b) = (a.address.clone(), b.address.clone());

    // The relay relays: hello at B, through A.
    let r = run(&relay_args(
        &at_a,
        &at_b,
        &["hello", "Matthieu", "Dorier"],
        "20000",
    ));
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "Good bye Matthieu\n", "{r:?}");

    // A sleep far longer than the call's timeout: the call times out, and
    // both handlers are cancelled (A's by its caller or its deadline, B's
    // by A's cancel or its own deadline, whichever came first).
    let r = run(&relay_args(
        &at_a,
        &at_b,
        &["sleep", "--u64", "3600000"],
        "200",
    ));
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("timed out"), "{r:?}");
    let line = a.wait_for_log(&["INFO", "handler cancelled", "rpc=relay"]);
    assert!(line.contains("courier::handler"), "{line}");
    let line = b.wait_for_log(&["INFO", "handler cancelled", "rpc=sleep"]);
    assert!(line.contains("courier::handler"), "{line}");

    // Both still serve (echo sends back the one string it got).
    let r = run(&relay_args(&at_a, &at_b, &["echo", "still here"], "20000"));
    assert_eq!(r.code(), Some(0), "{r:?}");
    assert_eq!(r.stdout, "still here\n", "{r:?}");
    // No handler failed, or was answered after it was cancelled (what
    // stderr holds by now: the logs of a connection closed later, such as
    // a QUIC idle timeout, are not this test's business).
    a.drain();
    b.drain();
    for s in [&a, &b] {
        assert!(
            !s.seen
                .iter()
                .any(|l| l.contains("courier::handler") && !l.contains("INFO")),
            "{}: {:#?}",
            s.address,
            s.seen
        );
    }
}

#[test]
fn timeout_cancels_the_chain_over_tcp() {
    cancel_chain("tcp");
}

#[test]
fn timeout_cancels_the_chain_over_unix() {
    cancel_chain("unix");
}

#[test]
fn timeout_cancels_the_chain_over_quic() {
    cancel_chain("quic");
}

#[test]
fn timeout_cancels_the_chain_over_shm() {
    cancel_chain("shm");
}

/// The relay's own errors reach the caller: bad arguments, an RPC that B
/// does not have, a server that is not there.
#[test]
fn relay_errors_reach_the_caller() {
    let a = Server::start("tcp");
    let r = run(&["call", &a.address, "relay", "only-an-address"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains("relay takes strings: ADDR2 RPC [ARGS]"),
        "{r:?}"
    );

    let b = Server::start("tcp");
    let r = run(&["call", &a.address, "relay", &b.address, "no_such_rpc"]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("no such RPC 'no_such_rpc'"), "{r:?}");

    // A unix address, for a tcp service: another protocol.
    let r = run(&[
        "call",
        &a.address,
        "relay",
        "unix:///nonexistent/engine.sock",
        "hello",
    ]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(
        r.stderr
            .contains("relay to unix:///nonexistent/engine.sock"),
        "{r:?}"
    );
}
