//! The engine scenarios: each is a function taking the protocol name, run
//! by [`conformance_tests!`](crate::conformance_tests) as one test per
//! (protocol, scenario).
//!
//! Every scenario builds its engines with `Engine::new(proto)` (the default
//! registry, which includes plugins installed with
//! [`courier::install_plugin`]), exercises one behaviour of the engine over
//! the protocol, and panics with a message naming what went wrong. Nothing
//! waits by sleeping: handlers report through channels, and every wait is
//! bounded by [`guard`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::{blocking, Bytes, Engine, Error, Handle, Mode, RpcOptions, TransportError};
use tokio::sync::{mpsc, Barrier, Notify};
use tokio::task::JoinSet;

use crate::{assert_hello, call_hello, guard, pattern, register_hello, HANG_GUARD};

/// The payload sizes that must round-trip intact.
pub const PAYLOAD_SIZES: [usize; 5] = [0, 1, 64 << 10, 1 << 20, 16 << 20];

/// A small maximum message size for the size-limit scenarios.
pub const SMALL_MAX: usize = 1 << 20;

/// Receives one value from a handler's report channel, under the hang guard.
pub async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    guard(what, rx.recv())
        .await
        .unwrap_or_else(|| panic!("{what}: the channel closed"))
}

/// Registers `echo_raw`: answers the request's payload bytes as they came.
pub fn register_echo_raw(engine: &Engine) {
    engine
        .register_raw(
            "echo_raw",
            RpcOptions::default(),
            |h: Handle, payload: Bytes| async move { h.respond_raw(&payload).await },
        )
        .unwrap();
}

/// Registers `whoconn`: answers the caller's address as the server sees it
/// (for a client-mode caller, one per connection).
pub fn register_whoconn(engine: &Engine) {
    engine
        .register("whoconn", |h: Handle, (): ()| async move {
            h.respond(&h.address().to_string()).await
        })
        .unwrap();
}

/// Calls `whoconn` (see [`register_whoconn`]): the caller's address as the
/// server at `address` sees it.
pub async fn whoconn(client: &Engine, address: &courier::Address) -> String {
    let f = client.remote::<(), String>("whoconn");
    guard("whoconn", f.on(address).call(&())).await.unwrap()
}

/// A handler that reports its argument when it starts and then waits for
/// `release` before answering `n * 2` (and reporting on `done`).
pub fn register_stall(
    engine: &Engine,
    release: Arc<Notify>,
) -> (mpsc::UnboundedReceiver<u32>, mpsc::UnboundedReceiver<u32>) {
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    engine
        .register("stall", move |h: Handle, n: u32| {
            let (started_tx, done_tx, release) =
                (started_tx.clone(), done_tx.clone(), release.clone());
            async move {
                started_tx.send(n).unwrap();
                release.notified().await;
                let r = h.respond(&(n * 2)).await;
                let _ = done_tx.send(n);
                r
            }
        })
        .unwrap();
    (started_rx, done_rx)
}

// ---------------------------------------------------------------------------
// The seed: hello.
// ---------------------------------------------------------------------------

/// The seed's hello between two server-mode engines: the answer is
/// "Good bye Matthieu", the handler sees both names, and `handle.address()`
/// is the caller's engine address.
pub async fn hello(proto: &str) {
    let server = crate::server(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    server
        .register(
            "hello",
            move |handle: Handle, (first, last): (String, String)| {
                let tx = tx.clone();
                async move {
                    tx.send((
                        format!("Hello {first} {last}!"),
                        handle.address().to_string(),
                        handle.rpc_name().to_owned(),
                        handle.provider_id(),
                        handle.expects_response(),
                    ))
                    .unwrap();
                    handle.respond(&format!("Good bye {first}")).await
                }
            },
        )
        .unwrap();
    assert_eq!(server.protocol(), proto);
    assert_eq!(server.mode(), Mode::Server);
    assert!(server
        .address()
        .to_string()
        .starts_with(&format!("{proto}://")));

    let client = crate::server(proto).await;
    let address = crate::lookup(&client, &server).await;
    assert_eq!(address, server.address());
    assert_eq!(address.to_string(), server.address().to_string());

    assert_hello(&client, &address).await;
    let (said, sender, rpc, provider, expects_response) =
        recv(&mut rx, "the handler's report").await;
    assert_eq!(said, "Hello Matthieu Dorier!");
    assert_eq!(
        sender,
        client.address().to_string(),
        "handle.address() is the caller's address"
    );
    assert_eq!(rpc, "hello");
    assert_eq!(provider, 0);
    assert!(expects_response);
}

/// The seed's client: a client-mode engine calls hello. Its own address is
/// `<proto>://`; the server sees it under some address of the protocol.
pub async fn hello_from_client_mode(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    register_whoconn(&server);
    let client = crate::client(proto).await;
    assert_eq!(client.mode(), Mode::Client);
    assert_eq!(client.address().to_string(), format!("{proto}://"));
    let address = crate::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    let seen = whoconn(&client, &address).await;
    assert!(seen.starts_with(&format!("{proto}://")), "{seen}");
    assert_ne!(seen, server.address().to_string());
    // Looking the same server up again shares the connection.
    let again = crate::lookup(&client, &server).await;
    assert_eq!(whoconn(&client, &again).await, seen);
}

/// An engine calls itself through its own address.
pub async fn self_call(proto: &str) {
    let engine = crate::server(proto).await;
    register_hello(&engine);
    let own = crate::lookup(&engine, &engine).await;
    assert_eq!(own, engine.address());
    assert_hello(&engine, &own).await;
}

/// The seed's hello with the engine's threads: server and client with a
/// progress thread, the server's handlers on two RPC threads.
pub async fn hello_with_threads(proto: &str) {
    let server = Engine::builder(proto)
        .use_progress_thread(true)
        .num_rpc_threads(2)
        .build()
        .await
        .unwrap();
    register_hello(&server);
    register_whoconn(&server);
    let client = Engine::builder(proto)
        .client()
        .use_progress_thread(true)
        .build()
        .await
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    guard("ping", address.ping(Some(HANG_GUARD))).await.unwrap();
    guard("server finalize", server.finalize()).await;
    guard("client finalize", client.finalize()).await;
}

/// A handler calls the caller back through `handle.address()`: a
/// client-mode engine (which does not listen) serves the callback on the
/// connection it opened.
pub async fn callback_through_handle_address(proto: &str) {
    let server = crate::server(proto).await;
    let note = server.remote::<String, ()>("note");
    server
        .register("relay", move |h: Handle, text: String| {
            let note = note.clone();
            async move {
                let back = h.address();
                note.on(&back).call(&format!("relayed: {text}")).await?;
                h.respond("done").await
            }
        })
        .unwrap();

    let client = crate::client(proto).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    client
        .register("note", move |h: Handle, text: String| {
            let tx = tx.clone();
            async move {
                tx.send(text).unwrap();
                h.respond(&()).await
            }
        })
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    let relay = client.remote::<String, String>("relay");
    let answer = guard("relay", relay.on(&address).call(&"hi".to_owned())).await;
    assert_eq!(answer.unwrap(), "done");
    assert_eq!(recv(&mut rx, "the callback").await, "relayed: hi");
}

/// An engine-level round trip (no handler).
pub async fn ping(proto: &str) {
    let server = crate::server(proto).await;
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    guard("ping", address.ping(Some(HANG_GUARD))).await.unwrap();
}

/// The protocol's aliases (`ofi+tcp`, `uds`, ...) name the same protocol,
/// for building an engine and in addresses.
pub async fn aliases(proto: &str) {
    let registry = courier::default_registry().unwrap();
    let entry = registry.resolve(proto).unwrap();
    let server = crate::server(proto).await;
    register_hello(&server);
    register_whoconn(&server);
    let rest = server.address().wire().rest().to_owned();
    let client = crate::client(proto).await;
    let canonical = crate::lookup(&client, &server).await;
    let connection = whoconn(&client, &canonical).await;
    for alias in &entry.aliases {
        // The same peer under its alias: the same connection.
        let aliased = guard("lookup", client.lookup(&format!("{alias}://{rest}")))
            .await
            .unwrap();
        assert_eq!(aliased, canonical);
        assert_eq!(whoconn(&client, &aliased).await, connection);
        let client = Engine::builder(alias).client().build().await.unwrap();
        assert_eq!(client.protocol(), proto, "engine built as {alias}");
        let address = guard("lookup", client.lookup(&format!("{alias}://{rest}")))
            .await
            .unwrap();
        assert_eq!(address, server.address(), "{alias}:// is {proto}://");
        assert_hello(&client, &address).await;
    }
}

/// The same name at providers 1 and 2 is two RPCs; 65535 is refused at
/// register; an unknown provider is `NoSuchRpc` naming the RPC and provider.
pub async fn provider_ids(proto: &str) {
    let server = crate::server(proto).await;
    for p in [1u16, 2] {
        server
            .register_with(
                "whoami",
                RpcOptions::provider(p),
                |h: Handle, (): ()| async move {
                    h.respond(&format!("provider {}", h.provider_id())).await
                },
            )
            .unwrap();
    }
    let reserved = RpcOptions {
        provider_id: u16::MAX,
        ..RpcOptions::default()
    };
    let err = server
        .register_with("whoami", reserved, |h: Handle, (): ()| async move {
            h.respond(&()).await
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidProviderId(65535)), "{err:?}");
    assert!(!server.registered("whoami", u16::MAX));
    let err = server
        .register_with(
            "whoami",
            RpcOptions::provider(1),
            |h: Handle, (): ()| async move { h.respond(&()).await },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyRegistered { rpc, provider: 1 } if rpc == "whoami"),
        "{err:?}"
    );

    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let whoami = client.remote::<(), String>("whoami");
    for p in [1u16, 2] {
        let answer = guard("whoami", whoami.on_provider(&address, p).call(&())).await;
        assert_eq!(answer.unwrap(), format!("provider {p}"));
    }
    for p in [0u16, 3] {
        let err = guard("whoami", whoami.on_provider(&address, p).call(&()))
            .await
            .unwrap_err();
        match &err {
            Error::NoSuchRpc { rpc, provider, .. } => {
                assert_eq!(rpc, "whoami");
                assert_eq!(*provider, p);
            }
            other => panic!("expected NoSuchRpc, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains("'whoami'"), "{message}");
        assert!(message.contains(&format!("provider {p}")), "{message}");
    }
}

/// `registered` follows `register`/`deregister`; after `deregister` a call
/// gets `NoSuchRpc`; registering again serves again.
pub async fn register_and_deregister(proto: &str) {
    let server = crate::server(proto).await;
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    assert!(!server.registered("hello", 0));
    register_hello(&server);
    assert!(server.registered("hello", 0));
    assert!(!server.registered("hello", 1));
    assert_hello(&client, &address).await;

    server.deregister("hello", 0).unwrap();
    assert!(!server.registered("hello", 0));
    let err = call_hello(&client, &address).await.unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchRpc { rpc, provider: 0, .. } if rpc == "hello"),
        "{err:?}"
    );
    let err = server.deregister("hello", 0).unwrap_err();
    assert!(
        matches!(err, Error::NotRegistered { provider: 0, .. }),
        "{err:?}"
    );

    register_hello(&server);
    assert_hello(&client, &address).await;
}

/// An RPC nobody registered: `NoSuchRpc` at once (the call needs no timeout).
pub async fn unknown_rpc(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let typed = client.remote::<u32, u32>("no_such_rpc");
    let err = guard("typed call", typed.on(&address).call(&1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchRpc { rpc, provider: 0, .. } if rpc == "no_such_rpc"),
        "{err:?}"
    );
    assert!(err.to_string().contains("no_such_rpc"), "{err}");
    let raw = client.remote_raw("no_such_raw_rpc");
    let err = guard("raw call", raw.on(&address).call(b"x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoSuchRpc { .. }), "{err:?}");
    assert_hello(&client, &address).await;
}

// ---------------------------------------------------------------------------
// One-way RPCs.
// ---------------------------------------------------------------------------

/// One-way: the server registers with `disable_response`, the client calls
/// through `disable_response()`; every handler runs (seen on a channel),
/// nothing comes back, and the connection keeps serving normal calls. A
/// one-way call to a normal RPC runs it too, its `respond` a no-op.
pub async fn one_way(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tx2 = tx.clone();
    server
        .register_with(
            "notify",
            RpcOptions::default().disable_response(),
            move |h: Handle, n: u32| {
                let tx = tx.clone();
                async move {
                    assert!(!h.expects_response());
                    // Responding to a one-way request does nothing.
                    h.respond(&"ignored").await.unwrap();
                    tx.send(("notify", n)).unwrap();
                }
            },
        )
        .unwrap();
    server
        .register("record", move |h: Handle, n: u32| {
            let tx = tx2.clone();
            async move {
                tx.send(("record", n)).unwrap();
                h.respond(&()).await
            }
        })
        .unwrap();

    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let notify = client.remote::<u32, ()>("notify").disable_response();
    assert!(notify.raw().is_response_disabled());
    for n in 0..10 {
        guard("one-way call", notify.on(&address).call(&n))
            .await
            .unwrap();
    }
    let mut got = HashSet::new();
    for _ in 0..10 {
        let (name, n) = recv(&mut rx, "a one-way handler").await;
        assert_eq!(name, "notify");
        got.insert(n);
    }
    assert_eq!(got, (0..10).collect());

    let record = client.remote::<u32, ()>("record").disable_response();
    guard("one-way call", record.on(&address).call(&77))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx, "a two-way handler called one-way").await,
        ("record", 77)
    );

    assert_hello(&client, &address).await;
}

/// A call that waits for a response to a one-way RPC is refused with
/// `OneWay` (instead of waiting forever), and its handler does not run.
pub async fn one_way_called_with_response(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    server
        .register_with(
            "notify",
            RpcOptions::default().disable_response(),
            move |_h: Handle, n: u32| {
                let tx = tx.clone();
                async move {
                    tx.send(n).unwrap();
                }
            },
        )
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let two_way = client.remote::<u32, ()>("notify");
    let err = guard("call", two_way.on(&address).call(&1))
        .await
        .unwrap_err();
    match &err {
        Error::OneWay { rpc, provider, .. } => {
            assert_eq!(rpc, "notify");
            assert_eq!(*provider, 0);
        }
        other => panic!("expected OneWay, got {other:?}"),
    }
    assert!(err.to_string().contains("disable_response"), "{err}");
    // The refusal happens before any handler is spawned.
    assert_hello(&client, &address).await;
    assert!(
        rx.try_recv().is_err(),
        "the one-way handler ran for a refused call"
    );
}

// ---------------------------------------------------------------------------
// Timeouts and concurrency.
// ---------------------------------------------------------------------------

/// A handler that does not answer within the call's timeout: `Timeout`; the
/// connection still serves the next calls, and the timed-out call's
/// handler (cancelled, or answering into the void if the cancel is late) is
/// not mistaken for another call's.
pub async fn timeout(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let release = Arc::new(Notify::new());
    let (mut started, mut done) = register_stall(&server, release.clone());
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let stall = client.remote::<u32, u32>("stall");

    let after = Duration::from_millis(100);
    let err = guard("timed call", stall.on(&address).timeout(after).call(&1))
        .await
        .unwrap_err();
    match &err {
        Error::Timeout { rpc, after: a, .. } => {
            assert_eq!(rpc, "stall");
            assert_eq!(*a, after);
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert_hello(&client, &address).await;

    // The timed-out call's handler was cancelled (its caller told the
    // server): it started, and never finished.
    assert_eq!(recv(&mut started, "the stalled handler").await, 1);

    let second = {
        let c = stall.on(&address);
        tokio::spawn(async move { c.call(&2).await })
    };
    assert_eq!(recv(&mut started, "the second handler").await, 2);
    // The first handler is cancelled once the caller's Cancel (or its own
    // copy of the deadline) reaches it, which may be after this point: a
    // release it takes first answers into the void, and is given again.
    loop {
        release.notify_one();
        if recv(&mut done, "a released handler").await == 2 {
            break;
        }
    }
    assert_eq!(guard("second call", second).await.unwrap().unwrap(), 4);
    assert_hello(&client, &address).await;
}

/// `timeouts.call_ms` from the JSON configuration applies to calls that
/// set no timeout; a callable's own timeout overrides it.
pub async fn default_timeout_from_config(proto: &str) {
    let server = crate::server(proto).await;
    let release = Arc::new(Notify::new());
    let (mut started, _done) = register_stall(&server, release.clone());
    let client = Engine::builder(proto)
        .client()
        .config_json(r#"{"timeouts": {"call_ms": 100}}"#)
        .build()
        .await
        .unwrap();
    assert_eq!(client.config()["timeouts"]["call_ms"], 100);
    let address = crate::lookup(&client, &server).await;
    let stall = client.remote::<u32, u32>("stall");
    let err = guard(
        "call under the default timeout",
        stall.on(&address).call(&1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_millis(100)),
        "{err:?}"
    );
    assert_eq!(recv(&mut started, "the first handler").await, 1);
    release.notify_one();

    let long = {
        let c = stall.on(&address).timeout(HANG_GUARD);
        tokio::spawn(async move { c.call(&2).await })
    };
    assert_eq!(recv(&mut started, "the second handler").await, 2);
    release.notify_one();
    assert_eq!(
        guard("call with its own timeout", long)
            .await
            .unwrap()
            .unwrap(),
        4
    );
}

/// 1000 calls in flight at once on one connection: every handler waits at a
/// barrier until all 1000 have arrived (so they really are concurrent),
/// every caller gets its own answer, and they all came on one connection.
pub async fn concurrent_calls(proto: &str) {
    const N: u64 = 1000;
    let server = crate::server(proto).await;
    let barrier = Arc::new(Barrier::new(N as usize));
    let peers = Arc::new(Mutex::new(HashSet::new()));
    {
        let peers = peers.clone();
        server
            .register("double", move |h: Handle, n: u64| {
                let (barrier, peers) = (barrier.clone(), peers.clone());
                async move {
                    peers.lock().unwrap().insert(h.address().to_string());
                    barrier.wait().await;
                    h.respond(&(2 * n + 1)).await
                }
            })
            .unwrap();
    }
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let double = client.remote::<u64, u64>("double");
    let mut calls = JoinSet::new();
    for i in 0..N {
        let c = double.on(&address);
        calls.spawn(async move { (i, c.call(&i).await) });
    }
    let mut answered = HashSet::new();
    while let Some(joined) = guard("1000 concurrent calls", calls.join_next()).await {
        let (i, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), 2 * i + 1, "call {i}");
        answered.insert(i);
    }
    assert_eq!(answered.len(), N as usize);
    let peers = peers.lock().unwrap();
    assert_eq!(
        peers.len(),
        1,
        "the calls came on several connections: {peers:?}"
    );
}

// ---------------------------------------------------------------------------
// Payloads and message sizes.
// ---------------------------------------------------------------------------

/// 0 B, 1 B, 64 KiB, 1 MiB and 16 MiB round-trip intact through the raw API.
pub async fn payloads_raw(proto: &str) {
    let server = crate::server(proto).await;
    register_echo_raw(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let echo = client.remote_raw("echo_raw");
    for (i, size) in PAYLOAD_SIZES.into_iter().enumerate() {
        let data = pattern(size, i as u8);
        let back = guard("raw echo", echo.on(&address).call(&data))
            .await
            .unwrap();
        assert_eq!(back.len(), size);
        assert!(
            back[..] == data[..],
            "{size}-byte raw payload came back altered"
        );
    }
}

/// The same sizes through the typed API (`Vec<u8>` both ways).
pub async fn payloads_typed(proto: &str) {
    let server = crate::server(proto).await;
    server
        .register("echo_vec", |h: Handle, v: Vec<u8>| async move {
            h.respond(&v).await
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let echo = client.remote::<Vec<u8>, Vec<u8>>("echo_vec");
    for (i, size) in PAYLOAD_SIZES.into_iter().enumerate() {
        let data = pattern(size, 100 + i as u8);
        let back = guard("typed echo", echo.on(&address).call(&data))
            .await
            .unwrap();
        assert_eq!(back.len(), size);
        assert!(back == data, "{size}-byte typed payload came back altered");
    }
}

/// A request over the client's maximum travels by the bulk path on its
/// own (`docs/bulk.md`, "Payloads of any size"): the server gets it whole,
/// raw and typed, over the same connection; a one-way request, whose
/// caller waits for nothing, is refused before anything is sent
/// (`MessageTooLarge` with the sizes), and the connection keeps working.
pub async fn request_over_max(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    crate::overflow::register_overflow_rpcs(&server);
    register_whoconn(&server);
    let client = Engine::builder(proto)
        .client()
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    let before = whoconn(&client, &address).await;
    let big = pattern(2 << 20, 7);
    let sum = crate::overflow::checksum(&big);
    let answer = guard(
        "oversized call",
        client.remote_raw("digest_raw").on(&address).call(&big),
    )
    .await
    .unwrap();
    assert_eq!(answer[..8], (big.len() as u64).to_le_bytes());
    assert_eq!(answer[8..16], sum.to_le_bytes());
    // The typed API too.
    let got = guard(
        "oversized typed call",
        client
            .remote::<Vec<u8>, (u64, u64)>("digest")
            .on(&address)
            .call(&big),
    )
    .await
    .unwrap();
    assert_eq!(got, (big.len() as u64, sum));
    // One-way: refused, unsent.
    let err = guard(
        "oversized one-way call",
        client
            .remote_raw("digest_raw")
            .disable_response()
            .on(&address)
            .call(&big),
    )
    .await
    .unwrap_err();
    match err {
        Error::Transport(TransportError::MessageTooLarge { size, max }) => {
            assert_eq!(size, (2 << 20) + courier::frame::HEADER_LEN as u64);
            assert_eq!(max, SMALL_MAX);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_hello(&client, &address).await;
    assert_eq!(
        whoconn(&client, &address).await,
        before,
        "the connection was replaced"
    );
}

/// At the maximum: a message of exactly `max` bytes (header included) goes
/// through both ways inline; one byte more goes by the bulk path, both
/// ways (see `overflow::at_the_limit_stays_inline`).
pub async fn max_message_boundary(proto: &str) {
    let server = Engine::builder(proto)
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    register_echo_raw(&server);
    let client = Engine::builder(proto)
        .client()
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    let echo = client.remote_raw("echo_raw");
    let fits = pattern(SMALL_MAX - courier::frame::HEADER_LEN, 3);
    let back = guard("echo at the maximum", echo.on(&address).call(&fits))
        .await
        .unwrap();
    assert!(back[..] == fits[..]);
    assert_eq!(client.stats().bulk.payloads_sent, 0, "inline");
    let over = pattern(SMALL_MAX - courier::frame::HEADER_LEN + 1, 4);
    let back = guard("echo over the maximum", echo.on(&address).call(&over))
        .await
        .unwrap();
    assert!(back[..] == over[..]);
    let bulk = client.stats().bulk;
    assert_eq!((bulk.payloads_sent, bulk.payloads_received), (1, 1));
    let back = guard("echo after", echo.on(&address).call(b"still here"))
        .await
        .unwrap();
    assert_eq!(&back[..], b"still here");
}

/// A response over the *client's* maximum (but within the server's, so
/// the server sends it in one message: an engine knows only its own
/// largest message): the caller gets an error (the client drops the
/// connection it cannot read), not a hang; the next call works on a new
/// connection.
pub async fn response_over_client_max(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    server
        .register_raw(
            "big",
            RpcOptions::default(),
            |h: Handle, _p: Bytes| async move { h.respond_raw(&vec![9u8; 2 << 20]).await },
        )
        .unwrap();
    let client = Engine::builder(proto)
        .client()
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    let address = crate::lookup(&client, &server).await;
    let err = guard(
        "call with a too-large response",
        client.remote_raw("big").on(&address).call(b""),
    )
    .await
    .unwrap_err();
    match &err {
        Error::ConnectionLost { reason, .. } => {
            assert!(reason.contains("maximum message size"), "{reason}");
        }
        other => panic!("expected ConnectionLost (response too large), got {other:?}"),
    }
    assert_hello(&client, &address).await;
}

/// A response over the *server's* maximum travels by the bulk path: the
/// caller gets it whole, and the server frees it once released.
pub async fn response_over_server_max(proto: &str) {
    let server = Engine::builder(proto)
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    register_hello(&server);
    server
        .register_raw(
            "big",
            RpcOptions::default(),
            |h: Handle, _p: Bytes| async move { h.respond_raw(&pattern(2 << 20, 9)).await },
        )
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let got = guard(
        "call with a response over the server's maximum",
        client.remote_raw("big").on(&address).call(b""),
    )
    .await
    .unwrap();
    assert!(got[..] == pattern(2 << 20, 9)[..]);
    crate::stats::settled(&server, "the response is freed", |s| {
        s.bulk.payloads_sent == 1 && s.bulk.held_responses == 0 && s.bulk.regions == 0
    })
    .await;
    assert_hello(&client, &address).await;
}

/// A request over the *server's* maximum (but within the client's, so the
/// client sends it in one message): the server drops the connection, the
/// caller gets `ConnectionLost` (not a hang), the next call reconnects.
pub async fn request_over_server_max(proto: &str) {
    let server = Engine::builder(proto)
        .max_message_size(SMALL_MAX)
        .build()
        .await
        .unwrap();
    register_hello(&server);
    register_echo_raw(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let big = vec![5u8; 2 << 20];
    let err = guard(
        "call over the server's maximum",
        client.remote_raw("echo_raw").on(&address).call(&big),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    assert_hello(&client, &address).await;
}

// ---------------------------------------------------------------------------
// Remote shutdown.
// ---------------------------------------------------------------------------

/// Remote shutdown enabled: `shutdown()` succeeds, the server's
/// `wait_for_finalize` returns, and the server is gone.
pub async fn remote_shutdown_enabled(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    server.enable_remote_shutdown();
    let server_address = server.address().to_string();
    let client = crate::client(proto).await;
    let address = guard("lookup", client.lookup(&server_address))
        .await
        .unwrap();
    assert_hello(&client, &address).await;
    guard("shutdown", address.shutdown()).await.unwrap();
    guard("wait_for_finalize", server.wait_for_finalize()).await;
    assert!(server.is_finalized());

    let err = call_hello(&client, &address).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost { .. }
                | Error::RemoteFinalizing { .. }
                | Error::Transport(TransportError::Connect { .. })
        ),
        "{err:?}"
    );
    let err = guard("lookup", crate::client(proto).await.lookup(&server_address))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Connect { .. })),
        "{err:?}"
    );
}

/// Remote shutdown not enabled: `ShutdownRefused`, and the server keeps
/// serving; once enabled, the same request succeeds.
pub async fn remote_shutdown_refused(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let err = guard("shutdown", address.shutdown()).await.unwrap_err();
    assert!(matches!(err, Error::ShutdownRefused { .. }), "{err:?}");
    assert!(!server.is_finalized());
    assert_hello(&client, &address).await;

    server.enable_remote_shutdown();
    guard("shutdown", address.shutdown()).await.unwrap();
    guard("wait_for_finalize", server.wait_for_finalize()).await;
}

// ---------------------------------------------------------------------------
// Handlers that fail.
// ---------------------------------------------------------------------------

/// A handler returning `Err("boom")`: the caller gets `Remote` with "boom".
pub async fn handler_error(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    server
        .register(
            "fail",
            |_h: Handle, (): ()| async move { Err::<(), _>("boom") },
        )
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let err = guard(
        "fail",
        client.remote::<(), ()>("fail").on(&address).call(&()),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Remote { rpc, message, .. } => {
            assert_eq!(rpc, "fail");
            assert!(message.contains("boom"), "{message}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(err.to_string().contains("boom"), "{err}");
    assert_hello(&client, &address).await;
}

/// A panicking handler: the caller gets `RemotePanic` with the panic
/// message, and the server keeps serving.
pub async fn handler_panic(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    server
        .register("explode", |_h: Handle, n: u32| async move {
            if n == 42 {
                panic!("kaboom: {n}");
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let err = guard(
        "explode",
        client.remote::<u32, ()>("explode").on(&address).call(&42),
    )
    .await
    .unwrap_err();
    match &err {
        Error::RemotePanic { rpc, message, .. } => {
            assert_eq!(rpc, "explode");
            assert!(message.contains("kaboom: 42"), "{message}");
        }
        other => panic!("expected RemotePanic, got {other:?}"),
    }
    assert_hello(&client, &address).await;
}

/// A handler that returns without responding: `NoResponse`.
pub async fn handler_no_response(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    server
        .register("silent", |h: Handle, (): ()| async move {
            drop(h);
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let err = guard(
        "silent",
        client.remote::<(), ()>("silent").on(&address).call(&()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::NoResponse { rpc, .. } if rpc == "silent"),
        "{err:?}"
    );
    assert_hello(&client, &address).await;
}

/// A handler may hand its handle to another task: that task's response
/// reaches the caller; a handle dropped there without a response gives
/// `NoResponse` (not a hang); a second response is `AlreadyResponded`.
pub async fn deferred_and_double_responses(proto: &str) {
    let server = crate::server(proto).await;
    server
        .register("later", |h: Handle, n: u32| async move {
            tokio::spawn(async move {
                if n > 0 {
                    let _ = h.respond(&n).await;
                } else {
                    drop(h);
                }
            });
        })
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    server
        .register("twice", move |h: Handle, (): ()| {
            let tx = tx.clone();
            async move {
                h.respond(&1u32).await.unwrap();
                tx.send(h.respond(&2u32).await).unwrap();
            }
        })
        .unwrap();
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let later = client.remote::<u32, u32>("later");
    assert_eq!(
        guard("later", later.on(&address).call(&5)).await.unwrap(),
        5
    );
    let err = guard("later, dropped", later.on(&address).call(&0))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoResponse { .. }), "{err:?}");

    let twice = client.remote::<(), u32>("twice");
    assert_eq!(
        guard("twice", twice.on(&address).call(&())).await.unwrap(),
        1
    );
    let second = recv(&mut rx, "the second respond").await;
    assert!(
        matches!(&second, Err(Error::AlreadyResponded { rpc }) if rpc == "twice"),
        "{second:?}"
    );
}

/// Arguments the handler's type cannot decode, or that leave bytes over
/// (another type): a remote error saying so; a response that leaves bytes
/// over: a decode error.
pub async fn bad_arguments(proto: &str) {
    let server = crate::server(proto).await;
    register_hello(&server);
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let wrong = client.remote::<(), String>("hello");
    let err = guard("hello with no arguments", wrong.on(&address).call(&()))
        .await
        .unwrap_err();
    match &err {
        Error::Remote { message, .. } => {
            assert!(message.contains("cannot decode the arguments"), "{message}");
        }
        other => panic!("expected Remote, got {other:?}"),
    }
    // A string where the handler takes a number: postcard reads the
    // string's length as the number and leaves its bytes. Refused as a
    // type mismatch naming the RPC, and the handler does not run.
    server
        .register("sleep_ms", |h: Handle, ms: u64| async move {
            h.respond(&ms).await
        })
        .unwrap();
    let as_text = client.remote::<&str, u64>("sleep_ms");
    let err = guard(
        "a string for a number",
        as_text.on(&address).call(&"notanumber"),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Remote { message, .. } => assert!(
            message.contains("RPC 'sleep_ms'") && message.contains("type mismatch"),
            "{message}"
        ),
        other => panic!("expected Remote, got {other:?}"),
    }
    // The same on the way back: a response with bytes left over.
    let as_byte = client.remote::<u64, u8>("sleep_ms");
    let err = guard(
        "a response read as a narrower type",
        as_byte.on(&address).call(&300),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Decode { rpc, reason, .. } if rpc == "sleep_ms" && reason.contains("type mismatch")),
        "{err:?}"
    );
    assert_hello(&client, &address).await;
}

// ---------------------------------------------------------------------------
// Finalize and dead peers.
// ---------------------------------------------------------------------------

/// Finalizing the client while its calls are in flight (their handlers are
/// running, blocked): every call ends with `Finalized`; later calls and
/// lookups too.
pub async fn finalize_client_with_calls_in_flight(proto: &str) {
    const N: u32 = 8;
    let server = crate::server(proto).await;
    let release = Arc::new(Notify::new());
    let (mut started, _done) = register_stall(&server, release.clone());
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let stall = client.remote::<u32, u32>("stall");
    let mut calls = JoinSet::new();
    for n in 0..N {
        let c = stall.on(&address);
        calls.spawn(async move { c.call(&n).await });
    }
    for _ in 0..N {
        recv(&mut started, "a stalled handler").await;
    }
    guard("client finalize", client.finalize()).await;
    assert!(client.is_finalized());
    while let Some(joined) = guard("calls in flight", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, Error::Finalized), "{err:?}");
    }
    release.notify_waiters();

    let err = guard("call after finalize", stall.on(&address).call(&1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Finalized), "{err:?}");
    let err = guard(
        "lookup after finalize",
        client.lookup(&server.address().to_string()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Finalized), "{err:?}");
}

/// Finalizing the server while calls to it are in flight: the callers get
/// `ConnectionLost` (not a hang).
pub async fn finalize_server_with_calls_in_flight(proto: &str) {
    const N: u32 = 4;
    let server = crate::server(proto).await;
    let release = Arc::new(Notify::new());
    let (mut started, _done) = register_stall(&server, release.clone());
    let client = crate::client(proto).await;
    let address = crate::lookup(&client, &server).await;
    let stall = client.remote::<u32, u32>("stall");
    let mut calls = JoinSet::new();
    for n in 0..N {
        let c = stall.on(&address);
        calls.spawn(async move { c.call(&n).await });
    }
    for _ in 0..N {
        recv(&mut started, "a stalled handler").await;
    }
    guard("server finalize", server.finalize()).await;
    while let Some(joined) = guard("calls in flight", calls.join_next()).await {
        let err = joined.unwrap().unwrap_err();
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    }
    release.notify_waiters();
}

/// Finalizing a server engine before its accept loop first ran returns
/// (on a current-thread runtime: finalize right after build). Regression
/// test: the stop signal used to be sent with `watch::Sender::send`, which
/// drops the value while the accept loop has not subscribed yet, and
/// finalize then waited for the loop forever.
pub async fn finalize_right_after_build(proto: &str) {
    let server = crate::server(proto).await;
    guard("finalize right after build", server.finalize()).await;
    assert!(server.is_finalized());
}

/// Blocking calls inside an async runtime are refused, not deadlocked.
pub async fn blocking_in_async_is_refused(proto: &str) {
    let err = blocking::Engine::new(proto).unwrap_err();
    assert!(matches!(err, Error::BlockingInAsync(_)), "{err:?}");
}

/// The seed's hello with the blocking API: a server with a progress thread,
/// a server-mode blocking client; `handle.address()` is the client's address.
pub fn blocking_hello(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .use_progress_thread(true)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    server
        .register(
            "hello",
            move |handle: blocking::Handle, (first, last): (String, String)| {
                tx.send((format!("Hello {first} {last}!"), handle.address()))
                    .unwrap();
                handle.respond(&format!("Good bye {first}"))
            },
        )
        .unwrap();
    let client = blocking::Engine::new(proto).unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    assert_eq!(address.to_string(), server.address().to_string());
    let hello = client
        .remote::<(&str, &str), String>("hello")
        .timeout(HANG_GUARD);
    assert_eq!(
        hello.on(&address).call(&("Matthieu", "Dorier")).unwrap(),
        "Good bye Matthieu"
    );
    let (said, sender) = rx.recv_timeout(HANG_GUARD).unwrap();
    assert_eq!(said, "Hello Matthieu Dorier!");
    assert_eq!(sender, client.address().to_string());
    address.ping(Some(HANG_GUARD)).unwrap();
}

/// The seed as PyMargo writes it: the server thread serves inside
/// `wait_for_finalize` (no progress thread), the client calls hello and
/// shuts the server down, and `wait_for_finalize` returns.
pub fn blocking_seed_with_remote_shutdown(proto: &str) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (said_tx, said_rx) = std::sync::mpsc::channel();
    let p = proto.to_owned();
    let server = std::thread::spawn(move || -> courier::Result<()> {
        let engine = blocking::Engine::new(&p)?;
        engine.register(
            "hello",
            move |handle: blocking::Handle, (first, last): (String, String)| {
                said_tx.send(format!("Hello {first} {last}!")).unwrap();
                handle.respond(&format!("Good bye {first}"))
            },
        )?;
        // Enabled before the address is out: the engine serves `hello` on
        // its own serving thread, so the client may ask for the shutdown
        // before this thread gets further.
        engine.enable_remote_shutdown();
        addr_tx.send(engine.address().to_string()).unwrap();
        engine.wait_for_finalize()?;
        assert!(engine.is_finalized());
        Ok(())
    });
    let server_address = addr_rx.recv_timeout(HANG_GUARD).unwrap();
    let engine = blocking::Engine::builder(proto).client().build().unwrap();
    let hello = engine
        .remote::<(&str, &str), String>("hello")
        .timeout(HANG_GUARD);
    let address = engine.lookup(&server_address).unwrap();
    assert_eq!(
        hello.on(&address).call(&("Matthieu", "Dorier")).unwrap(),
        "Good bye Matthieu"
    );
    address.shutdown().unwrap();
    server.join().unwrap().unwrap();
    assert_eq!(said_rx.try_recv().unwrap(), "Hello Matthieu Dorier!");
}

/// `call_nonblocking`: `test()` stays false while the handler holds the
/// response, other calls go through meanwhile, then `test()` turns true and
/// `wait()` returns the answer. With and without a client progress thread.
pub fn blocking_call_nonblocking(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .use_progress_thread(true)
        .num_rpc_threads(2)
        .build()
        .unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel::<u32>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    server
        .register("stall", move |h: blocking::Handle, n: u32| {
            started_tx.send(n).unwrap();
            release_rx.lock().unwrap().recv_timeout(HANG_GUARD).unwrap();
            h.respond(&(n * 2))
        })
        .unwrap();
    server
        .register(
            "hello",
            |h: blocking::Handle, (first, _last): (String, String)| {
                h.respond(&format!("Good bye {first}"))
            },
        )
        .unwrap();

    for progress_thread in [false, true] {
        let client = blocking::Engine::builder(proto)
            .client()
            .use_progress_thread(progress_thread)
            .build()
            .unwrap();
        let address = client.lookup(&server.address().to_string()).unwrap();
        let stall = client.remote::<u32, u32>("stall").timeout(HANG_GUARD);
        let request = stall.on(&address).call_nonblocking(&21).unwrap();
        // Without a progress thread the request only moves while the client
        // is inside the engine: test() drives it.
        let deadline = Instant::now() + HANG_GUARD;
        let n = loop {
            assert!(!request.test(), "completed before the handler answered");
            match started_rx.try_recv() {
                Ok(n) => break n,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "hang guard: the request never reached the server"
                    );
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(n, 21);
        assert!(!request.test(), "completed before the handler answered");

        let hello = client
            .remote::<(&str, &str), String>("hello")
            .timeout(HANG_GUARD);
        assert_eq!(
            hello.on(&address).call(&("Matthieu", "Dorier")).unwrap(),
            "Good bye Matthieu"
        );
        assert!(!request.test(), "completed before the handler answered");

        release_tx.send(()).unwrap();
        while !request.test() {
            assert!(
                Instant::now() < deadline,
                "hang guard: test() never turned true"
            );
            std::thread::yield_now();
        }
        assert_eq!(request.wait().unwrap(), 42);

        // wait() without test() first.
        let request = stall.on(&address).call_nonblocking(&5).unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(request.wait().unwrap(), 10);
        assert_eq!(started_rx.recv_timeout(HANG_GUARD).unwrap(), 5);
    }
}

/// The blocking example of `courier`'s crate docs: server and client in
/// one thread. The server has a progress thread, so it serves while the
/// client blocks in `call` (without one, nothing would drive it: Margo's
/// semantics).
pub fn blocking_doc_example_one_thread(proto: &str) {
    let server = blocking::Engine::builder(proto)
        .use_progress_thread(true)
        .build()
        .unwrap();
    server
        .register(
            "hello",
            |handle: blocking::Handle, (first, last): (String, String)| {
                handle.respond(&format!("Good bye {first} {last}"))
            },
        )
        .unwrap();
    let client = blocking::Engine::builder(proto).client().build().unwrap();
    // Half the hang guard, so that the call's own error is what fails.
    let hello = client
        .remote::<(&str, &str), String>("hello")
        .timeout(HANG_GUARD / 2);
    let address = client.lookup(&server.address().to_string()).unwrap();
    assert_eq!(
        hello.on(&address).call(&("Matthieu", "Dorier")).unwrap(),
        "Good bye Matthieu Dorier"
    );
}

/// A blocking server-mode engine dropped before any other blocking call on
/// it (its accept loop never ran) does not hang in `Drop`. Regression test
/// for the same lost stop signal as `finalize_right_after_build`.
pub fn blocking_server_dropped_right_after_build(proto: &str) {
    let server = blocking::Engine::new(proto).unwrap();
    drop(server);
}
