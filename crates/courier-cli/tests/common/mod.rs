//! What the CLI's integration tests share: running `courier` to completion
//! under a hang guard and looking at what it printed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

/// The `courier` binary, with no logging and no user protocol table.
pub(crate) fn courier() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_courier"));
    cmd.env_remove("RUST_LOG").env_remove("COURIER_PROTOCOLS");
    cmd
}

/// What a finished command did.
#[derive(Debug)]
pub(crate) struct Run {
    pub status: ExitStatus,
    /// Standard output, as text (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard output, byte for byte.
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The table rows (lines starting with "| "), as cells, header excluded.
    pub(crate) fn rows(&self) -> Vec<Vec<String>> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| protocol "))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            })
            .collect()
    }
}

/// Reads a pipe to its end on a thread.
pub(crate) fn read_all(pipe: impl Read + Send + 'static) -> Receiver<String> {
    read_with(pipe, |buf| String::from_utf8_lossy(&buf).into_owned())
}

/// Reads a pipe to its end on a thread, byte for byte.
pub(crate) fn read_all_bytes(pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    read_with(pipe, |buf| buf)
}

fn read_with<T: Send + 'static>(
    mut pipe: impl Read + Send + 'static,
    convert: impl FnOnce(Vec<u8>) -> T + Send + 'static,
) -> Receiver<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        let _ = tx.send(convert(buf));
    });
    rx
}

/// Runs `cmd ARGS` to completion; kills it if it outlives `guard` (a hang
/// guard, never a timing assertion).
pub(crate) fn run_cmd(cmd: Command, args: &[&str], guard: Duration) -> Run {
    run_cmd_with_input(cmd, args, None, guard)
}

/// [`run_cmd`], with `input` written to the command's standard input (then
/// closed) when given; otherwise its standard input is empty.
pub(crate) fn run_cmd_with_input(
    mut cmd: Command,
    args: &[&str],
    input: Option<Vec<u8>>,
    guard: Duration,
) -> Run {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn courier");
    if let (Some(input), Some(mut pipe)) = (input, child.stdin.take()) {
        // On a thread, so that a command writing before it has read all
        // its input cannot block the test; dropping the pipe closes it.
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = read_all_bytes(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    // The pipes close when the process exits.
    let deadline = Instant::now() + guard;
    let out = stdout.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let err = stderr.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let (Ok(stdout), Ok(stderr)) = (out, err) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "`courier {}` did not finish within {guard:?}",
            args.join(" ")
        );
    };
    let status = child.wait().expect("wait for courier");
    Run {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stdout_bytes: stdout,
        stderr,
    }
}

/// Runs `courier ARGS` with `$COURIER_PROTOCOLS` set to `table` if given.
pub(crate) fn run_with(args: &[&str], table: Option<&Path>, guard: Duration) -> Run {
    let mut cmd = courier();
    if let Some(t) = table {
        cmd.env("COURIER_PROTOCOLS", t);
    }
    run_cmd(cmd, args, guard)
}

/// Sends each line of `pipe` on the returned channel, from a thread (a
/// child's stdout or stderr, read while the test waits on the channel).
pub(crate) fn lines(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
