//! `courier serve --group FILE` and `courier group view`, as a user runs
//! them: services on one host make and join a group through its file; one
//! is killed (SIGKILL) and restarted at its address; one is stopped
//! (SIGTERM) and leaves; one is shut down by `courier shutdown` and leaves
//! too; all the while `courier group view --watch` prints each change.
//! Each step waits for what `courier group view` prints, polling it under
//! a hang guard; nothing asserts a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{courier, lines, run_cmd, Run};

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How long any one step may take before the test gives up on it.
const GUARD: Duration = Duration::from_secs(60);

/// Fast group times: a death is known within about a second.
const FAST: &str = r#"{"probe_period_ms": 200, "probe_timeout_ms": 80, "suspect_to_down_ms": 600, "gossip_period_ms": 100, "announce_to_down_period_ms": 1000}"#;

/// A `courier serve --group` process; killed on drop unless it exited.
struct Member {
    child: Child,
    address: String,
    _stdout: Receiver<String>,
    exited: bool,
}

impl Member {
    fn start(file: &Path, extra: &[&str]) -> Self {
        let mut child = courier()
            .arg("serve")
            .arg("--group")
            .arg(file)
            .args(["--group-options", FAST])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier serve --group");
        let stdout = lines(child.stdout.take().unwrap());
        let first = stdout
            .recv_timeout(GUARD)
            .expect("serve --group printed no ready line");
        let address = first
            .strip_prefix("Service running at ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {first:?}"))
            .to_owned();
        Self {
            child,
            address,
            _stdout: stdout,
            exited: false,
        }
    }

    fn stop_with(&mut self, signal: &str) {
        let pid = self.child.id().to_string();
        let r = run_cmd(std::process::Command::new("kill"), &[signal, &pid], GUARD);
        assert_eq!(r.code(), Some(0), "{r:?}");
        let status = self.child.wait().unwrap();
        self.exited = true;
        assert!(status.success(), "{signal}: {status:?}");
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the member");
        self.child.wait().expect("reap the member");
        self.exited = true;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn view(target: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["group", "view", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cmd(courier(), &args, GUARD)
}

/// `courier group view FILE [extra]` as (address, state) pairs.
fn members(file: &Path, extra: &[&str]) -> Option<Vec<(String, String)>> {
    let r = view(file, extra);
    if r.code() != Some(0) {
        return None;
    }
    let mut pairs: Vec<(String, String)> = r
        .stdout
        .lines()
        .map(|l| {
            let (address, state) = l.split_once(' ').expect("ADDRESS STATE");
            (address.to_owned(), state.to_owned())
        })
        .collect();
    pairs.sort();
    Some(pairs)
}

/// Polls `courier group view FILE [extra]` until its members satisfy `ok`.
fn wait_members(file: &Path, extra: &[&str], what: &str, ok: impl Fn(&[(String, String)]) -> bool) {
    let deadline = Instant::now() + GUARD;
    let mut last = None;
    while Instant::now() < deadline {
        last = members(file, extra);
        if last.as_deref().is_some_and(&ok) {
            return;
        }
        // A poll interval (each poll is a process), not a synchronisation.
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("`courier group view` never showed {what} within {GUARD:?}; last: {last:?}");
}

/// `courier group view FILE --watch`, its stdout a line at a time.
struct Watcher {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watcher {
    fn start(file: &Path) -> Self {
        let mut child = courier()
            .args(["group", "view", "--watch", "--interval-ms", "50"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn courier group view --watch");
        let lines = lines(child.stdout.take().unwrap());
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until it has printed a line `+T.Ts <what>` (now or earlier),
    /// and returns T.
    fn wait_for(&mut self, what: &str) -> f64 {
        let deadline = Instant::now() + GUARD;
        let mut next = 0;
        loop {
            for line in &self.seen[next..] {
                let (stamp, rest) = line.split_once(' ').expect("+T.Ts ADDRESS STATE");
                if rest == what {
                    return stamp
                        .strip_prefix('+')
                        .and_then(|s| s.strip_suffix('s'))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("no time stamp in {line:?}"));
                }
            }
            next = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("--watch never printed {what:?}; it printed {:?}", self.seen);
            };
            self.seen.push(line);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state_of<'a>(members: &'a [(String, String)], address: &str) -> Option<&'a str> {
    members
        .iter()
        .find(|(a, _)| a == address)
        .map(|(_, s)| s.as_str())
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("courier-cli-group-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn members_killed_restarted_stopped_and_shut_down_as_a_watcher_sees_them() {
    let dir = temp_dir("kill");
    let file = dir.join("kv.json");
    let a = Member::start(&file, &[]);
    assert!(file.exists(), "the first member writes the group file");
    let mut b = Member::start(&file, &[]);
    let mut c = Member::start(&file, &[]);
    let mut d = Member::start(&file, &["--enable-remote-shutdown"]);
    let all = [
        a.address.clone(),
        b.address.clone(),
        c.address.clone(),
        d.address.clone(),
    ];
    wait_members(&file, &[], "four live members", |m| {
        m.len() == 4 && all.iter().all(|x| state_of(m, x) == Some("alive"))
    });
    // The watcher prints the members it starts with, then each change.
    let mut watcher = Watcher::start(&file);
    for x in &all {
        watcher.wait_for(&format!("{x} alive"));
    }
    // Through an address too (each member has its own view: wait for A's),
    // and as JSON.
    wait_members(
        Path::new(&a.address),
        &[],
        "four live members, as A sees it",
        |m| m.len() == 4,
    );
    let r = view(Path::new(&a.address), &["--json"]);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["group"], "kv");
    assert_eq!(json["viewer"], a.address.as_str());
    assert_eq!(json["members"].as_array().unwrap().len(), 4);

    // B dies: down for the others, gone from the live list.
    b.kill();
    wait_members(&file, &["--all"], "the killed member down", |m| {
        state_of(m, &b.address) == Some("down")
    });
    let live = members(&file, &[]).unwrap();
    assert_eq!(state_of(&live, &b.address), None, "{live:?}");
    let down_at = watcher.wait_for(&format!("{} down", b.address));

    // B again, at the same address: alive again.
    let b_address = b.address.clone();
    let b = Member::start(&file, &["--listen", &b_address]);
    assert_eq!(b.address, b_address);
    wait_members(&file, &[], "the restarted member alive", |m| {
        m.len() == 4 && all.iter().all(|x| state_of(m, x) == Some("alive"))
    });
    let back_at = watcher.wait_for(&format!("{} alive (rejoined)", b.address));
    assert!(back_at >= down_at, "{:?}", watcher.seen);

    // C is stopped: it leaves, and says so.
    c.stop_with("-TERM");
    wait_members(&file, &["--all"], "the stopped member left", |m| {
        state_of(m, &c.address) == Some("left")
    });
    watcher.wait_for(&format!("{} left", c.address));

    // D is shut down by a client: it leaves too, rather than dying.
    let r = run_cmd(courier(), &["shutdown", &d.address], GUARD);
    assert_eq!(r.code(), Some(0), "{r:?}");
    let status = d.child.wait().unwrap();
    d.exited = true;
    assert!(status.success(), "{status:?}");
    watcher.wait_for(&format!("{} left", d.address));
    let everyone = members(&file, &["--all"]).unwrap();
    assert_eq!(
        state_of(&everyone, &d.address),
        Some("left"),
        "{everyone:?}"
    );
    drop((a, b, watcher));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn group_view_errors_name_the_file_or_address() {
    let dir = temp_dir("errors");
    let missing = dir.join("missing.json");
    let r = view(&missing, &[]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{}", r.stderr);

    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    let r = view(&bad, &[]);
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("malformed"), "{}", r.stderr);

    // A serve whose file is stale stops with an error naming it.
    let stale = dir.join("stale.json");
    std::fs::write(
        &stale,
        r#"{"group": "gone", "wire_version": 1, "members": ["tcp://127.0.0.1:9"]}"#,
    )
    .unwrap();
    let r = run_cmd(
        courier(),
        &[
            "serve",
            "--group",
            stale.to_str().unwrap(),
            "--group-options",
            FAST,
        ],
        GUARD,
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("stale"), "{}", r.stderr);
    assert!(r.stderr.contains(stale.to_str().unwrap()), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "no ready line: {}", r.stdout);

    // Bad options are refused before anything starts.
    let r = run_cmd(
        courier(),
        &[
            "serve",
            "--group",
            dir.join("new.json").to_str().unwrap(),
            "--group-options",
            r#"{"probe_period_ms": 0}"#,
        ],
        GUARD,
    );
    assert_eq!(r.code(), Some(1), "{r:?}");
    assert!(r.stderr.contains("probe_period_ms"), "{}", r.stderr);
    assert!(!dir.join("new.json").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
