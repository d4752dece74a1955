//! Payloads of any size, at their limits (`docs/bulk.md`, "Payloads of any
//! size"): a payload over `max_payload_bytes` is refused with
//! `Error::TooLarge` — by the caller before anything is sent, or by the
//! receiver before it pulls or allocates anything, and by a handler's
//! engine for a response, inline or not — and the arguments of a
//! request that waits for its provider's place, or runs on RPC threads,
//! are pulled there.
//!
//! Over `mem` and `tcp`, with 1 MiB messages so that the payloads are
//! small. Nothing waits by sleeping: statistics are polled until they
//! settle, under a hang guard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier::stats::Stats;
use courier::{Bytes, Engine, Error, Handle, ProviderOptions, Reach, RpcOptions};

/// A hang guard, not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

const MIB: usize = 1 << 20;

async fn guard<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("hang guard: {what} did not finish within {HANG_GUARD:?}"),
    }
}

/// Waits (under the hang guard) until `engine`'s statistics satisfy `cond`.
async fn settled(engine: &Engine, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    guard(what, async {
        loop {
            let stats = engine.stats();
            if cond(&stats) {
                return stats;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// An engine of `proto` with 1 MiB messages and `cap` as its
/// `max_payload_bytes` (the default if `None`).
async fn engine(proto: &str, client: bool, cap: Option<u64>) -> Engine {
    let mut b = Engine::builder(proto).max_message_size(MIB);
    if client {
        b = b.client();
    }
    if let Some(cap) = cap {
        b = b.max_payload_bytes(cap);
    }
    b.build().await.unwrap()
}

/// Registers `len` (answers the length of its raw payload, setting `ran`)
/// and `produce` (answers `n` bytes of 7s, and reports what its respond
/// returned on `said`).
fn register(
    server: &Engine,
    ran: Arc<AtomicBool>,
) -> tokio::sync::mpsc::UnboundedReceiver<courier::Result<()>> {
    server
        .register_raw("len", RpcOptions::default(), move |h: Handle, p: Bytes| {
            ran.store(true, Ordering::SeqCst);
            async move { h.respond(&(p.len() as u64)).await }
        })
        .unwrap();
    let (said_tx, said) = tokio::sync::mpsc::unbounded_channel();
    server
        .register("produce", move |h: Handle, n: usize| {
            let said_tx = said_tx.clone();
            async move {
                let r = h.respond_raw(&vec![7u8; n]).await;
                let _ = said_tx.send(r);
            }
        })
        .unwrap();
    said
}

/// Over the caller's own `max_payload_bytes`: `TooLarge` at once, naming
/// the RPC and both sizes, nothing sent (the server saw no request).
async fn over_the_callers_cap(proto: &str) {
    let server = engine(proto, false, None).await;
    let ran = Arc::new(AtomicBool::new(false));
    let _said = register(&server, ran.clone());
    let client = engine(proto, true, Some(2 * MIB as u64)).await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let big = vec![1u8; 3 * MIB];
    let err = guard("call", client.remote_raw("len").on(&address).call(&big))
        .await
        .unwrap_err();
    match &err {
        Error::TooLarge {
            what,
            size,
            max,
            whose,
            response,
            ..
        } => {
            assert_eq!(what, "the arguments of RPC 'len'");
            assert_eq!((*size, *max), (3 * MIB as u64, 2 * MIB as u64));
            assert_eq!(whose, "this engine");
            assert!(!response);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("3145728") && text.contains("2097152"),
        "{text}"
    );
    assert_eq!(err.reach(), Reach::NotReached);
    // The typed API says the same.
    let err = guard(
        "typed call",
        client.remote::<Vec<u8>, u64>("len").on(&address).call(&big),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    let stats = client.stats();
    assert_eq!(stats.bulk.payloads_sent, 0, "nothing exposed");
    assert_eq!(stats.bulk.regions, 0);
    assert!(!ran.load(Ordering::SeqCst));
    assert!(
        server
            .stats()
            .rpc("len", 0)
            .is_none_or(|r| r.served.is_none()),
        "the server saw a request"
    );
}

/// Over the server's `max_payload_bytes` only: the server refuses it
/// before pulling or allocating anything (its statistics say so), the
/// caller gets its `TooLarge` with the server's limit, and its region is
/// withdrawn.
async fn over_the_servers_cap(proto: &str) {
    let server = engine(proto, false, Some(2 * MIB as u64)).await;
    let ran = Arc::new(AtomicBool::new(false));
    let _said = register(&server, ran.clone());
    let client = engine(proto, true, None).await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let err = guard(
        "call",
        client
            .remote_raw("len")
            .on(&address)
            .call(&vec![1u8; 3 * MIB]),
    )
    .await
    .unwrap_err();
    match &err {
        Error::TooLarge {
            what,
            size,
            max,
            whose,
            response,
            why,
        } => {
            assert_eq!(what, "the arguments of RPC 'len'");
            assert_eq!((*size, *max), (3 * MIB as u64, 2 * MIB as u64));
            assert_eq!(whose, &server.address().to_string());
            assert!(why.contains("max_payload_bytes (2097152 bytes)"), "{why}");
            assert!(!response);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(err.reach(), Reach::NotReached);
    let stats = server.stats();
    assert_eq!(stats.bulk.payloads_refused, 1);
    assert_eq!(stats.bulk.payloads_received, 0);
    assert_eq!(stats.bulk.bytes_pulled, 0, "nothing pulled");
    assert_eq!(stats.bulk.transfers, 0, "no transfer started");
    assert!(!ran.load(Ordering::SeqCst), "the handler ran");
    let served = stats.rpc("len", 0).unwrap().served.clone().unwrap();
    assert_eq!(served.errors_of("invalid"), 1);
    assert_eq!(
        served.bytes_in,
        3 * MIB as u64,
        "counted at its real length"
    );
    assert_eq!(
        client.stats().bulk.regions,
        0,
        "the caller's region is gone"
    );
    // Under the limit, the same connection serves it.
    let ok = guard(
        "call under the limit",
        client
            .remote_raw("len")
            .on(&address)
            .call(&vec![1u8; 2 * MIB]),
    )
    .await
    .unwrap();
    assert_eq!(postcard::from_bytes::<u64>(&ok).unwrap(), 2 * MIB as u64);
}

/// A response over the caller's `max_payload_bytes`: not pulled, the
/// caller gets `TooLarge` (its own limit; the handler ran), and the
/// server frees the response at once (the caller released it).
async fn response_over_the_callers_cap(proto: &str) {
    let server = engine(proto, false, None).await;
    let _said = register(&server, Arc::default());
    let client = engine(proto, true, Some(2 * MIB as u64)).await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let err = guard(
        "call",
        client
            .remote::<usize, Vec<u8>>("produce")
            .on(&address)
            .call(&(3 * MIB)),
    )
    .await
    .unwrap_err();
    match &err {
        Error::TooLarge {
            what,
            size,
            max,
            whose,
            response,
            ..
        } => {
            assert!(
                what.starts_with("the response of RPC 'produce' from "),
                "{what}"
            );
            assert_eq!((*size, *max), (3 * MIB as u64, 2 * MIB as u64));
            assert_eq!(whose, "this engine");
            assert!(response);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(err.reach(), Reach::Reached);
    let stats = client.stats();
    assert_eq!(stats.bulk.payloads_refused, 1);
    assert_eq!(stats.bulk.bytes_pulled, 0);
    settled(&server, "the server frees the response", |s| {
        s.bulk.payloads_sent == 1 && s.bulk.held_responses == 0 && s.bulk.regions == 0
    })
    .await;
}

/// A response over the server's own `max_payload_bytes`: its handler's
/// `respond` fails with `TooLarge`, and the caller gets the server's
/// refusal.
async fn response_over_the_servers_cap(proto: &str) {
    let server = engine(proto, false, Some(2 * MIB as u64)).await;
    let mut said = register(&server, Arc::default());
    let client = engine(proto, true, None).await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let err = guard(
        "call",
        client
            .remote::<usize, Vec<u8>>("produce")
            .on(&address)
            .call(&(3 * MIB)),
    )
    .await
    .unwrap_err();
    match &err {
        Error::TooLarge {
            what,
            size,
            max,
            whose,
            response,
            ..
        } => {
            assert_eq!(what, "the response of RPC 'produce'");
            assert_eq!((*size, *max), (3 * MIB as u64, 2 * MIB as u64));
            assert_eq!(whose, &server.address().to_string());
            assert!(response);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let handler_saw = guard("the handler's respond", said.recv()).await.unwrap();
    assert!(
        matches!(handler_saw, Err(Error::TooLarge { response: true, .. })),
        "{handler_saw:?}"
    );
    assert_eq!(server.stats().bulk.regions, 0, "nothing exposed");
}

/// `max_payload_bytes` below the largest message bounds what an engine
/// sends inline too: arguments refused at once, a response refused (the
/// caller gets the server's `TooLarge`).
async fn a_cap_below_the_largest_message(proto: &str) {
    let server = engine(proto, false, Some(1000)).await;
    let mut said = register(&server, Arc::default());
    let client = engine(proto, true, Some(1000)).await;
    let address = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let err = guard(
        "call",
        client.remote_raw("len").on(&address).call(&[0; 1001]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 1001,
                max: 1000,
                response: false,
                ..
            }
        ),
        "{err:?}"
    );
    let err = guard(
        "call",
        client
            .remote::<usize, Vec<u8>>("produce")
            .on(&address)
            .call(&2000),
    )
    .await
    .unwrap_err();
    match &err {
        Error::TooLarge {
            what,
            max,
            whose,
            response,
            ..
        } => {
            assert_eq!(what, "the response of RPC 'produce'");
            assert_eq!(*max, 1000);
            assert_eq!(whose, &server.address().to_string());
            assert!(response);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let handler_saw = guard("the handler's respond", said.recv()).await.unwrap();
    assert!(
        matches!(handler_saw, Err(Error::TooLarge { .. })),
        "{handler_saw:?}"
    );
    // Within the cap, inline as ever.
    let n = guard(
        "call",
        client.remote_raw("len").on(&address).call(&[0; 1000]),
    )
    .await
    .unwrap();
    assert_eq!(postcard::from_bytes::<u64>(&n).unwrap(), 1000);
    assert_eq!(client.stats().bulk.payloads_sent, 0);
}

/// Arguments by the bulk path to a provider with limits and a pool (pulled
/// once the request has its place, on the pool), and to an engine whose
/// handlers run on RPC threads.
async fn providers_and_rpc_threads(proto: &str) {
    let server = Engine::builder(proto)
        .max_message_size(MIB)
        .pool("big", 1)
        .provider(3, ProviderOptions::limits(1, 4).pool("big"))
        .build()
        .await
        .unwrap();
    server
        .register_raw(
            "len",
            RpcOptions::provider(3),
            |h: Handle, p: Bytes| async move { h.respond(&(p.len() as u64)).await },
        )
        .unwrap();
    let threaded = Engine::builder(proto)
        .max_message_size(MIB)
        .num_rpc_threads(2)
        .build()
        .await
        .unwrap();
    threaded
        .register_raw(
            "len",
            RpcOptions::default(),
            |h: Handle, p: Bytes| async move { h.respond(&(p.len() as u64)).await },
        )
        .unwrap();
    let client = engine(proto, true, None).await;
    let len = client.remote::<Vec<u8>, u64>("len");
    let pooled = guard("lookup", client.lookup(&server.address().to_string()))
        .await
        .unwrap();
    let calls: Vec<_> = (1..=3)
        .map(|i| {
            let call = len.on_provider(&pooled, 3);
            tokio::spawn(async move { call.call(&vec![i as u8; (i + 1) * MIB]).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let n = guard("pooled call", call).await.unwrap().unwrap();
        // The typed encoding's length prefix comes with the bytes.
        assert!(n > ((i + 2) * MIB) as u64, "{n}");
    }
    let address = guard("lookup", client.lookup(&threaded.address().to_string()))
        .await
        .unwrap();
    let n = guard(
        "call to RPC threads",
        len.on(&address).call(&vec![5u8; 3 * MIB]),
    )
    .await
    .unwrap();
    assert!(n > (3 * MIB) as u64);
    assert_eq!(client.stats().bulk.payloads_sent, 4);
}

macro_rules! overflow_tests {
    ($($proto:ident),*) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_the_callers_cap() {
                super::over_the_callers_cap(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn over_the_servers_cap() {
                super::over_the_servers_cap(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn response_over_the_callers_cap() {
                super::response_over_the_callers_cap(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn response_over_the_servers_cap() {
                super::response_over_the_servers_cap(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_cap_below_the_largest_message() {
                super::a_cap_below_the_largest_message(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn providers_and_rpc_threads() {
                super::providers_and_rpc_threads(PROTO).await;
            }
        }
    )*};
}

overflow_tests!(mem, tcp);
