//! The transport contract on shared memory, client and server in one
//! process (each with its own mapping of the segment, as two processes
//! would have). Nothing here synchronises by sleeping; `guard` only turns a
//! hang into a failure.

#![cfg(target_os = "linux")] // the shm transport is Linux-only
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use courier_shm::{ShmConnection, ShmListener, ShmPlugin, ShmTransport};
use courier_transport::{
    Address, Connection, Listener, MessageReceiver, MessageSender, PluginOptions, Registry,
    Transport, TransportError,
};

async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what} did not finish"))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(u64::from(seed)) % 251) as u8)
        .collect()
}

async fn listen(t: &ShmTransport) -> ShmListener {
    t.listen(&"shm://".parse().unwrap()).await.unwrap()
}

/// A connected (client, server) pair.
async fn pair(t: &ShmTransport, listener: &mut ShmListener) -> (ShmConnection, ShmConnection) {
    let addr = listener.local_addr().clone();
    let (c, s) = guard("connect", async {
        tokio::join!(t.connect(&addr), listener.accept())
    })
    .await;
    (c.unwrap(), s.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_empty_multipart_and_16_mib_messages() {
    let t = ShmTransport::new(32 << 20);
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _crx) = c.split();
    let (_stx, mut rx) = s.split();
    let big = pattern(16 << 20, 7);
    let odd = pattern((1 << 20) + 3, 9);
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        tx.send(&[b"hello, ", b"world"]).await.unwrap();
        tx.send(&[]).await.unwrap();
        tx.send(&[b"", b""]).await.unwrap();
        tx.send(&[&sent[..5], &sent[5..]]).await.unwrap();
        tx.send(&[&odd]).await.unwrap();
        tx.close().await.unwrap();
        odd
    });
    assert_eq!(
        &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
        b"hello, world"
    );
    assert!(guard("recv", rx.recv()).await.unwrap().unwrap().is_empty());
    assert!(guard("recv", rx.recv()).await.unwrap().unwrap().is_empty());
    let got = guard("recv 16 MiB", rx.recv()).await.unwrap().unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got[..] == big[..], "16 MiB message corrupted");
    let got_odd = guard("recv", rx.recv()).await.unwrap().unwrap();
    let odd = writer.await.unwrap();
    assert!(got_odd[..] == odd[..]);
    assert!(guard("recv end", rx.recv()).await.unwrap().is_none());
    // And it stays ended.
    assert!(rx.recv().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_back_to_back_in_order() {
    // A small ring, so the sender waits for room many times.
    let t = ShmTransport::new(1 << 20).with_ring_size(4096).unwrap();
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _crx) = c.split();
    let (_stx, mut rx) = s.split();
    let writer = tokio::spawn(async move {
        for i in 0..1000u32 {
            let body = pattern((i as usize * 37) % 3000, i as u8);
            tx.send(&[&i.to_le_bytes(), &body]).await.unwrap();
        }
    });
    for i in 0..1000u32 {
        let m = guard("recv", rx.recv()).await.unwrap().unwrap();
        assert_eq!(m[..4], i.to_le_bytes(), "message {i} out of order");
        assert!(m[4..] == pattern((i as usize * 37) % 3000, i as u8)[..]);
    }
    writer.await.unwrap();
    // The writer's sender was dropped: an orderly close.
    assert!(guard("recv end", rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn both_directions_at_once_on_one_thread() {
    // Client and server on one current-thread runtime: spinning must yield.
    let t = ShmTransport::new(1 << 20).with_ring_size(8192).unwrap();
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut ctx, mut crx) = c.split();
    let (mut stx, mut srx) = s.split();
    let echo = tokio::spawn(async move {
        while let Some(m) = srx.recv().await.unwrap() {
            stx.send(&[&m]).await.unwrap();
        }
    });
    let reader = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(m) = crx.recv().await.unwrap() {
            assert!(m[..] == pattern(20_000, n as u8)[..]);
            n += 1;
        }
        n
    });
    for i in 0..200u32 {
        ctx.send(&[&pattern(20_000, i as u8)]).await.unwrap();
    }
    ctx.close().await.unwrap();
    guard("echo", echo).await.unwrap();
    assert_eq!(guard("reader", reader).await.unwrap(), 200);
}

#[tokio::test]
async fn oversized_send_is_refused_without_breaking_the_connection() {
    let t = ShmTransport::new(1000);
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _) = c.split();
    let (_, mut rx) = s.split();
    let err = tx.send(&[&[0u8; 600], &[0u8; 401]]).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::MessageTooLarge {
                size: 1001,
                max: 1000
            }
        ),
        "{err}"
    );
    assert!(!err.is_fatal_to_connection());
    tx.send(&[&[1u8; 1000]]).await.unwrap();
    tx.send(&[b"after"]).await.unwrap();
    assert_eq!(guard("recv", rx.recv()).await.unwrap().unwrap().len(), 1000);
    assert_eq!(
        &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
        b"after"
    );
}

#[tokio::test]
async fn an_announced_oversized_message_fails_recv_and_the_connection() {
    let big = ShmTransport::new(1 << 20);
    let small = ShmTransport::new(1024);
    let mut l = listen(&small).await;
    let addr = l.local_addr().clone();
    let (c, s) = tokio::join!(big.connect(&addr), l.accept());
    let (mut tx, _) = c.unwrap().split();
    let (_, mut rx) = s.unwrap().split();
    tx.send(&[&[0u8; 1025]]).await.unwrap();
    let err = guard("recv", rx.recv()).await.unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::MessageTooLarge {
                size: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(matches!(
        rx.recv().await.unwrap_err(),
        TransportError::Closed { .. }
    ));
    // The receiver said it is gone: the peer's sends fail.
    let err = tx.send(&[b"x"]).await.unwrap_err();
    assert!(err.to_string().contains("stopped receiving"), "{err}");
}

#[tokio::test]
async fn close_delivers_everything_then_none() {
    let t = ShmTransport::new(1 << 20);
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, mut crx) = c.split();
    let (mut stx, mut rx) = s.split();
    for i in 0..10u8 {
        tx.send(&[&[i; 100]]).await.unwrap();
    }
    tx.close().await.unwrap();
    assert!(matches!(
        tx.send(&[b"late"]).await.unwrap_err(),
        TransportError::Closed { .. }
    ));
    for i in 0..10u8 {
        assert_eq!(
            guard("recv", rx.recv()).await.unwrap().unwrap()[..],
            [i; 100]
        );
    }
    assert!(guard("recv", rx.recv()).await.unwrap().is_none());
    // Half-close: the other direction still works.
    stx.send(&[b"reply"]).await.unwrap();
    assert_eq!(
        &guard("recv", crx.recv()).await.unwrap().unwrap()[..],
        b"reply"
    );
}

#[tokio::test]
async fn recv_is_cancel_safe_mid_message() {
    let t = ShmTransport::new(8 << 20);
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _) = c.split();
    let (_, mut rx) = s.split();
    let message = pattern(4 << 20, 3);
    let sent = message.clone();
    // Same thread: the writer only runs while the reader yields.
    let writer = tokio::spawn(async move { tx.send(&[&sent]).await.unwrap() });
    let mut cancelled = 0u32;
    let got = loop {
        // Poll one `recv` future once, then drop it.
        let polled = {
            let recv = rx.recv();
            tokio::pin!(recv);
            tokio::select! {
                biased;
                r = &mut recv => Some(r),
                () = std::future::ready(()) => None,
            }
        };
        match polled {
            Some(r) => break r.unwrap().unwrap(),
            None => {
                cancelled += 1;
                tokio::task::yield_now().await;
            }
        }
    };
    // 4 MiB cannot pass a 1 MiB ring in one poll.
    assert!(cancelled > 0);
    assert!(got[..] == message[..], "message damaged by cancelled recvs");
    guard("writer", writer).await.unwrap();
}

#[tokio::test]
async fn a_cancelled_send_breaks_the_sender_and_the_peer_sees_a_truncated_message() {
    let t = ShmTransport::new(8 << 20).with_ring_size(4096).unwrap();
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _) = c.split();
    let (_, mut rx) = s.split();
    {
        // Nobody reads: the send fills the ring and waits for room.
        let send = tx.send(&[&[5u8; 100_000]]);
        tokio::pin!(send);
        tokio::select! {
            biased;
            r = &mut send => panic!("a 100 kB send through a 4 kB ring completed: {r:?}"),
            () = std::future::ready(()) => {}
        }
    }
    assert!(matches!(
        tx.send(&[b"x"]).await.unwrap_err(),
        TransportError::Closed { .. }
    ));
    drop(tx);
    let err = match guard("recv", rx.recv()).await {
        Ok(Some(m)) => panic!("got a message of {} bytes", m.len()),
        Ok(None) => panic!("a truncated message ended cleanly"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("of 100000 bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_server_have_their_own_segments() {
    let t = ShmTransport::new(1 << 20);
    let mut l = listen(&t).await;
    let (c1, s1) = pair(&t, &mut l).await;
    let (c2, s2) = pair(&t, &mut l).await;
    assert_eq!(c1.segment_id(), s1.segment_id());
    assert_eq!(c2.segment_id(), s2.segment_id());
    assert_ne!(c1.segment_id(), c2.segment_id());
    assert_ne!(s1.peer_addr(), s2.peer_addr());
    let (mut tx1, mut rx1) = c1.split();
    let (mut tx2, mut rx2) = c2.split();
    for (conn, tag) in [(s1, 1u8), (s2, 2u8)] {
        tokio::spawn(async move {
            let (mut tx, mut rx) = conn.split();
            while let Some(m) = rx.recv().await.unwrap() {
                tx.send(&[&[tag], &m]).await.unwrap();
            }
        });
    }
    for i in 0..50u8 {
        tx1.send(&[&[i]]).await.unwrap();
        tx2.send(&[&[i]]).await.unwrap();
        assert_eq!(
            guard("recv 1", rx1.recv()).await.unwrap().unwrap()[..],
            [1, i]
        );
        assert_eq!(
            guard("recv 2", rx2.recv()).await.unwrap().unwrap()[..],
            [2, i]
        );
    }
    // One client leaving does not disturb the other.
    drop((tx1, rx1));
    tx2.send(&[b"still"]).await.unwrap();
    assert_eq!(
        &guard("recv", rx2.recv()).await.unwrap().unwrap()[..],
        b"\x02still"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_peer_ends_recv_and_fails_send() {
    let t = ShmTransport::new(1 << 20);
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, mut rx) = c.split();
    let recv = tokio::spawn(async move {
        let r = guard("recv", rx.recv()).await;
        (r, rx)
    });
    // The server drops the whole connection without calling close.
    drop(s);
    let (r, _rx) = recv.await.unwrap();
    assert!(matches!(r, Ok(None) | Err(_)), "{r:?}");
    let err = guard("send", tx.send(&[b"anyone?"])).await.unwrap_err();
    assert!(err.is_fatal_to_connection(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_waiting_for_room_fails_when_the_peer_goes() {
    let t = ShmTransport::new(8 << 20).with_ring_size(4096).unwrap();
    let mut l = listen(&t).await;
    let (c, s) = pair(&t, &mut l).await;
    let (mut tx, _crx) = c.split();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let sender = tokio::spawn(async move {
        // Fills the 4 kB ring, then waits for room nobody will make.
        tx.send(&[b"first"]).await.unwrap();
        let _ = started_tx.send(());
        guard("send", tx.send(&[&[0u8; 1 << 20]])).await
    });
    started.await.unwrap();
    drop(s);
    let err = sender.await.unwrap().unwrap_err();
    assert!(err.is_fatal_to_connection(), "{err}");
}

#[tokio::test]
async fn addresses_names_and_paths() {
    let t = ShmTransport::new(1024);
    let l = listen(&t).await;
    let name = l.local_addr().rest().to_owned();
    assert_eq!(l.local_addr().protocol(), "shm");
    assert!(
        name.starts_with(&format!("courier-{}-", std::process::id())),
        "{name}"
    );
    // Two default listeners get two names.
    let l2 = listen(&t).await;
    assert_ne!(l.local_addr(), l2.local_addr());
    // A name in use is refused.
    let err = t.listen(l.local_addr()).await.unwrap_err();
    assert!(matches!(err, TransportError::Listen { .. }), "{err}");

    // A chosen abstract name.
    let chosen: Address = format!("shm://courier-test-{}-chosen", std::process::id())
        .parse()
        .unwrap();
    let mut l3 = t.listen(&chosen).await.unwrap();
    assert_eq!(l3.local_addr(), &chosen);
    let (c, s) = tokio::join!(t.connect(&chosen), l3.accept());
    c.unwrap();
    s.unwrap();

    // A path name: owner-only socket file, removed with the listener.
    let dir = std::env::temp_dir();
    let path = dir.join(format!("courier-shm-test-{}.sock", std::process::id()));
    let addr: Address = format!("shm://{}", path.display()).parse().unwrap();
    let mut l4 = t.listen(&addr).await.unwrap();
    assert_eq!(l4.local_addr(), &addr);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (c, s) = tokio::join!(t.connect(&addr), l4.accept());
    let (mut tx, _) = c.unwrap().split();
    let (_, mut rx) = s.unwrap().split();
    tx.send(&[b"via a path"]).await.unwrap();
    assert_eq!(
        &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
        b"via a path"
    );
    drop(l4);
    assert!(!path.exists());

    // Errors name the address.
    let err = t.connect(&"shm://".parse().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, TransportError::InvalidAddress { .. }),
        "{err}"
    );
    let nobody: Address = format!("shm://courier-test-{}-nobody", std::process::id())
        .parse()
        .unwrap();
    let err = t.connect(&nobody).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to {nobody}")),
        "{err}"
    );
    let long: Address = format!("shm://{}", "x".repeat(200)).parse().unwrap();
    let err = t.listen(&long).await.unwrap_err();
    assert!(err.to_string().contains("at most 107"), "{err}");
}

#[tokio::test]
async fn the_plugin_checks_its_options_and_serves_the_aliases() {
    let registry = Registry::new().with(ShmPlugin);
    let opts = |json: &str| -> PluginOptions { serde_json::from_str(json).unwrap() };
    let (entry, transport) = registry.create("na+sm", &opts("{}"), 4096).unwrap();
    assert_eq!(entry.name, "shm");
    assert_eq!(transport.max_message_size(), 4096);
    let listener = transport
        .listen_dyn(&"na+sm://".parse().unwrap())
        .await
        .unwrap();
    assert!(listener
        .local_addr()
        .to_string()
        .starts_with("shm://courier-"));

    let (_, t) = registry
        .create("sm", &opts(r#"{"ring_size": 65536, "spin_us": 0}"#), 4096)
        .unwrap();
    assert_eq!(t.protocol(), "shm");
    for (json, needle) in [
        (r#"{"ring_sise": 65536}"#, "unknown field `ring_sise`"),
        (r#"{"ring_size": 1000}"#, "power of two"),
        (
            r#"{"ring_size": "1MiB"}"#,
            "option 'ring_size': invalid type",
        ),
        (r#"{"spin_us": -1}"#, "option 'spin_us'"),
        (r#"{"spin_us": 5000000}"#, "at most 1000000"),
    ] {
        let err = registry.create("shm", &opts(json), 4096).unwrap_err();
        assert!(
            matches!(err, TransportError::InvalidOptions { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(needle), "{json}: {err}");
    }
}

#[tokio::test]
async fn a_failed_receiver_wakes_its_own_sender_waiting_for_room() {
    // No spin: a send that finds the ring full parks at once.
    let small = ShmTransport::new(1024)
        .with_ring_size(4096)
        .unwrap()
        .with_spin(Duration::ZERO);
    let big = ShmTransport::new(1 << 20);
    let mut l = listen(&big).await;
    let addr = l.local_addr().clone();
    let (c, s) = tokio::join!(small.connect(&addr), l.accept());
    let (mut ctx, mut crx) = c.unwrap().split();
    let (mut stx, _srx) = s.unwrap().split();
    // Nobody reads what the client sends: its fifth message does not fit.
    let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn(async move {
        for i in 0..100 {
            ctx.send(&[&[0u8; 1000]]).await?;
            let _ = sent_tx.send(i);
        }
        Ok::<_, TransportError>(())
    });
    // One thread: once the fourth send is reported, the sender task has run
    // into the fifth until it parked.
    while sent.recv().await != Some(3) {}
    // The server announces more than the client accepts: its receiver fails.
    stx.send(&[&[0u8; 2000]]).await.unwrap();
    let err = guard("recv", crx.recv()).await.unwrap_err();
    assert!(
        matches!(err, TransportError::MessageTooLarge { .. }),
        "{err}"
    );
    let err = guard("parked send", sender).await.unwrap().unwrap_err();
    assert!(err.is_fatal_to_connection(), "{err}");
}
