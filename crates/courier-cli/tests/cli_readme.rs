//! The README's block of `courier` commands, run as a user pastes it into a
//! shell, with the built `courier` first on the PATH: the README cannot
//! drift from what the command does.
//!
//! Timeouts here are hang guards only.

#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long the whole block may take (it runs `bench --quick` and `demo`).
const GUARD: Duration = Duration::from_secs(300);

/// The first ```sh block of the README's section "The `courier` command".
fn courier_block(readme: &str) -> String {
    let (_, section) = readme
        .split_once("\n## The `courier` command\n")
        .expect("README.md has no section \"The `courier` command\"");
    let section = section.split("\n## ").next().unwrap_or(section);
    let (_, body) = section
        .split_once("```sh\n")
        .expect("the section has no ```sh block");
    let (block, _) = body.split_once("\n```").expect("the block is not closed");
    block.to_owned()
}

/// The PATH with the directory of the built `courier` first.
fn path_with_courier() -> std::ffi::OsString {
    let bin: PathBuf = Path::new(env!("CARGO_BIN_EXE_courier"))
        .parent()
        .unwrap()
        .to_owned();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest))).unwrap()
}

#[test]
fn readme_courier_block_runs_as_pasted() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let block = courier_block(&readme);
    assert!(block.contains("courier serve"), "{block}");

    let work = std::env::temp_dir().join(format!("courier-cli-readme-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let mut child = Command::new("sh")
        // -e: the first command that fails ends the block, and fails the test.
        .arg("-ec")
        .arg(&block)
        .current_dir(&work)
        .env("PATH", path_with_courier())
        .env_remove("RUST_LOG")
        .env_remove("COURIER_PROTOCOLS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A process group of its own, with what the block starts in the
        // background: if the block fails, the group is killed as one.
        .process_group(0)
        .spawn()
        .expect("spawn sh");
    let group = child.id();
    let stdout = common::read_all(child.stdout.take().unwrap());
    let stderr = common::read_all(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(GUARD);
    let succeeded = matches!(&status, Ok(Ok(s)) if s.success());
    if !succeeded {
        // The block stopped half-way (or hangs): a service it started in
        // the background may still run.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .stderr(Stdio::null())
            .status();
    }
    // The pipes close once every process of the block has exited, the
    // detached service included.
    let out = stdout
        .recv_timeout(GUARD)
        .expect("the block's stdout stays open");
    let err = stderr
        .recv_timeout(GUARD)
        .expect("the block's stderr stays open");
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        succeeded,
        "the README block failed ({status:?}):\n{block}\n--- stdout:\n{out}\n--- stderr:\n{err}"
    );

    let lines: Vec<&str> = out.lines().collect();
    for expected in ["Good bye Matthieu", "any bytes"] {
        assert!(lines.contains(&expected), "no line {expected:?}:\n{out}");
    }
    assert!(out.contains("10 sent, 10 answered"), "{out}");
    assert!(out.contains("100 calls, 100 answered"), "{out}");
    // stats: the echo calls in the table; top: two frames.
    let echo: Vec<&str> = lines
        .iter()
        .find(|l| l.starts_with("| echo "))
        .unwrap_or_else(|| panic!("no stats row for echo:\n{out}"))
        .split('|')
        .map(str::trim)
        .collect();
    // ["", rpc, provider, calls, ...]: --input - once, then 100.
    assert_eq!(echo[3], "101", "{echo:?}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("courier top - unix://"))
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("shutdown requested: unix://"), "{out}");
    // The address set: both pings went by shm, and the set was shut down.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("seq=") && l.contains(" via shm://"))
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("shutdown requested: tcp://"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| tcp,shm ") && l.contains("engine")),
        "no bench row for the set tcp,shm:\n{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("tcp,shm: an address set") && l.contains("connected by shm")),
        "{out}"
    );
    // The detached service greeted on the terminal (here, stderr).
    assert!(err.contains("Hello Matthieu Dorier!"), "{err}");
    // bench and demo printed their tables.
    for protocol in ["shm", "tcp"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("| {protocol} ")) && l.contains("engine")),
            "no bench row for {protocol}:\n{out}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("| unix ") && l.contains("exit 0")),
        "no demo row for unix:\n{out}"
    );
}
