//! Address sets (`docs/transports.md`, "Address sets"): an engine built
//! for several protocols listens on each and prints one set; a lookup of
//! the set takes the fastest path that connects: the in-process one in the
//! same process, shared memory from another process of the host, tcp for
//! a client that speaks nothing else. A dead part is skipped for the next;
//! a path that dies mid-call fails that call, and the next call chooses
//! again. Bad sets are refused with what is wrong.
//!
//! The server of another process is this crate's `conformance_server`
//! binary, one child process per test, killed only by the test that
//! started it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use courier::{Address, Engine, Error, Handle, TransportError};
use courier_conformance::{self as cc, dead_address, guard, Process};

fn server_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_conformance_server"))
}

/// Starts `conformance_server <plan>`; returns it and its address.
async fn start_server(plan: &str) -> (Process, String) {
    let mut server = Process::spawn(server_binary(), &[plan]);
    let address = server.expect_line("ADDRESS ").await;
    (server, address)
}

async fn echo(client: &Engine, address: &Address) -> courier::Result<String> {
    let f = client.remote::<String, String>("echo");
    guard("echo", f.on(address).call(&"ping".to_owned())).await
}

/// A client engine for `plan` with the JSON settings `config`.
async fn client_with(plan: &str, config: &str) -> Engine {
    Engine::builder(plan)
        .client()
        .config_json(config)
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {plan} client engine: {e}"))
}

/// The protocol of the path `address`'s connection takes now.
fn path_protocol(address: &Address) -> String {
    address
        .path()
        .expect("a live connection after a lookup or a call")
        .protocol()
        .to_owned()
}

fn protocols(set: &str) -> Vec<String> {
    set.split(',')
        .map(|p| p.split_once("://").unwrap().0.to_owned())
        .collect()
}

#[tokio::test]
async fn a_server_of_several_protocols_prints_one_set_with_a_part_each() {
    let server = cc::server("tcp,shm").await;
    assert_eq!(server.protocol(), "tcp,shm");
    let set = server.address().to_string();
    // The listed protocols in order, then the in-process path it adds.
    assert_eq!(protocols(&set), ["tcp", "shm", "mem"], "{set}");
    assert_eq!(server.address().set().parts().len(), 3);
    assert_eq!(server.config()["listen"], set.as_str());
    assert_eq!(server.config()["protocol"], "tcp,shm");
    assert_eq!(server.config()["plugin"], "tcp,shm");

    // Without the in-process path, and with aliases: named canonically.
    let plain = Engine::builder("ofi+tcp,na+sm")
        .config_json(r#"{"paths": {"in_process": false}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(plain.protocol(), "tcp,shm");
    assert_eq!(
        protocols(&plain.address().to_string()),
        ["tcp", "shm"],
        "{}",
        plain.address()
    );

    // One protocol: one address, as ever (no in-process part).
    let single = cc::server("tcp").await;
    assert!(!single.address().set().is_set(), "{}", single.address());
    for e in [server, plain, single] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn a_listen_list_in_the_json_is_a_set() {
    let server = Engine::builder("tcp")
        .config_json(r#"{"listen": ["tcp://127.0.0.1:0", "unix"], "paths": {"in_process": false}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(server.protocol(), "tcp,unix");
    let set = server.address().to_string();
    assert_eq!(protocols(&set), ["tcp", "unix"], "{set}");
    cc::register_hello(&server);
    // A unix-only client takes the unix part.
    let client = cc::client("unix").await;
    let address = guard("lookup", client.lookup(&set)).await.unwrap();
    assert_eq!(path_protocol(&address), "unix");
    cc::assert_hello(&client, &address).await;
    for e in [server, client] {
        e.finalize().await;
    }

    for (json, what) in [
        (r#"{"listen": []}"#, "empty list"),
        (r#"{"listen": ["tcp://127.0.0.1:0,shm"]}"#, "holds a comma"),
    ] {
        let err = Engine::builder("tcp")
            .config_json(json)
            .build()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(what), "{json}: {err}");
    }
}

#[tokio::test]
async fn in_one_process_the_in_process_path_is_taken() {
    let server = cc::server("tcp,shm").await;
    cc::register_hello(&server);
    server
        .register("whoami", |h: Handle, (): ()| async move {
            let a = h.address();
            let path = a.path().map(|p| p.protocol().to_owned());
            h.respond(&(a.to_string(), path)).await
        })
        .unwrap();
    let client = cc::server("tcp,shm").await;
    let address = cc::lookup(&client, &server).await;
    assert_eq!(path_protocol(&address), "mem");
    cc::assert_hello(&client, &address).await;
    // The handler sees the caller's set (it announced it) and the path.
    let whoami = client.remote::<(), (String, Option<String>)>("whoami");
    let (caller, path) = guard("whoami", whoami.on(&address).call(&()))
        .await
        .unwrap();
    assert_eq!(caller, client.address().to_string());
    assert_eq!(path.as_deref(), Some("mem"));
    for e in [server, client] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn another_process_of_the_host_takes_shm_and_a_tcp_client_tcp() {
    let (mut server, set) = start_server("tcp,shm").await;
    assert_eq!(protocols(&set), ["tcp", "shm", "mem"], "{set}");

    // Its mem part names nothing here; shm is the fastest that connects.
    let both = cc::client("tcp,shm").await;
    let address = guard("lookup", both.lookup(&set)).await.unwrap();
    assert_eq!(path_protocol(&address), "shm");
    assert_eq!(address.to_string(), set);
    assert_eq!(echo(&both, &address).await.unwrap(), "ping");

    // A client of tcp alone skips the parts it does not speak.
    let tcp = cc::client("tcp").await;
    let address = guard("lookup", tcp.lookup(&set)).await.unwrap();
    assert_eq!(path_protocol(&address), "tcp");
    assert_eq!(echo(&tcp, &address).await.unwrap(), "ping");

    // "listed": the set's order, tcp first.
    let listed = client_with("tcp,shm", r#"{"paths": {"order": "listed"}}"#).await;
    let address = guard("lookup", listed.lookup(&set)).await.unwrap();
    assert_eq!(path_protocol(&address), "tcp");
    assert_eq!(echo(&listed, &address).await.unwrap(), "ping");

    // A client that speaks none of them is told so.
    let unix = cc::client("unix").await;
    match guard("lookup", unix.lookup(&set)).await {
        Err(Error::ProtocolMismatch {
            protocol, engine, ..
        }) => {
            assert_eq!(protocol, "tcp,shm,mem");
            assert_eq!(engine, "unix");
        }
        other => panic!("expected ProtocolMismatch, got {other:?}"),
    }

    let address = guard("lookup", both.lookup(&set)).await.unwrap();
    guard("shutdown", address.shutdown()).await.unwrap();
    assert!(server.wait().await.success());
    for e in [both, tcp, listed, unix] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn a_dead_part_is_skipped_for_the_next() {
    let server = Engine::builder("tcp").build().await.unwrap();
    cc::register_hello(&server);
    let client = client_with("tcp,shm", r#"{"paths": {"in_process": false}}"#).await;

    // shm is tried first (the same host), finds nobody, and tcp answers.
    let set = format!("{},{}", dead_address("shm"), server.address());
    let address = guard("lookup", client.lookup(&set)).await.unwrap();
    assert_eq!(path_protocol(&address), "tcp");
    cc::assert_hello(&client, &address).await;

    // Every part dead: NoPath says how each failed, in the order tried.
    let (dead_tcp, dead_shm) = (dead_address("tcp"), dead_address("shm"));
    let set = format!("{dead_tcp},{dead_shm}");
    match guard("lookup", client.lookup(&set)).await {
        Err(Error::NoPath { address, tried }) => {
            assert_eq!(address, set);
            let shm_at = tried.find(&dead_shm).expect(&tried);
            let tcp_at = tried.find(&dead_tcp).expect(&tried);
            assert!(shm_at < tcp_at, "shm is tried first: {tried}");
        }
        other => panic!("expected NoPath, got {other:?}"),
    }

    // One part spoken, and dead: its own error, as for a single address.
    let tcp_only = cc::client("tcp").await;
    match guard("lookup", tcp_only.lookup(&set)).await {
        Err(Error::Transport(TransportError::Connect { .. })) => {}
        other => panic!("expected the connection refused, got {other:?}"),
    }
    for e in [server, client, tcp_only] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn a_path_dying_mid_call_fails_that_call_and_the_next_call_chooses_again() {
    // The server publishes chaos+unix (no faults of its own) and tcp.
    let socket = cc::unique_temp_path("set.sock");
    let server = Engine::builder(&format!("chaos+unix://{},tcp", socket.display()))
        .config_json(r#"{"paths": {"in_process": false}}"#)
        .build()
        .await
        .unwrap();
    server
        .register("echo", |h: Handle, text: String| async move {
            h.respond(&text).await
        })
        .unwrap();
    // The client's chaos+unix resets the connection on its third message
    // (the Hello and one call go through).
    let client = client_with(
        "chaos+unix,tcp",
        r#"{"paths": {"in_process": false},
            "transport": {"chaos+unix": {"chaos": {"reset_after": 2}}}}"#,
    )
    .await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    assert_eq!(path_protocol(&address), "chaos+unix");
    assert_eq!(echo(&client, &address).await.unwrap(), "ping");

    // The unix path goes away for new connections.
    std::fs::remove_file(&socket).unwrap();
    match echo(&client, &address).await {
        Err(e) => assert!(
            matches!(e, Error::ConnectionLost { .. } | Error::Transport(_)),
            "{e:?}"
        ),
        Ok(v) => panic!("the call on the reset path succeeded: {v}"),
    }
    // The next call opens a connection again: unix is gone, tcp answers.
    assert_eq!(echo(&client, &address).await.unwrap(), "ping");
    assert_eq!(path_protocol(&address), "tcp");
    for e in [server, client] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn transport_options_go_to_the_protocol_they_name() {
    // Keys naming a protocol give it its options; others go to the first.
    let ok = Engine::builder("tcp,unix")
        .config_json(r#"{"transport": {"nodelay": true, "unix": {}}}"#)
        .build()
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let err = Engine::builder("tcp,unix")
        .config_json(r#"{"transport": {"unix": {"nodelay": true}}}"#)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("'unix' plugin") && err.to_string().contains("nodelay"),
        "{err}"
    );
    // Options for a protocol the engine does not speak: refused, not ignored.
    let err = Engine::builder("tcp,unix")
        .config_json(r#"{"transport": {"shm": {"ring_size": 4096}}}"#)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("'shm', a protocol this engine (tcp,unix) does not speak"),
        "{err}"
    );
    ok.unwrap().finalize().await;
}

#[tokio::test]
async fn auto_sm_adds_shared_memory_to_a_network_protocol() {
    let server = Engine::builder("tcp")
        .config_json(r#"{"paths": {"auto_sm": true}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(server.protocol(), "tcp,shm");
    assert_eq!(
        protocols(&server.address().to_string()),
        ["tcp", "shm", "mem"]
    );
    // A protocol of the host already there: nothing added.
    let unix = Engine::builder("unix")
        .config_json(r#"{"paths": {"auto_sm": true}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(unix.protocol(), "unix");
    for e in [server, unix] {
        e.finalize().await;
    }
}

#[tokio::test]
async fn bad_sets_are_refused_with_what_is_wrong() {
    let build = |plan: &'static str| async move { Engine::new(plan).await.unwrap_err() };
    let err = build("tcp,nope").await;
    assert!(
        err.to_string().contains("'nope'") && err.to_string().contains("tcp"),
        "unknown protocol, with the known list: {err}"
    );
    let err = build("tcp,,shm").await;
    assert_eq!(
        err.to_string(),
        "invalid address set 'tcp,,shm': part 2 is empty"
    );
    let err = build("tcp,ofi+tcp").await;
    assert!(err.to_string().contains("listed twice"), "{err}");
    let err = build("tcp,shm:/x").await;
    assert!(
        matches!(err, Error::Transport(_) | Error::AddressSet { .. }),
        "{err:?}"
    );

    let client = cc::client("tcp,shm").await;
    for (set, what) in [
        ("", "expected '<protocol>://<address>'"),
        (",", "part 1 is empty"),
        ("tcp://127.0.0.1:1,,shm://x", "part 2 is empty"),
        ("tcp://127.0.0.1:1,tcp://127.0.0.1:1", "given twice"),
        ("tcp://127.0.0.1:1,nonsense", "part 2 ('nonsense')"),
        (
            "tcp://127.0.0.1:1,nope://x",
            "unknown protocol 'nope' (known: ",
        ),
        // Twice under two names of one protocol.
        ("tcp://127.0.0.1:1,ofi+tcp://127.0.0.1:1", "given twice"),
    ] {
        let err = guard("lookup", client.lookup(set)).await.unwrap_err();
        assert!(err.to_string().contains(what), "{set:?}: {err}");
    }
    client.finalize().await;
}
