//! Streams in the blocking API (issue 19): a blocking caller's
//! `StreamCall` (send, recv, close, abort, finish, split, cancel) and a
//! blocking handler's stream methods (`Handle::send_item`, `recv_item`),
//! in every threading set-up of the serving engine. A handler's stream
//! operations fail with `Error::Cancelled` once its caller has gone or its
//! deadline has passed, whether they wait or not.
//!
//! What a handler saw comes back through a channel; nothing sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use courier::{blocking, Error};

/// Long enough never to be reached unless something hangs.
const HANG: Duration = Duration::from_secs(30);

/// The four threading set-ups: (use_progress_thread, num_rpc_threads).
const MODES: [(bool, usize); 4] = [(false, 0), (true, 0), (false, 2), (true, 2)];

/// A small window, so that a few items use the credit up and flow control
/// works hard (credit granted back many times).
const SMALL_WINDOW: &str = r#"{"streams": {"window_bytes": 1024}}"#;

/// A server in the given set-up, a client (no progress thread) and the
/// server's address as the client sees it; both with `config`.
fn pair(
    progress: bool,
    rpc: usize,
    config: &str,
) -> (blocking::Engine, blocking::Engine, blocking::Address) {
    let server = blocking::Engine::builder("tcp")
        .use_progress_thread(progress)
        .num_rpc_threads(rpc)
        .config_json(config)
        .build()
        .unwrap();
    let client = blocking::Engine::builder("tcp")
        .client()
        .config_json(config)
        .build()
        .unwrap();
    let address = client.lookup(&server.address().to_string()).unwrap();
    (server, client, address)
}

/// A sender the handlers (which must be `Sync`) report through.
fn reporter<T: Send + 'static>() -> (Mutex<mpsc::Sender<T>>, mpsc::Receiver<T>) {
    let (tx, rx) = mpsc::channel();
    (Mutex::new(tx), rx)
}

/// Server-streaming: the handler sends `n` items, then answers; the caller
/// reads them in order, `None` at the end (again if asked again), then
/// the answer.
#[test]
fn a_handler_streams_items_then_answers() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, "{}");
        server
            .register("count", |h: blocking::Handle, n: u32| {
                for i in 0..n {
                    h.send_item(&i)?;
                }
                h.respond(&format!("{n} sent"))
            })
            .unwrap();
        let count = client.remote::<u32, String>("count").timeout(HANG);
        let mut call = count.on(&address).stream::<(), u32>(&5).unwrap();
        let items: Vec<u32> = call.items().collect::<Result<_, _>>().unwrap();
        assert_eq!(items, [0, 1, 2, 3, 4], "mode {progress}/{rpc}");
        assert!(call.recv().unwrap().is_none(), "the end stays the end");
        assert_eq!(call.finish().unwrap(), "5 sent", "mode {progress}/{rpc}");
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// Client-streaming: the handler reads the caller's items until it closes
/// its stream, and answers their sum. `is_stream` tells a stream from a
/// call.
#[test]
fn a_handler_reads_the_callers_items() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, SMALL_WINDOW);
        server
            .register("sum", |h: blocking::Handle, (): ()| {
                let mut total = 0u64;
                while let Some(x) = h.recv_item::<u64>()? {
                    total += x;
                }
                h.respond(&(total, h.is_stream()))
            })
            .unwrap();
        server
            .register("is_stream", |h: blocking::Handle, (): ()| {
                h.respond(&h.is_stream())
            })
            .unwrap();
        let sum = client.remote::<(), (u64, bool)>("sum").timeout(HANG);
        let mut call = sum.on(&address).stream::<u64, ()>(&()).unwrap();
        for x in 1..=1000 {
            call.send(&x).unwrap();
        }
        call.close().unwrap();
        assert_eq!(
            call.finish().unwrap(),
            (500_500, true),
            "mode {progress}/{rpc}"
        );
        let is_stream = client.remote::<(), bool>("is_stream").timeout(HANG);
        assert!(!is_stream.on(&address).call(&()).unwrap());
        let call = is_stream.on(&address).stream::<(), ()>(&()).unwrap();
        assert!(call.finish().unwrap());
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// Bidirectional, with a small window both ways: the handler sends back
/// each item doubled as it reads it; the caller sends from one thread and
/// reads on another (one thread that sent everything before reading would
/// wait forever for credit, its handler waiting for credit too).
#[test]
fn both_ways_at_once_from_two_threads() {
    const N: u32 = 2000;
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, SMALL_WINDOW);
        server
            .register("double", |h: blocking::Handle, (): ()| {
                let mut seen = 0u32;
                while let Some(x) = h.recv_item::<u32>()? {
                    h.send_item(&(x * 2))?;
                    seen += 1;
                }
                h.respond(&seen)
            })
            .unwrap();
        let double = client.remote::<(), u32>("double").timeout(HANG);
        let call = double.on(&address).stream::<u32, u32>(&()).unwrap();
        let (mut sender, mut receiver) = call.split();
        let sending = std::thread::spawn(move || {
            for x in 0..N {
                sender.send(&x).unwrap();
            }
            sender.close().unwrap();
        });
        let mut expected = 0;
        for item in receiver.by_ref() {
            assert_eq!(item.unwrap(), expected * 2, "mode {progress}/{rpc}");
            expected += 1;
        }
        assert_eq!(expected, N);
        sending.join().unwrap();
        assert_eq!(receiver.finish().unwrap(), N, "mode {progress}/{rpc}");
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// A handler that fails after three items: the caller reads the three,
/// then the handler's error (and `finish` says it too).
#[test]
fn an_error_mid_stream_comes_after_the_items_before_it() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, "{}");
        server
            .register("three", |h: blocking::Handle, (): ()| {
                for i in 0..3u32 {
                    h.send_item(&i).map_err(|e| e.to_string())?;
                }
                Err::<(), _>("the fourth item is missing".to_owned())
            })
            .unwrap();
        let three = client.remote::<(), ()>("three").timeout(HANG);
        let mut call = three.on(&address).stream::<(), u32>(&()).unwrap();
        let got: Vec<Result<u32, Error>> = call.items().collect();
        assert_eq!(got.len(), 4, "mode {progress}/{rpc}: {got:?}");
        for (i, item) in got[..3].iter().enumerate() {
            assert_eq!(item.as_ref().unwrap(), &(i as u32));
        }
        let Err(Error::Remote { message, .. }) = &got[3] else {
            panic!("mode {progress}/{rpc}: {:?}", got[3]);
        };
        assert!(message.contains("the fourth item is missing"), "{message}");
        let err = call.finish().unwrap_err();
        assert!(matches!(err, Error::Remote { .. }), "{err:?}");
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// The caller reads three items of an endless stream and leaves (drops
/// its call, or cancels it): the handler's next `send_item` fails with
/// `Error::Cancelled`, and the handler stops.
#[test]
fn a_caller_that_leaves_cancels_the_handler() {
    for cancel in [false, true] {
        for (progress, rpc) in MODES {
            let (server, client, address) = pair(progress, rpc, SMALL_WINDOW);
            let (tx, rx) = reporter();
            server
                .register("endless", move |h: blocking::Handle, (): ()| {
                    let mut i = 0u64;
                    let err = loop {
                        if let Err(e) = h.send_item(&i) {
                            break e;
                        }
                        i += 1;
                    };
                    tx.lock().unwrap().send(err).unwrap();
                })
                .unwrap();
            let endless = client.remote::<(), ()>("endless").timeout(HANG);
            let mut call = endless.on(&address).stream::<(), u64>(&()).unwrap();
            for i in 0..3 {
                assert_eq!(call.recv().unwrap(), Some(i));
            }
            if cancel {
                call.cancel().unwrap();
            } else {
                drop(call);
            }
            let err = rx.recv_timeout(HANG).unwrap();
            assert!(
                matches!(err, Error::Cancelled { .. }),
                "cancel {cancel}, mode {progress}/{rpc}: {err:?}"
            );
            client.finalize().unwrap();
            server.finalize().unwrap();
        }
    }
}

/// A caller that cancels its call while its handler reads items: the
/// handler's read fails with `Cancelled` (never a clean end of the
/// request stream, which it could take for the caller's last item).
#[test]
fn a_handler_reading_items_sees_its_callers_cancel() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, "{}");
        let (tx, rx) = reporter();
        let (first_tx, first_rx) = reporter();
        server
            .register("read", move |h: blocking::Handle, (): ()| {
                let first = h.recv_item::<u32>();
                first_tx.lock().unwrap().send(()).unwrap();
                let end = match first {
                    Ok(Some(_)) => loop {
                        match h.recv_item::<u32>() {
                            Ok(Some(_)) => {}
                            other => break other,
                        }
                    },
                    other => other,
                };
                tx.lock().unwrap().send(end).unwrap();
            })
            .unwrap();
        let read = client.remote::<(), ()>("read").timeout(HANG);
        let mut call = read.on(&address).stream::<u32, ()>(&()).unwrap();
        call.send(&1).unwrap();
        // Cancelled before its handler started, a request never runs it:
        // the cancel comes once the handler has read an item.
        first_rx.recv_timeout(HANG).unwrap();
        call.send(&2).unwrap();
        call.cancel().unwrap();
        let end = rx.recv_timeout(HANG).unwrap();
        assert!(
            matches!(end, Err(Error::Cancelled { .. })),
            "mode {progress}/{rpc}: {end:?}"
        );
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// Flow control reaches a blocking handler: a caller that reads nothing
/// holds it in `send_item` once the window is used (a window of 1024
/// bytes holds at most 1024 / 32 items, plus one that overshoots), until
/// the caller's deadline passes and the wait fails with `Cancelled`.
#[test]
fn a_caller_that_reads_nothing_holds_the_handler_until_its_deadline() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, SMALL_WINDOW);
        let (tx, rx) = reporter();
        server
            .register("flood", move |h: blocking::Handle, (): ()| {
                let mut sent = 0u64;
                let err = loop {
                    if let Err(e) = h.send_item(&sent) {
                        break e;
                    }
                    sent += 1;
                };
                tx.lock().unwrap().send((sent, err)).unwrap();
            })
            .unwrap();
        let flood = client
            .remote::<(), ()>("flood")
            .timeout(Duration::from_millis(300));
        let mut call = flood.on(&address).stream::<(), u64>(&()).unwrap();
        let (sent, err) = rx.recv_timeout(HANG).unwrap();
        assert!(
            matches!(err, Error::Cancelled { .. }),
            "mode {progress}/{rpc}: {err:?}"
        );
        assert!(
            (1..=1024 / 32 + 1).contains(&sent),
            "mode {progress}/{rpc}: {sent} items sent into a 1024-byte window"
        );
        // The caller's side: items (those read off the connection before
        // the deadline), then its timeout.
        let mut read = 0;
        let err = loop {
            match call.recv() {
                Ok(Some(i)) => {
                    assert_eq!(i, read);
                    read += 1;
                }
                Ok(None) => panic!("mode {progress}/{rpc}: the stream ended"),
                Err(e) => break e,
            }
        };
        assert!(read <= sent, "mode {progress}/{rpc}: {read} of {sent}");
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// A handler waiting for an item that never comes fails with `Cancelled`
/// when the caller's deadline passes; the caller's read fails with its
/// timeout.
#[test]
fn a_deadline_ends_a_handler_waiting_for_items() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, "{}");
        let (tx, rx) = reporter();
        server
            .register("wait", move |h: blocking::Handle, (): ()| {
                let got = h.recv_item::<u32>();
                tx.lock().unwrap().send(got).unwrap();
            })
            .unwrap();
        let wait = client
            .remote::<(), ()>("wait")
            .timeout(Duration::from_millis(300));
        let mut call = wait.on(&address).stream::<u32, ()>(&()).unwrap();
        let err = call.recv().unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        let got = rx.recv_timeout(HANG).unwrap();
        assert!(
            matches!(got, Err(Error::Cancelled { .. })),
            "mode {progress}/{rpc}: {got:?}"
        );
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}

/// A caller that aborts its request stream: the handler reads the items
/// sent before, then `StreamAborted` with the caller's message, and may
/// still answer.
#[test]
fn an_aborted_request_stream_reaches_the_handler() {
    let (server, client, address) = pair(false, 0, "{}");
    server
        .register("collect", |h: blocking::Handle, (): ()| {
            let mut items = Vec::new();
            let end = loop {
                match h.recv_item::<String>() {
                    Ok(Some(item)) => items.push(item),
                    Ok(None) => break "closed".to_owned(),
                    Err(Error::StreamAborted { message, .. }) => {
                        break format!("aborted: {message}")
                    }
                    Err(e) => return Err(e),
                }
            };
            h.respond(&(items, end))
        })
        .unwrap();
    let collect = client
        .remote::<(), (Vec<String>, String)>("collect")
        .timeout(HANG);
    let mut call = collect.on(&address).stream::<str, ()>(&()).unwrap();
    call.send("a").unwrap();
    call.send("b").unwrap();
    call.abort("changed my mind").unwrap();
    let err = call.send("c").unwrap_err();
    assert!(matches!(err, Error::StreamEnded { .. }), "{err:?}");
    let (items, end) = call.finish().unwrap();
    assert_eq!(items, ["a", "b"]);
    assert_eq!(end, "aborted: changed my mind");
    client.finalize().unwrap();
    server.finalize().unwrap();
}

/// A handler that sends items to a caller that made a plain call gets
/// `NotAStream`, which its caller receives as the handler's error.
#[test]
fn items_need_a_stream() {
    let (server, client, address) = pair(false, 0, "{}");
    server
        .register("items", |h: blocking::Handle, (): ()| {
            h.send_item(&1u32)?;
            h.respond(&())
        })
        .unwrap();
    let items = client.remote::<(), ()>("items").timeout(HANG);
    let err = items.on(&address).call(&()).unwrap_err();
    let Error::Remote { message, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("not called as a stream"), "{message}");
    client.finalize().unwrap();
    server.finalize().unwrap();
}

/// A handler that streams from its own engine's stream: the inner stream,
/// opened from the handler, is served by another serving thread and
/// inherits the outer request's deadline.
#[test]
fn a_handler_can_relay_a_stream_of_its_own_engine() {
    for (progress, rpc) in MODES {
        let (server, client, address) = pair(progress, rpc, SMALL_WINDOW);
        server
            .register("source", |h: blocking::Handle, n: u32| {
                for i in 0..n {
                    h.send_item(&i)?;
                }
                h.respond(&h.deadline().is_some())
            })
            .unwrap();
        let me = server.lookup(&server.address().to_string()).unwrap();
        let source = server.remote::<u32, bool>("source").on(&me);
        server
            .register("relay", move |h: blocking::Handle, n: u32| {
                let mut inner = source.stream::<(), u32>(&n)?;
                while let Some(i) = inner.recv()? {
                    h.send_item(&(i + 100))?;
                }
                h.respond(&inner.finish()?)
            })
            .unwrap();
        let relay = client.remote::<u32, bool>("relay").timeout(HANG);
        let mut call = relay.on(&address).stream::<(), u32>(&300).unwrap();
        let items: Vec<u32> = call.items().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            items,
            (100..400).collect::<Vec<_>>(),
            "mode {progress}/{rpc}"
        );
        assert!(call.finish().unwrap(), "the inner stream had a deadline");
        client.finalize().unwrap();
        server.finalize().unwrap();
    }
}
