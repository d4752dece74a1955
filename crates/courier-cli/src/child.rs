//! The child processes of the `courier` command (`demo`'s servers,
//! `bench`'s peers, `serve --detach`'s service): waiting for the line that
//! says where a child listens, and reading the rest of its output.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, BufReader, Lines};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::{CliResult, Error};

/// Starts `cmd` with its stdout and stderr piped (and stdin piped too, if
/// `stdin`), killed when its handle is dropped. `what` names it in the
/// error.
pub(crate) fn spawn_piped(mut cmd: Command, stdin: bool, what: &str) -> CliResult<Child> {
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn()
        .map_err(|e| Error::io(format!("start {what}"), e))
}

/// How waiting for a child's ready line ended.
#[derive(Debug)]
pub(crate) enum Ready {
    /// The child printed the ready line, with this address.
    At(String),
    /// Its output ended first: it exited, or closed its stdout.
    Ended,
    /// Reading its output failed.
    Failed(std::io::Error),
    /// No ready line within the guard.
    Silent,
}

/// Reads `lines` until one starts with `prefix` (the rest of it, trimmed,
/// is the address), for at most `guard`. The lines before it are logged at
/// debug level, as `[what] line`.
pub(crate) async fn wait_ready<R>(
    lines: &mut Lines<BufReader<R>>,
    prefix: &str,
    what: &str,
    guard: Duration,
) -> Ready
where
    R: AsyncRead + Unpin,
{
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(address) = line.strip_prefix(prefix) {
                return Ok(Some(address.trim().to_owned()));
            }
            tracing::debug!("[{what}] {line}");
        }
        Ok::<_, std::io::Error>(None)
    };
    match tokio::time::timeout(guard, read).await {
        Ok(Ok(Some(address))) => Ready::At(address),
        Ok(Ok(None)) => Ready::Ended,
        Ok(Err(e)) => Ready::Failed(e),
        Err(_) => Ready::Silent,
    }
}

/// How a child whose stdout ended (before its ready line) has exited, for
/// an error message: its exit status or, if it has not exited within
/// `guard`, "its stdout closed", after killing it.
pub(crate) async fn exit_status(child: &mut Child, guard: Duration) -> String {
    match tokio::time::timeout(guard, child.wait()).await {
        Ok(Ok(status)) => status.to_string(),
        _ => {
            if let Err(e) = child.kill().await {
                tracing::warn!("cannot kill the child process (pid {:?}): {e}", child.id());
            }
            "its stdout closed".to_owned()
        }
    }
}

/// Reads a child's output to the end (so the child never blocks on a full
/// pipe), logging each line, and returns the lines.
pub(crate) fn drain<R>(mut lines: Lines<BufReader<R>>, what: String) -> JoinHandle<Vec<String>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!("[{what}] {line}");
            all.push(line);
        }
        all
    })
}

/// The last lines of a child's stderr, for an error message
/// ([`crate::Error::with_stderr`]).
pub(crate) async fn stderr_tail(task: JoinHandle<Vec<String>>) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(lines)) if !lines.is_empty() => {
            let from = lines.len().saturating_sub(5);
            Some(lines[from..].join(" / "))
        }
        _ => None,
    }
}
