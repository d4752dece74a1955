//! The seed's two programs run as a user runs them: `hello_server <proto>`
//! in one process, `hello_client <address>` in another (the `courier`
//! crate's examples, built by `cargo test --workspace` or
//! `cargo build --examples`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_conformance::{dead_address, example_path, malformed_address, run_to_end, Process};

/// Server and client on `proto`: the client prints "Good bye Matthieu" and
/// exits 0; the server prints "Hello Matthieu Dorier!" and, shut down by the
/// client, exits 0.
async fn hello_server_and_client(proto: &str) {
    let mut server = Process::spawn(&example_path("hello_server"), &[proto]);
    let address = server.expect_line("Service running at ").await;
    assert!(address.starts_with(&format!("{proto}://")), "{address}");

    let (status, stdout, stderr) = run_to_end(&example_path("hello_client"), &[&address]).await;
    assert!(
        status.success(),
        "hello_client: {status:?}; stderr: {stderr}"
    );
    assert_eq!(stdout, "Good bye Matthieu");

    let said = server.remaining_lines().await;
    let status = server.wait().await;
    let stderr = server.take_stderr().await;
    assert_eq!(
        said,
        ["Hello Matthieu Dorier!"],
        "server stdout; stderr: {stderr}"
    );
    assert!(
        status.success(),
        "hello_server: {status:?}; stderr: {stderr}"
    );
}

/// Runs `hello_client args` and checks it fails (exit 1, not a hang) with
/// `needle` in its error message on stderr and nothing on stdout.
async fn client_fails(args: &[&str], needle: &str) {
    let (status, stdout, stderr) = run_to_end(&example_path("hello_client"), args).await;
    assert_eq!(
        status.code(),
        Some(1),
        "hello_client {args:?}: {status:?}; stderr: {stderr}"
    );
    assert!(
        stdout.is_empty(),
        "hello_client {args:?} printed {stdout:?}"
    );
    assert!(stderr.starts_with("hello_client: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// A plugin part the transport refuses (`tcp://127.0.0.1` without a port,
/// `unix://relative/path`).
async fn client_with_malformed_address(proto: &str) {
    let address = malformed_address(proto);
    client_fails(&[&address], "invalid address").await;
}

/// An address nobody listens at: refused at once.
async fn client_with_dead_address(proto: &str) {
    let address = dead_address(proto);
    client_fails(&[&address], &format!("cannot connect to {address}")).await;
}

macro_rules! example_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread")]
            async fn hello_server_and_client() {
                super::hello_server_and_client(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn client_with_malformed_address() {
                super::client_with_malformed_address(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn client_with_dead_address() {
                super::client_with_dead_address(PROTO).await;
            }
        }
    )*};
}

courier_conformance::for_each_protocol!(example_tests);

/// Not an address at all.
#[tokio::test(flavor = "multi_thread")]
async fn client_with_address_without_protocol() {
    client_fails(&["127.0.0.1:7000"], "invalid address '127.0.0.1:7000'").await;
}

/// An address of a protocol nobody knows: the message lists the known ones.
#[tokio::test(flavor = "multi_thread")]
async fn client_with_unknown_protocol() {
    client_fails(
        &["nosuchproto://somewhere"],
        "unknown protocol 'nosuchproto'",
    )
    .await;
}

/// No argument: usage on stderr, exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn client_without_arguments() {
    let (status, stdout, stderr) = run_to_end(&example_path("hello_client"), &[]).await;
    assert_eq!(status.code(), Some(2), "{status:?}; stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(stderr.contains("usage: hello_client <ADDRESS>"), "{stderr}");
}

/// `hello_server` with an unknown protocol exits 1 with a message listing
/// the known protocols (every protocol of the suite among them).
#[tokio::test(flavor = "multi_thread")]
async fn server_with_unknown_protocol() {
    let (status, stdout, stderr) =
        run_to_end(&example_path("hello_server"), &["nosuchproto"]).await;
    assert_eq!(status.code(), Some(1), "{status:?}; stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout:?}");
    assert!(
        stderr.contains("unknown protocol 'nosuchproto'"),
        "{stderr}"
    );
    assert!(stderr.contains("known protocols"), "{stderr}");
    for proto in courier_conformance::PROTOCOLS {
        assert!(stderr.contains(proto), "{proto} missing from: {stderr}");
    }
}
