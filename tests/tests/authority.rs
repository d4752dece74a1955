//! Who may talk to a server (`docs/security.md`), tried from a process of
//! another user: the unix socket file is owner-only, so another uid cannot
//! connect; the shm handshake accepts only the server's own uid (and root);
//! plain tcp accepts anyone who can reach the port (the control: it shows
//! the other-uid client does work when nothing stops it). And a shm segment
//! is an anonymous memfd handed over the handshake socket, never a name in
//! `/dev/shm` that another client could open.
//!
//! The other user is `nobody` (uid 65534), by `setpriv`; this needs root,
//! so the cross-user tests are `#[ignore]`d: `cargo test --workspace` lists
//! them as ignored, never as passed. `.ci/run` (root) runs them with
//! `cargo test -p courier-conformance --test authority -- --ignored`;
//! asked for like that, a test that cannot switch user fails, saying why.
//! Other checks of authority
//! live where they belong: socket file and directory modes in the unix
//! plugin's unit tests, the shm handshake's refusals in the shm plugin's
//! tests, a forged quic fingerprint in `bad_input.rs`, remote shutdown
//! refused by default in `conformance.rs` and `greedy_peers.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use courier_conformance::{self as cc, assert_hello, register_hello, run_to_end};

const NOBODY: &str = "65534";

fn can_switch_user() -> Result<(), String> {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .map_err(|e| format!("setpriv is missing: {e}"))?;
    Ok(())
}

/// Runs `netns_client <address>` as uid 65534: whether it got through
/// (printed READY), and its stderr.
async fn call_as_nobody(address: &str) -> (bool, String) {
    let (status, stdout, stderr) = run_to_end(
        Path::new("setpriv"),
        &[
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            env!("CARGO_BIN_EXE_netns_client"),
            address,
            "2000",
        ],
    )
    .await;
    let ready = stdout.lines().any(|l| l == "READY");
    assert!(
        ready == status.success(),
        "READY but failed, or the reverse: {status:?} {stdout} {stderr}"
    );
    (ready, stderr)
}

/// Serves `proto`, calls it as `nobody`: whether that got through, and its
/// stderr. Panics if this process cannot switch user.
async fn other_user(proto: &str) -> (bool, String) {
    if let Err(why) = can_switch_user() {
        panic!("{proto} from another user cannot run here: {why}");
    }
    let server = cc::server(proto).await;
    register_hello(&server);
    let result = call_as_nobody(&server.address().to_string()).await;
    // The server's own user is still served.
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    result
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and setpriv (a client as uid 65534): run by .ci/run with --ignored"]
async fn tcp_is_open_to_other_users() {
    let (ready, stderr) = other_user("tcp").await;
    assert!(ready, "plain tcp refused another user: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and setpriv (a client as uid 65534): run by .ci/run with --ignored"]
async fn unix_socket_refuses_other_users() {
    let (ready, stderr) = other_user("unix").await;
    assert!(!ready, "another user connected to a unix socket");
    assert!(stderr.contains("ermission denied"), "{stderr}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and setpriv (a client as uid 65534): run by .ci/run with --ignored"]
async fn shm_refuses_other_users() {
    let (ready, stderr) = other_user("shm").await;
    assert!(!ready, "another user got a shm connection");
    // The server refuses on the socket's credentials before it reads
    // the client's hello; the client reports the refusal's reason even
    // when its hello met a broken pipe.
    assert!(stderr.contains("uid 65534"), "{stderr}");
}

#[cfg(target_os = "linux")]
fn dev_shm_entries() -> usize {
    std::fs::read_dir("/dev/shm").map_or(0, Iterator::count)
}

#[cfg(target_os = "linux")]
fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}

/// Two shm clients of one server: each has its own segment (mapped here,
/// in this one process, by both sides), and none of them has a name in
/// `/dev/shm`.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn shm_segments_have_no_name() {
    let named = dev_shm_entries();
    let maps = memfd_mappings();
    let server = cc::server("shm").await;
    register_hello(&server);
    let a = cc::client("shm").await;
    let b = cc::client("shm").await;
    let to_a = cc::lookup(&a, &server).await;
    let to_b = cc::lookup(&b, &server).await;
    assert_hello(&a, &to_a).await;
    assert_hello(&b, &to_b).await;
    assert!(
        memfd_mappings() >= maps + 2,
        "the two connections do not have segments of their own"
    );
    assert_eq!(dev_shm_entries(), named, "a segment got a name in /dev/shm");
}
