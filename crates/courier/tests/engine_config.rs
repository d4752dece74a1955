//! Engine construction: protocols, addresses, modes, JSON configuration,
//! registration rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::{Engine, Error, Handle, Mode, RpcOptions, TransportError};

#[tokio::test]
async fn unknown_protocol_lists_the_known_ones() {
    let err = Engine::new("carrier-pigeon").await.unwrap_err();
    assert!(matches!(
        err,
        Error::Transport(TransportError::UnknownProtocol { .. })
    ));
    let msg = err.to_string();
    for name in ["tcp", "unix", "ofi+tcp", "na+sm"] {
        assert!(msg.contains(name), "{msg}");
    }
}

#[tokio::test]
async fn declared_but_missing_plugin_is_named() {
    // The protocol table names quic, but this registry has no plugins.
    let err = Engine::builder("quic")
        .registry(courier::transport::Registry::new())
        .build()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'quic' transport plugin") && err.contains("not built into"),
        "{err}"
    );
}

#[tokio::test]
async fn aliases_resolve_and_addresses_are_canonical() {
    let e = Engine::new("ofi+tcp").await.unwrap();
    assert_eq!(e.protocol(), "tcp");
    let addr = e.address().to_string();
    assert!(addr.starts_with("tcp://127.0.0.1:"), "{addr}");
    // A client may use the alias in the address it looks up.
    let c = Engine::builder("bmi+tcp").client().build().await.unwrap();
    let aliased = addr.replacen("tcp://", "ofi+tcp://", 1);
    let found = c.lookup(&aliased).await.unwrap();
    assert_eq!(found.to_string(), addr);
    e.finalize().await;
}

#[tokio::test]
async fn full_listen_address_is_honoured() {
    let e = Engine::new("tcp://127.0.0.1:0").await.unwrap();
    assert!(e.address().to_string().starts_with("tcp://127.0.0.1:"));
    match Engine::new("tcp://[::1]:0").await {
        Ok(e6) => assert!(
            e6.address().to_string().starts_with("tcp://[::1]:"),
            "{}",
            e6.address()
        ),
        // A machine without IPv6 loopback: the error must say where it failed.
        Err(err) => assert!(err.to_string().contains("[::1]"), "{err}"),
    }
}

#[tokio::test]
async fn malformed_addresses_are_clear_errors() {
    let c = Engine::builder("tcp").client().build().await.unwrap();
    for (bad, needle) in [
        ("127.0.0.1:80", "expected '<protocol>://<address>'"),
        ("tcp://", "expected host:port"),
        ("tcp://nonsense", "invalid address"),
    ] {
        let err = c.lookup(bad).await.unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
    let err = c.lookup("unix:///tmp/x.sock").await.unwrap_err();
    assert!(matches!(err, Error::ProtocolMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("this engine speaks 'tcp'"),
        "{err}"
    );
}

#[tokio::test]
async fn client_mode_does_not_listen() {
    let c = Engine::builder("tcp")
        .mode(Mode::Client)
        .build()
        .await
        .unwrap();
    assert_eq!(c.mode(), Mode::Client);
    assert_eq!(c.address().to_string(), "tcp://");
    assert_eq!(c.config()["listen"], serde_json::Value::Null);
}

#[tokio::test]
async fn json_config_is_read_and_effective_config_returned() {
    let e = Engine::builder("tcp")
        .config_json(
            r#"{"rpc_thread_count": 2, "max_message_size": 4096,
                "enable_remote_shutdown": true, "transport": {"nodelay": false}}"#,
        )
        .build()
        .await
        .unwrap();
    let c = e.config();
    assert_eq!(c["rpc_thread_count"], 2);
    assert_eq!(c["max_message_size"], 4096);
    assert_eq!(c["enable_remote_shutdown"], true);
    assert_eq!(c["transport"]["nodelay"], false);
    assert_eq!(c["protocol"], "tcp");
    assert_eq!(c["plugin"], "tcp");
    assert_eq!(c["listen"], e.address().to_string());
    assert_eq!(
        c["keepalive"],
        serde_json::json!({
            "interval_ms": courier::DEFAULT_KEEPALIVE_INTERVAL_MS,
            "timeout_ms": courier::DEFAULT_KEEPALIVE_TIMEOUT_MS,
        })
    );
    // The effective config is itself a valid config.
    let mut again = c.clone();
    let obj = again.as_object_mut().unwrap();
    obj.remove("protocol");
    obj.remove("plugin");
    courier::Config::from_value(again).unwrap();
}

#[tokio::test]
async fn builder_settings_override_json() {
    let e = Engine::builder("tcp")
        .config_json(r#"{"rpc_thread_count": 3, "mode": "server"}"#)
        .num_rpc_threads(1)
        .client()
        .build()
        .await
        .unwrap();
    assert_eq!(e.config()["rpc_thread_count"], 1);
    assert_eq!(e.mode(), Mode::Client);
}

#[tokio::test]
async fn bad_config_is_refused_with_the_key_named() {
    for (json, needle) in [
        (r#"{"rpc_threads": 1}"#, "rpc_threads"),
        (r#"{"max_message_size": 3}"#, "max_message_size"),
        (r#"{"transport": {"nodelay": 3}}"#, "nodelay"),
        (
            r#"{"transport": {"speed": "fast"}}"#,
            "option 'speed': unknown field `speed`",
        ),
        ("{not json", "invalid engine configuration"),
        (
            r#"{"keepalive": {"timeout_ms": 0}}"#,
            "keepalive.timeout_ms",
        ),
        (r#"{"keepalive": {"every": 1}}"#, "unknown field `every`"),
    ] {
        let err = Engine::builder("tcp")
            .config_json(json)
            .build()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{json}: {err}");
    }
}

#[tokio::test]
async fn registration_rules() {
    let e = Engine::new("tcp").await.unwrap();
    let h = |h: Handle, (): ()| async move { h.respond(&()).await };
    e.register("a", h).unwrap();
    assert!(e.registered("a", 0));
    assert!(!e.registered("a", 1));
    let err = e.register("a", h).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyRegistered { provider: 0, .. }),
        "{err}"
    );
    e.register_with("a", RpcOptions::provider(1), h).unwrap();
    assert!(e.registered("a", 1));
    let err = e
        .register_with("a", RpcOptions::provider(u16::MAX), h)
        .unwrap_err();
    assert!(err.to_string().contains("65535 is reserved"), "{err}");
    e.deregister("a", 0).unwrap();
    assert!(!e.registered("a", 0));
    let err = e.deregister("a", 0).unwrap_err();
    assert!(matches!(err, Error::NotRegistered { .. }), "{err}");
}

#[tokio::test]
async fn finalize_is_idempotent_and_runs_callbacks_in_order() {
    let e = Engine::new("unix").await.unwrap();
    let path = e.address().wire().rest().to_owned();
    assert!(std::path::Path::new(&path).exists());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    e.on_prefinalize(move || tx.send("pre").unwrap());
    e.on_finalize(move || tx2.send("post").unwrap());
    e.finalize().await;
    e.finalize().await;
    assert!(e.is_finalized());
    assert_eq!(rx.recv().await, Some("pre"));
    assert_eq!(rx.recv().await, Some("post"));
    // The unix socket file is gone once finalize returns.
    assert!(!std::path::Path::new(&path).exists(), "{path} still exists");
    let err = e.lookup("unix:///tmp/whatever.sock").await.unwrap_err();
    assert!(matches!(err, Error::Finalized), "{err}");
}

#[tokio::test]
async fn async_prefinalize_work_runs_first_while_the_engine_still_calls() {
    let peer = Engine::new("unix").await.unwrap();
    peer.register("echo", |h: courier::Handle, text: String| async move {
        h.respond(&text).await
    })
    .unwrap();
    let peer_address = peer.address().to_string();
    let e = Engine::new("unix").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (pre, post) = (tx.clone(), tx.clone());
    let caller = e.clone();
    e.on_prefinalize_async(move || async move {
        // A call from inside finalize: nothing has stopped yet.
        let at = caller.lookup(&peer_address).await.unwrap();
        let echo = caller.remote::<String, String>("echo");
        let answer = echo.on(&at).call(&"goodbye".to_owned()).await.unwrap();
        tx.send(answer).unwrap();
    });
    e.on_prefinalize(move || pre.send("pre".to_owned()).unwrap());
    e.on_finalize(move || post.send("post".to_owned()).unwrap());
    // A second finalize meanwhile waits for the first to end.
    let (first, second) = tokio::join!(e.finalize(), e.finalize());
    let ((), ()) = (first, second);
    assert!(e.is_finalized());
    for expected in ["goodbye", "pre", "post"] {
        assert_eq!(rx.recv().await.as_deref(), Some(expected));
    }
    peer.finalize().await;
}

#[tokio::test]
async fn dropping_the_engine_finalizes_it() {
    let e = Engine::new("unix").await.unwrap();
    let path = e.address().wire().rest().to_owned();
    let waiter = e.clone();
    let wait = tokio::spawn(async move { waiter.wait_for_finalize().await });
    // One clone dropped: still running.
    drop(e);
    assert!(!wait.is_finished());
    let c = Engine::builder("unix").client().build().await.unwrap();
    c.lookup(&format!("unix://{path}")).await.unwrap();
    wait.abort();
}

/// `timeouts.call_ms` bounds what sets no timeout of its own: a ping and a
/// remote shutdown request to a peer that accepts the connection but never
/// answers end with `Timeout`, naming what timed out; an explicit timeout
/// wins over it.
#[tokio::test]
async fn call_timeout_bounds_pings_and_shutdown_requests() {
    use std::time::Duration;
    // A tcp listener that accepts and then reads nothing, answers nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = format!("tcp://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let client = Engine::builder("tcp")
        .client()
        .config_json(r#"{"timeouts": {"call_ms": 50}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(client.config()["timeouts"]["call_ms"], 50);
    let peer = client.lookup(&at).await.unwrap();
    for (what, result) in [
        ("<ping>", peer.ping(None).await.map(|_| ())),
        ("<shutdown>", peer.shutdown().await),
    ] {
        match result {
            Err(Error::Timeout { rpc, after, .. }) => {
                assert_eq!(rpc, what);
                assert_eq!(after, Duration::from_millis(50));
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    match peer.shutdown_within(Some(Duration::from_millis(20))).await {
        Err(Error::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(20)),
        other => panic!("{other:?}"),
    }
    held.abort();
}
