//! The cross-transport conformance suite, run on every protocol of
//! `courier_conformance::for_each_protocol!` and on `mem`.
//!
//! The scenarios that any transport must pass live in the public
//! `courier-testkit` crate, which plugin authors run on their own transports
//! with the same one line used here (`courier_testkit::conformance_tests!`):
//! they appear as `tcp::transport_contract::…` and `tcp::engine::…`. This
//! file adds the scenarios that need protocol-specific knowledge (a
//! malformed or dead address of each protocol, a raw stream listener), as
//! `tcp::lookup_errors` and so on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use courier::{Engine, Error, TransportError};
use courier_conformance::{
    self as cc, assert_hello, call_hello, guard, register_hello, HANG_GUARD,
};
use courier_testkit::engine::register_echo_raw;
use tokio::io::AsyncReadExt;

/// Malformed addresses and addresses of another protocol are refused by
/// `lookup` with errors that say so.
async fn lookup_errors(proto: &str) {
    let client = cc::client(proto).await;
    let err = client.lookup("no-scheme-here").await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::InvalidAddress { .. })),
        "{err:?}"
    );
    let err = client.lookup("nosuchproto://somewhere").await.unwrap_err();
    match &err {
        Error::ProtocolMismatch {
            protocol, engine, ..
        } => {
            assert_eq!(protocol, "nosuchproto");
            assert_eq!(engine, proto);
        }
        other => panic!("expected ProtocolMismatch, got {other:?}"),
    }
    let err = client
        .lookup(&cc::malformed_address(proto))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::InvalidAddress { .. })),
        "{err:?}"
    );
}

/// An engine built on an explicit listen address serves there; a second
/// engine on the address it got is refused (address in use).
async fn listen_on_explicit_address(proto: &str) {
    let wanted = cc::listen_address(proto);
    let server = Engine::new(&wanted).await.unwrap();
    register_hello(&server);
    let address = server.address().to_string();
    assert!(address.starts_with(&format!("{proto}://")), "{address}");
    let config = server.config();
    assert_eq!(
        config["listen"].as_str(),
        Some(address.as_str()),
        "{config}"
    );
    // The same address again (without a quic certificate fingerprint, which
    // names the first engine's certificate): in use.
    let again = address.split('#').next().unwrap();
    let err = Engine::new(again).await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Listen { .. })),
        "{err:?}"
    );
    let client = cc::client(proto).await;
    let found = guard("lookup", client.lookup(&address)).await.unwrap();
    assert_hello(&client, &found).await;
    guard("finalize", server.finalize()).await;
}

// ---------------------------------------------------------------------------
// Providers and the RPC table.
// ---------------------------------------------------------------------------

/// The address of a finished engine: `lookup` fails with a connect error at
/// once, and a client that was connected gets an error too (not a hang).
async fn dead_server(proto: &str) {
    let server = cc::server(proto).await;
    register_hello(&server);
    let dead = server.address().to_string();
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&dead)).await.unwrap();
    // A round trip first, so the server is fully up before it finishes.
    assert_hello(&client, &address).await;
    guard("server finalize", server.finalize()).await;
    drop(server);

    let err = call_hello(&client, &address).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost { .. } | Error::Transport(TransportError::Connect { .. })
        ),
        "{err:?}"
    );
    let fresh = cc::client(proto).await;
    let err = guard("lookup of a dead server", fresh.lookup(&dead))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Connect { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains(&dead), "{err}");
    let err = guard(
        "lookup of a dead address",
        fresh.lookup(&cc::dead_address(proto)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Connect { .. })),
        "{err:?}"
    );
}

/// A call whose timeout fires while its request is still being written
/// leaves a half-written message: the connection is killed, and the next
/// call on the same address reconnects and works (regression test).
///
/// The server runs on a runtime nobody drives until the first call timed
/// out, so the 32 MiB request cannot be written within its timeout. (Stream
/// transports only: the kernel completes their connections without the
/// server's runtime; shm's handshake needs it.)
async fn timeout_during_send_then_next_call_works(proto: &str) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let p = proto.to_owned();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Engine::new(&p)).unwrap();
        register_hello(&server);
        register_echo_raw(&server);
        addr_tx.send(server.address().to_string()).unwrap();
        // Not driven until told: nothing is accepted or read meanwhile.
        let _ = go_rx.blocking_recv();
        rt.block_on(async move {
            let _ = stop_rx.await;
            drop(server);
        });
    });
    let server_address = addr_rx.recv_timeout(HANG_GUARD).unwrap();
    let client = cc::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    let big = vec![1u8; 32 << 20];
    let err = guard(
        "a call stuck sending",
        client
            .remote_raw("echo_raw")
            .on(&address)
            .timeout(Duration::from_millis(300))
            .call(&big),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    go_tx.send(()).unwrap();
    let next = call_hello(&client, &address).await;
    stop_tx.send(()).unwrap();
    tokio::task::spawn_blocking(move || server_thread.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        next.unwrap(),
        "Good bye Matthieu",
        "the call after a timeout mid-send failed"
    );
}

/// Finalizing the client while one of its calls is blocked writing a large
/// request (the peer reads no more) ends that call with `Finalized`
/// (regression test: it used to hang).
///
/// The peer is a raw listener the test controls: it reads the first MiB of
/// the request (so the call is certainly mid-write) and then stops reading.
async fn finalize_client_while_a_call_is_stuck_sending(proto: &str) {
    let (listener, peer_address) = cc::RawListener::bind(proto).await;
    let client = cc::client(proto).await;
    let (found, mut raw) = tokio::join!(client.lookup(&peer_address), listener.accept());
    let address = found.unwrap();
    let call = {
        let c = client.remote_raw("upload").on(&address);
        tokio::spawn(async move { c.call(&vec![0u8; 32 << 20]).await })
    };
    let mut first_mib = vec![0u8; 1 << 20];
    guard("the start of the request", raw.read_exact(&mut first_mib))
        .await
        .unwrap();
    guard("client finalize", client.finalize()).await;
    let result = guard("the call stuck sending", call).await.unwrap();
    assert!(matches!(result, Err(Error::Finalized)), "{result:?}");
}

// ---------------------------------------------------------------------------
// The blocking API.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// One test per (protocol, scenario).
// ---------------------------------------------------------------------------

macro_rules! local_scenarios {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let what = concat!(stringify!($name), " on ", module_path!());
            courier_testkit::run("multi_thread", what, super::$name(PROTO));
        }
    )*};
}

macro_rules! conformance_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            courier_testkit::conformance_tests!(PROTO);

            local_scenarios! {
                lookup_errors,
                listen_on_explicit_address,
                dead_server,
            }
        }
    )*};
}

courier_conformance::for_each_protocol!(conformance_tests);

/// The in-process transport: the testkit's scenarios only (its addresses
/// are names, not sockets; `courier-mem`'s own tests cover them).
mod mem {
    courier_testkit::conformance_tests!("mem");
}

/// The chaos layer with no options is a passthrough: the whole suite holds
/// through it, over a stream and a message transport.
mod chaos_tcp {
    courier_testkit::conformance_tests!("chaos+tcp");
}

#[cfg(target_os = "linux")]
mod chaos_shm {
    courier_testkit::conformance_tests!("chaos+shm");
}

/// Scenarios whose peer is a raw byte-stream listener the test controls.
macro_rules! stream_conformance_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            local_scenarios! {
                finalize_client_while_a_call_is_stuck_sending,
                timeout_during_send_then_next_call_works,
            }
        }
    )*};
}

mod stream_only {
    pub(super) use super::{
        finalize_client_while_a_call_is_stuck_sending, timeout_during_send_then_next_call_works,
    };
    courier_conformance::for_each_stream_protocol!(stream_conformance_tests);
}

/// The suite's protocol list is what the default registry can build.
#[test]
fn every_listed_protocol_is_available() {
    let registry = courier::default_registry().unwrap();
    for proto in courier_conformance::PROTOCOLS.iter().chain(&["mem"]) {
        let entry = registry
            .resolve(proto)
            .unwrap_or_else(|e| panic!("{proto}: {e}"));
        assert!(
            registry.is_available(&entry),
            "{proto} has no plugin in this build"
        );
    }
}
