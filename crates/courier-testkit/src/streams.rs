//! Streams over the protocol: server-, client- and bidirectional streams,
//! typed and raw; flow control that holds a producer back; the end, an
//! error in the middle, an abort, a cancel, each reaching the other side;
//! an item over the largest refused before it is sent; a peer that goes
//! away releasing the stream's buffers and its handler.
//!
//! The engines here grant a small window (64 KiB), so that a few hundred
//! items exercise the credit many times over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use courier::stats::Stats;
use courier::{Bytes, Engine, Error, Handle, RpcOptions};

use crate::stats::settled;
use crate::{guard, lookup, pattern};

/// The window of the engines of these scenarios.
const WINDOW: u64 = 64 << 10;

/// The configuration of these scenarios' engines.
fn config() -> String {
    format!(r#"{{"streams": {{"window_bytes": {WINDOW}}}}}"#)
}

async fn server(proto: &str) -> Engine {
    Engine::builder(proto)
        .config_json(&config())
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} server engine: {e}"))
}

async fn client(proto: &str) -> Engine {
    Engine::builder(proto)
        .client()
        .config_json(&config())
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot start a {proto} client engine: {e}"))
}

/// A server, a client, and the server's address as the client sees it.
async fn pair(proto: &str) -> (Engine, Engine, courier::Address) {
    let server = server(proto).await;
    let client = client(proto).await;
    let address = lookup(&client, &server).await;
    (server, client, address)
}

async fn finalize(server: Engine, client: Engine) {
    guard("finalize", async {
        client.finalize().await;
        server.finalize().await;
    })
    .await;
}

/// No stream open and nothing buffered on an engine, and no request of it
/// in flight: what a stream leaves behind once it is over.
pub fn clean(stats: &Stats) -> bool {
    stats.streams.open == 0
        && stats.streams.buffered_bytes == 0
        && stats
            .rpcs
            .iter()
            .filter_map(|r| r.served.as_ref())
            .all(|s| s.in_flight == 0)
}

type Tell = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<String>>>>;

/// Tells a test how a handler ended, when its future goes: what the
/// handler [`set`](Ended::set), or "dropped" if its future was dropped
/// first (a cancel).
struct Ended(Tell, String);

impl Ended {
    fn set(&mut self, why: String) {
        self.1 = why;
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        if let Some(tx) = self.0.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(std::mem::take(&mut self.1));
        }
    }
}

/// Server-streaming: the handler sends 1000 typed items; the caller reads
/// them in order, then the answer.
pub async fn server_streaming(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("count", |h: Handle, n: u32| async move {
            for i in 0..n {
                h.send_item(&(i, format!("item {i}"))).await?;
            }
            h.respond(&n).await
        })
        .unwrap();
    let count = client.remote::<u32, u32>("count");
    guard("server streaming", async {
        let mut s = count
            .on(&address)
            .stream::<(), (u32, String)>(&1000)
            .await
            .unwrap();
        for i in 0..1000 {
            let (n, text) = s.recv().await.unwrap().expect("an item");
            assert_eq!((n, text), (i, format!("item {i}")));
        }
        assert!(s.recv().await.unwrap().is_none(), "the stream goes on");
        // The end stays the end.
        assert!(s.recv().await.unwrap().is_none());
        assert_eq!(s.finish().await.unwrap(), 1000);
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    settled(&client, "the client's stream is over", clean).await;
    finalize(server, client).await;
}

/// Client-streaming: the caller sends 2000 items (several windows); the
/// handler sums them and answers.
pub async fn client_streaming(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("sum", |h: Handle, (): ()| async move {
            let mut total = 0u64;
            let mut items = 0u64;
            while let Some(x) = h.recv_item::<u64>().await? {
                total += x;
                items += 1;
            }
            h.respond(&(items, total)).await
        })
        .unwrap();
    let sum = client.remote::<(), (u64, u64)>("sum");
    guard("client streaming", async {
        let mut s = sum.on(&address).stream::<u64, ()>(&()).await.unwrap();
        for x in 1..=2000u64 {
            s.send(&x).await.unwrap();
        }
        s.close().await.unwrap();
        assert_eq!(s.finish().await.unwrap(), (2000, 2000 * 2001 / 2));
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    finalize(server, client).await;
}

/// Bidirectional, raw: the handler echoes each item back reversed while
/// the caller sends (from another task) and reads; items of many sizes,
/// empty and large ones included, intact and in order.
pub async fn bidirectional_raw(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register_raw(
            "reverse",
            RpcOptions::default(),
            |h: Handle, _args: Bytes| async move {
                while let Some(item) = h.recv_item_raw().await? {
                    let mut back = item.to_vec();
                    back.reverse();
                    h.send_item_raw(&back).await?;
                }
                Ok::<(), Error>(())
            },
        )
        .unwrap();
    let sizes: Vec<usize> = (0..300)
        .map(|i| [0, 1, 7, 100, 1000, 70_000][i % 6])
        .collect();
    guard("bidirectional", async {
        let call = client
            .remote_raw("reverse")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        let (mut tx, mut rx) = call.split();
        let sent = sizes.clone();
        let producer = tokio::spawn(async move {
            for (i, len) in sent.into_iter().enumerate() {
                tx.send(&pattern(len, i as u8)).await.unwrap();
            }
            tx.close().await.unwrap();
        });
        for (i, &len) in sizes.iter().enumerate() {
            let item = rx.recv().await.unwrap().expect("an item");
            let mut expected = pattern(len, i as u8);
            expected.reverse();
            assert!(item == expected, "item {i} ({len} bytes) came back wrong");
        }
        assert!(rx.recv().await.unwrap().is_none());
        assert!(rx.finish().await.unwrap().is_empty());
        producer.await.unwrap();
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    settled(&client, "the client's stream is over", clean).await;
    finalize(server, client).await;
}

/// Flow control: a handler that would send forever is held back by a
/// caller that does not read; what the caller holds stays within the
/// window (plus one item), and the handler has sent no more than its
/// credit allowed. Reading on lets it go on.
pub async fn flow_control_holds_the_producer(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let sent = Arc::new(AtomicU64::new(0));
    let counted = sent.clone();
    server
        .register_raw(
            "flood",
            RpcOptions::default(),
            move |h: Handle, _: Bytes| {
                let sent = counted.clone();
                async move {
                    let item = vec![1u8; 1000];
                    loop {
                        h.send_item_raw(&item).await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), Error>(())
                }
            },
        )
        .unwrap();
    let cost = 1000 + 32;
    let most = WINDOW / cost + 1;
    guard("flow control", async {
        let mut s = client
            .remote_raw("flood")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        // The handler runs until its credit is spent: the caller then holds
        // the whole window, unread.
        let stats = settled(&client, "the window filled", |st| {
            st.streams.buffered_bytes >= WINDOW / cost * 1000
        })
        .await;
        assert!(
            stats.streams.buffered_bytes <= WINDOW + 1000,
            "the caller holds {} bytes, over its window of {WINDOW}",
            stats.streams.buffered_bytes
        );
        let before = sent.load(Ordering::SeqCst);
        assert!(
            before <= most,
            "the handler sent {before} items on credit for {most}"
        );
        // Reading frees credit, and the handler goes on.
        for _ in 0..(3 * most) {
            assert_eq!(s.recv().await.unwrap().expect("an item").len(), 1000);
        }
        assert!(sent.load(Ordering::SeqCst) > before);
        // Dropping the call cancels the handler.
        drop(s);
    })
    .await;
    settled(&server, "the handler is cancelled", clean).await;
    settled(&client, "the client's stream is over", clean).await;
    finalize(server, client).await;
}

/// An error in the middle: the caller reads the items sent before it,
/// then the handler's error.
pub async fn error_in_the_middle(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("three_then_fail", |h: Handle, (): ()| async move {
            for i in 0..3u8 {
                h.send_item(&i).await.map_err(|e| e.to_string())?;
            }
            Err::<(), _>("the disk is on fire".to_owned())
        })
        .unwrap();
    let f = client.remote::<(), ()>("three_then_fail");
    guard("error in the middle", async {
        let mut s = f.on(&address).stream::<(), u8>(&()).await.unwrap();
        for i in 0..3u8 {
            assert_eq!(s.recv().await.unwrap(), Some(i));
        }
        match s.recv().await {
            Err(Error::Remote { message, .. }) => assert!(message.contains("on fire"), "{message}"),
            other => panic!("expected the handler's error, got {other:?}"),
        }
        match s.finish().await {
            Err(Error::Remote { message, .. }) => assert!(message.contains("on fire")),
            other => panic!("expected the handler's error, got {other:?}"),
        }
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    finalize(server, client).await;
}

/// The caller aborts its request stream: the handler reads the items
/// before the abort, then `StreamAborted` with the caller's message.
pub async fn caller_aborts(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("collect", |h: Handle, (): ()| async move {
            let mut got = Vec::new();
            loop {
                match h.recv_item::<u32>().await {
                    Ok(Some(x)) => got.push(x),
                    Ok(None) => return h.respond(&(got, String::new())).await,
                    Err(Error::StreamAborted { message, .. }) => {
                        return h.respond(&(got, message)).await
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .unwrap();
    let f = client.remote::<(), (Vec<u32>, String)>("collect");
    guard("caller aborts", async {
        let mut s = f.on(&address).stream::<u32, ()>(&()).await.unwrap();
        s.send(&1).await.unwrap();
        s.send(&2).await.unwrap();
        s.abort("changed my mind").await.unwrap();
        // Nothing more goes out.
        assert!(matches!(s.send(&3).await, Err(Error::StreamEnded { .. })));
        let (got, why) = s.finish().await.unwrap();
        assert_eq!(got, [1, 2]);
        assert_eq!(why, "changed my mind");
    })
    .await;
    finalize(server, client).await;
}

/// The caller drops its stream mid-way: the handler, waiting for credit
/// to send, is cancelled (its future dropped), and both sides let go of
/// the stream.
pub async fn caller_cancels(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    server
        .register_raw(
            "endless",
            RpcOptions::default(),
            move |h: Handle, _: Bytes| {
                let tell = dropped_tx.clone();
                async move {
                    // Tells the test when the handler's future is dropped.
                    struct OnDrop(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            if let Some(tx) = self.0.lock().ok().and_then(|mut t| t.take()) {
                                let _ = tx.send(());
                            }
                        }
                    }
                    let _on_drop = OnDrop(tell);
                    loop {
                        h.send_item_raw(&[0u8; 512]).await?;
                    }
                    #[allow(unreachable_code)]
                    Ok::<(), Error>(())
                }
            },
        )
        .unwrap();
    guard("caller cancels", async {
        let mut s = client
            .remote_raw("endless")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        assert!(s.recv().await.unwrap().is_some());
        drop(s);
        dropped_rx.await.expect("the handler's future was dropped");
    })
    .await;
    settled(&server, "the server let go of the stream", clean).await;
    settled(&client, "the client let go of the stream", clean).await;
    finalize(server, client).await;
}

/// The handler answers before the caller is done sending: the caller's
/// sends then fail with `StreamEnded`, and `finish` has the answer.
pub async fn handler_answers_early(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("first_only", |h: Handle, (): ()| async move {
            let first = h.recv_item::<u64>().await?;
            h.respond(&first).await
        })
        .unwrap();
    let f = client.remote::<(), Option<u64>>("first_only");
    guard("handler answers early", async {
        let mut s = f.on(&address).stream::<u64, ()>(&()).await.unwrap();
        let mut ended = None;
        for x in 7.. {
            if let Err(e) = s.send(&x).await {
                ended = Some(e);
                break;
            }
        }
        assert!(
            matches!(ended, Some(Error::StreamEnded { .. })),
            "{ended:?}"
        );
        assert_eq!(s.finish().await.unwrap(), Some(7));
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    finalize(server, client).await;
}

/// An item over the largest is refused before it is sent, on both sides;
/// the stream goes on.
pub async fn oversized_item_is_refused(proto: &str) {
    let server = Engine::builder(proto)
        .config_json(r#"{"streams": {"max_item_bytes": 1000}}"#)
        .build()
        .await
        .unwrap();
    let client = Engine::builder(proto)
        .client()
        .config_json(r#"{"streams": {"max_item_bytes": 1000}}"#)
        .build()
        .await
        .unwrap();
    let address = lookup(&client, &server).await;
    server
        .register_raw(
            "echo_items",
            RpcOptions::default(),
            |h: Handle, _: Bytes| async move {
                let too_big = h.send_item_raw(&[0u8; 1001]).await;
                assert!(
                    matches!(
                        &too_big,
                        Err(Error::StreamItemTooLarge {
                            size: 1001,
                            max: 1000,
                            ..
                        })
                    ),
                    "{too_big:?}"
                );
                while let Some(item) = h.recv_item_raw().await? {
                    h.send_item_raw(&item).await?;
                }
                Ok::<(), Error>(())
            },
        )
        .unwrap();
    guard("oversized item", async {
        let mut s = client
            .remote_raw("echo_items")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        let err = s.send(&[1u8; 1001]).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::StreamItemTooLarge {
                    size: 1001,
                    max: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("1001-byte item"), "{err}");
        s.send(&[2u8; 1000]).await.unwrap();
        assert_eq!(s.recv().await.unwrap().expect("echo").len(), 1000);
        s.close().await.unwrap();
        assert!(s.recv().await.unwrap().is_none());
        s.finish().await.unwrap();
    })
    .await;
    finalize(server, client).await;
}

/// A unary call to a handler that streams: the handler is told
/// (`NotAStream`), and the caller gets its error.
pub async fn unary_call_to_a_stream_handler(proto: &str) {
    let (server, client, address) = pair(proto).await;
    server
        .register("streams", |h: Handle, (): ()| async move {
            assert!(!h.is_stream());
            h.send_item(&1u8).await
        })
        .unwrap();
    let f = client.remote::<(), ()>("streams");
    let err = guard("unary call", f.on(&address).call(&()))
        .await
        .unwrap_err();
    match err {
        Error::Remote { message, .. } => {
            assert!(message.contains("not called as a stream"), "{message}")
        }
        other => panic!("expected the handler's NotAStream, got {other:?}"),
    }
    finalize(server, client).await;
}

/// The caller's engine goes away mid-stream: the handler, waiting for the
/// next item, ends, and the server releases the stream's buffers and the
/// request (nothing open, nothing buffered, nothing in flight).
pub async fn peer_gone_releases_the_stream(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<String>();
    let ended_tx: Tell = Arc::new(std::sync::Mutex::new(Some(ended_tx)));
    server
        .register_raw("sink", RpcOptions::default(), move |h: Handle, _: Bytes| {
            let mut ended = Ended(ended_tx.clone(), "dropped".to_owned());
            async move {
                let why = loop {
                    match h.recv_item_raw().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break "ended".to_owned(),
                        Err(e) => break e.to_string(),
                    }
                };
                ended.set(why);
                Ok::<(), Error>(())
            }
        })
        .unwrap();
    guard("peer gone", async {
        let mut s = client
            .remote_raw("sink")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        for i in 0..10u8 {
            s.send(&pattern(5000, i)).await.unwrap();
        }
        // The client goes away without closing its stream.
        client.finalize().await;
        drop(s);
    })
    .await;
    // The handler either saw the connection go (it was waiting) or was
    // cancelled with it (its future dropped): both release it.
    let why = guard("the handler ends", ended_rx).await.unwrap();
    assert_ne!(why, "ended", "a lost caller is not a clean end");
    settled(&server, "the server released the stream", clean).await;
    guard("finalize", server.finalize()).await;
}

/// A stream's arguments and answer over the largest message travel by
/// the bulk path, as a call's do; the items in between are messages.
pub async fn large_arguments_and_answer(proto: &str) {
    let build = |client: bool| {
        let b = Engine::builder(proto)
            .config_json(&config())
            .max_message_size(1 << 20);
        if client {
            b.client()
        } else {
            b
        }
    };
    let server = build(false).build().await.unwrap();
    let client = build(true).build().await.unwrap();
    let address = lookup(&client, &server).await;
    server
        .register_raw(
            "mirror",
            RpcOptions::default(),
            |h: Handle, args: Bytes| async move {
                h.send_item_raw(&args[..1000]).await?;
                h.send_item_raw(&args[args.len() - 1000..]).await?;
                let mut back = args.to_vec();
                back.reverse();
                h.respond_raw(&back).await
            },
        )
        .unwrap();
    let args = pattern(3 << 20, 9);
    guard("large arguments and answer", async {
        let mut s = client
            .remote_raw("mirror")
            .on(&address)
            .stream(&args)
            .await
            .unwrap();
        assert!(s.recv().await.unwrap().unwrap() == args[..1000]);
        assert!(s.recv().await.unwrap().unwrap() == args[args.len() - 1000..]);
        assert!(s.recv().await.unwrap().is_none());
        let mut expected = args.clone();
        expected.reverse();
        assert!(
            s.finish().await.unwrap() == expected,
            "the answer came back wrong"
        );
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    finalize(server, client).await;
}

/// A caller that drops an upload part way cancels it: the handler never
/// reads a clean end of the request stream (it is cancelled, its future
/// dropped or its read failing), so it cannot take a cut upload for a
/// whole one.
pub async fn dropped_upload_is_not_complete(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<String>();
    let ended_tx: Tell = Arc::new(std::sync::Mutex::new(Some(ended_tx)));
    server
        .register_raw(
            "upload",
            RpcOptions::default(),
            move |h: Handle, _: Bytes| {
                let mut ended = Ended(ended_tx.clone(), "dropped".to_owned());
                async move {
                    let why = loop {
                        match h.recv_item_raw().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break "a clean end".to_owned(),
                            Err(e) => break e.to_string(),
                        }
                    };
                    ended.set(why);
                    Ok::<(), Error>(())
                }
            },
        )
        .unwrap();
    guard("dropped upload", async {
        let mut s = client
            .remote_raw("upload")
            .on(&address)
            .stream(b"")
            .await
            .unwrap();
        for i in 0..5u8 {
            s.send(&pattern(100, i)).await.unwrap();
        }
        drop(s);
        let why = ended_rx.await.unwrap();
        assert_ne!(why, "a clean end", "a dropped upload read as complete");
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    finalize(server, client).await;
}

/// A stream's deadline bounds the whole stream: a caller that stops
/// reading gets `Timeout` once it passes, and the handler, waiting for
/// credit, is cancelled by the same deadline (it travelled with the
/// request): its future is dropped, and both sides let go.
pub async fn deadline_bounds_the_stream(proto: &str) {
    let (server, client, address) = pair(proto).await;
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<String>();
    let ended_tx: Tell = Arc::new(std::sync::Mutex::new(Some(ended_tx)));
    server
        .register_raw(
            "endless",
            RpcOptions::default(),
            move |h: Handle, _: Bytes| {
                let mut ended = Ended(ended_tx.clone(), "dropped".to_owned());
                async move {
                    let why = loop {
                        if let Err(e) = h.send_item_raw(&[3u8; 1000]).await {
                            break e.to_string();
                        }
                    };
                    ended.set(why);
                    Ok::<(), Error>(())
                }
            },
        )
        .unwrap();
    guard("stream deadline", async {
        let f = client
            .remote_raw("endless")
            .timeout(std::time::Duration::from_millis(200));
        let mut s = f.on(&address).stream(b"").await.unwrap();
        assert!(s.recv().await.unwrap().is_some());
        // Not reading: the handler fills the window and waits. The next
        // read still returns what is queued, then the deadline's error.
        let err = loop {
            match s.recv().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("an endless stream ended"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        let why = ended_rx.await.unwrap();
        assert!(
            why == "dropped" || why.contains("cancelled"),
            "the handler ended with: {why}"
        );
        drop(s);
    })
    .await;
    settled(&server, "the server's stream is over", clean).await;
    settled(&client, "the client's stream is over", clean).await;
    finalize(server, client).await;
}
