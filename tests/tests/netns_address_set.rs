//! An address set across network namespaces (issue 20): a server in one
//! namespace listens on `tcp://<its veth address>:0,shm` and prints one
//! address set. A client process in another namespace, speaking tcp and
//! shm, looks the set up: shm comes first (same host), but its rendezvous
//! is an abstract unix socket, and those are per network namespace, so
//! that path fails and the connection takes tcp. A client process in the
//! server's namespace takes shm. Each answers the path with
//! `Address::path`.
//!
//! The namespaces and the veth pair are the test's own
//! (`courier_conformance::netns`), removed by a guard even when the test
//! fails. Making them needs root (CAP_NET_ADMIN) and `ip` (iproute2), so
//! the test is `#[ignore]`d: `cargo test --workspace` lists it as ignored,
//! never as passed. `.ci/run` (root) runs it with `--ignored`; asked for
//! like that, it fails, saying why, if it cannot set up its network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;

use courier_conformance::guard;
use courier_conformance::netns::{missing_ip, serve_in, Netns};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The clients' call and connect timeout, in milliseconds: a bound on a
/// wait, which no assertion compares a duration with.
const TIMEOUT_MS: &str = "5000";

/// Starts `netns_client` in namespace `ns` for `address`, asks it `path`,
/// and returns the answer (`OK <path>` or `ERR <message>`).
async fn path_from(ns: &str, address: &str) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_netns_client")])
        .args([address, TIMEOUT_MS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    stdin.write_all(b"path\n").await.unwrap();
    // Its answers, then the end of its output once its stdin is closed.
    drop(stdin);
    while let Some(line) = guard("a line from netns_client", stdout.next_line())
        .await
        .unwrap()
    {
        lines.push(line);
    }
    assert_eq!(
        lines.first().map(String::as_str),
        Some("READY"),
        "netns_client did not start (its stderr says why): {lines:?}"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let answer = lines.pop().unwrap();
    let status = guard("netns_client to exit", child.wait()).await.unwrap();
    assert!(status.success(), "netns_client exited with {status}");
    answer
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and ip (network namespaces): run by .ci/run with --ignored"]
async fn a_set_is_reached_by_tcp_from_another_namespace_and_by_shm_from_the_same() {
    if let Some(why) = missing_ip() {
        panic!("the address-set namespace test cannot run here: {why}");
    }
    let net = Netns::create().unwrap_or_else(|why| {
        panic!("the address-set namespace test: cannot create namespaces here (root needed): {why}")
    });
    let listen = format!("tcp://{}:0,shm", net.server_ip);
    let (mut server, set) = serve_in(
        &net.server_ns,
        env!("CARGO_BIN_EXE_conformance_server"),
        &listen,
    )
    .await;
    let parts: Vec<&str> = set.split(',').collect();
    let tcp = format!("tcp://{}:", net.server_ip);
    assert!(parts[0].starts_with(&tcp), "{set}");
    assert!(parts[1].starts_with("shm://"), "{set}");
    // The server's in-process path, of no use to the clients.
    assert_eq!(parts.len(), 3, "{set}");
    assert!(parts[2].starts_with("mem://"), "{set}");

    // Another namespace: the shm part's socket is not there; tcp is.
    let across = path_from(&net.client_ns, &set).await;
    assert_eq!(across, format!("OK {}", parts[0]), "from {}", net.client_ns);

    // The server's namespace: the same host, the same sockets: shm.
    let same = path_from(&net.server_ns, &set).await;
    assert_eq!(same, format!("OK {}", parts[1]), "from {}", net.server_ns);

    server.child.kill().await.unwrap();
    drop(net);
}
