//! The transport contract, checked below the engine.
//!
//! Each scenario takes the protocol name, builds the transport through the
//! default registry (so a plugin installed with [`courier::install_plugin`]
//! is found) and checks one clause of the contract stated in
//! [`courier::transport::transport`]: message boundaries, order, maximum
//! size, close, a vanished peer, cancellation. A failure panics with a
//! message naming the clause.

use std::sync::Arc;

use courier::transport::{
    Address, Batch, DynListener, DynReceiver, DynSender, DynTransport, PluginOptions,
    TransportError,
};
use courier::Bytes;

use crate::{guard, pattern};

/// The maximum message size of the transports these scenarios build, unless
/// a scenario says otherwise.
pub const MAX: usize = 16 << 20;

/// Builds the transport for `proto` with maximum message size `max`.
pub fn transport(proto: &str, max: usize) -> Arc<dyn DynTransport> {
    let registry = courier::default_registry()
        .unwrap_or_else(|e| panic!("cannot read the protocol table: {e}"));
    registry
        .create(proto, &PluginOptions::new(), max)
        .unwrap_or_else(|e| panic!("cannot build a {proto} transport: {e}"))
        .1
}

/// Listens on the transport's default address.
pub async fn listen(t: &Arc<dyn DynTransport>) -> Box<dyn DynListener> {
    let proto = t.protocol().to_owned();
    let addr = Address::new(proto.clone(), "")
        .unwrap_or_else(|e| panic!("'{proto}' is not a valid protocol name: {e}"));
    guard("listen", t.listen_dyn(&addr))
        .await
        .unwrap_or_else(|e| panic!("{proto}: listening on the default address failed: {e}"))
}

/// One side of a connection, split.
pub type Side = (Box<dyn DynSender>, Box<dyn DynReceiver>);

/// Connects `client` to `listener` and accepts: (client side, server side).
pub async fn connect(
    client: &Arc<dyn DynTransport>,
    listener: &mut Box<dyn DynListener>,
) -> (Side, Side) {
    let addr = listener.local_addr().clone();
    let (c, s) = guard("connect and accept", async {
        tokio::join!(client.connect_dyn(&addr), listener.accept_dyn())
    })
    .await;
    let c = c.unwrap_or_else(|e| panic!("connecting to {addr} failed: {e}"));
    let s = s.unwrap_or_else(|e| panic!("accepting at {addr} failed: {e}"));
    (c.split_dyn(), s.split_dyn())
}

/// A connected pair over one transport: (client side, server side, listener).
pub async fn pair(proto: &str) -> (Side, Side, Box<dyn DynListener>) {
    let t = transport(proto, MAX);
    let mut listener = listen(&t).await;
    let (c, s) = connect(&t, &mut listener).await;
    (c, s, listener)
}

async fn send(tx: &mut Box<dyn DynSender>, parts: &[&[u8]], what: &str) {
    guard(what, tx.send_dyn(parts))
        .await
        .unwrap_or_else(|e| panic!("{what}: send failed: {e}"));
}

async fn recv(rx: &mut Box<dyn DynReceiver>, what: &str) -> Bytes {
    match guard(what, rx.recv_dyn()).await {
        Ok(Some(m)) => m,
        Ok(None) => panic!("{what}: the connection ended instead"),
        Err(e) => panic!("{what}: recv failed: {e}"),
    }
}

/// A message that names its index, of `len` bytes (at least 8).
fn numbered(i: u64, len: usize) -> Vec<u8> {
    let mut m = pattern(len.max(8), i as u8);
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

/// Listening gives an address under the transport's protocol, which a peer
/// connects to; the accepted connection's peer address is under the same
/// protocol name.
pub async fn listen_and_connect(proto: &str) {
    let t = transport(proto, MAX);
    let mut listener = listen(&t).await;
    let local = listener.local_addr().clone();
    assert_eq!(
        local.protocol(),
        t.protocol(),
        "local_addr {local}: wrong protocol name"
    );
    let parsed: Address = local
        .to_string()
        .parse()
        .unwrap_or_else(|e| panic!("local_addr {local} does not parse back as an address: {e}"));
    assert_eq!(
        parsed, local,
        "local_addr does not round-trip through a string"
    );
    let addr = local.clone();
    let (c, s) = guard("connect and accept", async {
        tokio::join!(t.connect_dyn(&addr), listener.accept_dyn())
    })
    .await;
    let (c, s) = (c.unwrap(), s.unwrap());
    assert_eq!(
        c.peer_addr().protocol(),
        t.protocol(),
        "client peer_addr {}",
        c.peer_addr()
    );
    assert_eq!(
        s.peer_addr().protocol(),
        t.protocol(),
        "server peer_addr {}",
        s.peer_addr()
    );
}

/// One send of several parts is one message; empty parts and empty messages
/// are kept.
pub async fn message_boundaries(proto: &str) {
    let ((mut tx, _crx), (_stx, mut rx), _l) = pair(proto).await;
    send(&mut tx, &[b"ab", b"", b"cd"], "three parts").await;
    send(&mut tx, &[], "no parts").await;
    send(&mut tx, &[b""], "one empty part").await;
    send(&mut tx, &[b"x"], "one byte").await;
    assert_eq!(&recv(&mut rx, "three parts").await[..], b"abcd");
    assert!(
        recv(&mut rx, "no parts").await.is_empty(),
        "an empty message is a message"
    );
    assert!(recv(&mut rx, "one empty part").await.is_empty());
    assert_eq!(&recv(&mut rx, "one byte").await[..], b"x");
}

/// Messages of many sizes arrive whole, intact and in order, while the
/// sender runs ahead of the receiver (backpressure, not loss).
pub async fn order_and_integrity(proto: &str) {
    const N: u64 = 400;
    let ((mut tx, _crx), (_stx, mut rx), _l) = pair(proto).await;
    let size = |i: u64| ((i * 7919) % 70_000) as usize + 8;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            send(&mut tx, &[&numbered(i, size(i))], "numbered message").await;
        }
        tx
    });
    for i in 0..N {
        let m = recv(&mut rx, "numbered message").await;
        assert_eq!(m.len(), size(i), "message {i} has the wrong length");
        assert!(
            m[..] == numbered(i, size(i))[..],
            "message {i} arrived altered or out of order"
        );
    }
    guard("sender", sender).await.unwrap();
}

/// A batch arrives as its messages, in order, between the messages sent
/// before and after it — also a batch larger than the medium buffers,
/// while the receiver reads. A batch holding one message over the maximum
/// writes nothing, and the connection stays usable.
pub async fn batches(proto: &str) {
    const N: u64 = 600;
    let ((tx, _crx), (_stx, mut rx), _l) = pair(proto).await;
    let size = |i: u64| ((i * 7919) % 6_000) as usize + 8;
    let sender = tokio::spawn(async move {
        let mut tx = tx;
        send(&mut tx, &[b"before"], "a message before the batches").await;
        let mut batch = Batch::new();
        batch.push(&[b"small", b" batch"]);
        batch.push(&[]);
        let sent = guard("a small batch", tx.send_batch_dyn(batch)).await;
        sent.result
            .unwrap_or_else(|e| panic!("a small batch: send failed: {e}"));
        let (tx, mut batch) = (sent.sender, sent.batch);
        batch.clear();
        for i in 0..N {
            batch.push(&[&numbered(i, size(i))]);
        }
        let sent = guard("a batch larger than the medium", tx.send_batch_dyn(batch)).await;
        sent.result
            .unwrap_or_else(|e| panic!("a large batch: send failed: {e}"));
        let (tx, mut batch) = (sent.sender, sent.batch);
        batch.clear();
        batch.push(&[b"fits"]);
        batch.push(&[&vec![0u8; MAX + 1]]);
        let sent = guard("an oversized batch", tx.send_batch_dyn(batch)).await;
        assert!(
            matches!(sent.result, Err(TransportError::MessageTooLarge { .. })),
            "a batch with a message over the maximum: {:?}",
            sent.result
        );
        let mut tx = sent.sender;
        send(&mut tx, &[b"after"], "a message after the batches").await;
        tx
    });
    assert_eq!(&recv(&mut rx, "the message before").await[..], b"before");
    assert_eq!(&recv(&mut rx, "a small batch").await[..], b"small batch");
    assert!(recv(&mut rx, "an empty message in a batch")
        .await
        .is_empty());
    for i in 0..N {
        let m = recv(&mut rx, "a message of the large batch").await;
        assert!(
            m[..] == numbered(i, size(i))[..],
            "message {i} of the batch arrived altered or out of order"
        );
    }
    assert_eq!(
        &recv(&mut rx, "the message after").await[..],
        b"after",
        "the oversized batch wrote something"
    );
    guard("sender", sender).await.unwrap();
}

/// Both sides send at once, each far more than the medium buffers: nothing
/// deadlocks, everything arrives.
pub async fn both_directions_at_once(proto: &str) {
    const N: u64 = 48;
    const LEN: usize = 256 << 10;
    let ((ctx, crx), (stx, srx), _l) = pair(proto).await;
    let flow = |mut tx: Box<dyn DynSender>, mut rx: Box<dyn DynReceiver>| async move {
        let sending = async {
            for i in 0..N {
                send(&mut tx, &[&numbered(i, LEN)], "bulk").await;
            }
        };
        let receiving = async {
            for i in 0..N {
                let m = recv(&mut rx, "bulk").await;
                assert!(m[..] == numbered(i, LEN)[..], "message {i} altered");
            }
        };
        tokio::join!(sending, receiving);
        (tx, rx)
    };
    let (a, b) = tokio::join!(tokio::spawn(flow(ctx, crx)), tokio::spawn(flow(stx, srx)));
    a.unwrap();
    b.unwrap();
}

/// A message of exactly the maximum size goes through; one byte more is
/// refused by `send` with `MessageTooLarge` before anything is written, and
/// the connection stays usable.
pub async fn max_size_is_enforced_on_send(proto: &str) {
    const SMALL: usize = 64 << 10;
    let t = transport(proto, SMALL);
    let mut listener = listen(&t).await;
    let ((mut tx, _crx), (_stx, mut rx)) = connect(&t, &mut listener).await;
    let full = pattern(SMALL, 3);
    send(&mut tx, &[&full], "a maximum-size message").await;
    let over = pattern(SMALL + 1, 4);
    match guard(
        "an oversized send",
        tx.send_dyn(&[&over[..SMALL], &over[SMALL..]]),
    )
    .await
    {
        Err(TransportError::MessageTooLarge { size, max }) => {
            assert_eq!((size, max), ((SMALL + 1) as u64, SMALL));
        }
        other => panic!("an oversized send must fail with MessageTooLarge, got {other:?}"),
    }
    send(&mut tx, &[b"after"], "a message after the refused one").await;
    assert!(recv(&mut rx, "maximum-size message").await[..] == full[..]);
    assert_eq!(
        &recv(&mut rx, "message after the refused one").await[..],
        b"after"
    );
}

/// A peer built with a larger maximum that sends a message over ours makes
/// our `recv` fail (or its own `send` refuse it): we never hand up a
/// message over our maximum.
pub async fn oversized_from_peer_is_refused(proto: &str) {
    const SMALL: usize = 64 << 10;
    let small = transport(proto, SMALL);
    let big = transport(proto, MAX);
    let mut listener = listen(&small).await;
    let ((mut tx, _crx), (_stx, mut rx)) = connect(&big, &mut listener).await;
    let message = pattern(2 * SMALL, 5);
    if guard("an oversized send", tx.send_dyn(&[&message]))
        .await
        .is_err()
    {
        return; // refused at the source: fine
    }
    if let Ok(Some(m)) = guard("receiving an oversized message", rx.recv_dyn()).await {
        panic!("recv handed up {} bytes over a maximum of {SMALL}", m.len());
    }
}

/// `close` delivers what was sent, then the peer's `recv` returns `None`.
pub async fn close_delivers_then_ends(proto: &str) {
    let ((mut tx, _crx), (_stx, mut rx), _l) = pair(proto).await;
    for i in 0..10 {
        send(&mut tx, &[&numbered(i, 1000)], "before close").await;
    }
    guard("close", tx.close_dyn())
        .await
        .unwrap_or_else(|e| panic!("close failed: {e}"));
    for i in 0..10 {
        assert!(recv(&mut rx, "sent before close").await[..] == numbered(i, 1000)[..]);
    }
    match guard("recv after the peer closed", rx.recv_dyn()).await {
        Ok(None) => {}
        other => panic!("after an orderly close, recv must return None, got {other:?}"),
    }
}

/// A peer that drops its connection without closing ends our `recv` (with
/// `None` or an error): it never hangs.
pub async fn dropped_peer_ends_recv(proto: &str) {
    let ((tx, crx), (_stx, mut rx), _l) = pair(proto).await;
    drop((tx, crx));
    if let Ok(Some(m)) = guard("recv after the peer vanished", rx.recv_dyn()).await {
        panic!("a vanished peer delivered a message of {} bytes", m.len());
    }
}

/// A dropped listener refuses connections: `connect` fails, it does not
/// hang.
pub async fn dropped_listener_refuses(proto: &str) {
    let t = transport(proto, MAX);
    let listener = listen(&t).await;
    let addr = listener.local_addr().clone();
    drop(listener);
    if let Ok(c) = guard("connect to a dropped listener", t.connect_dyn(&addr)).await {
        // Some media accept at the kernel level before anyone listens (a
        // backlog): then the connection must end at once.
        let (_tx, mut rx) = c.split_dyn();
        if let Ok(Some(_)) =
            guard("recv on a connection to a dropped listener", rx.recv_dyn()).await
        {
            panic!("a dropped listener at {addr} sent a message");
        }
    }
}

/// Many connections to one listener at once, each with its own traffic.
pub async fn many_connections(proto: &str) {
    const N: u64 = 16;
    let t = transport(proto, MAX);
    let mut listener = listen(&t).await;
    let addr = listener.local_addr().clone();
    let server = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..N {
            let c = guard("accept", listener.accept_dyn()).await.unwrap();
            tasks.spawn(async move {
                let (mut tx, mut rx) = c.split_dyn();
                while let Ok(Some(m)) = rx.recv_dyn().await {
                    if tx.send_dyn(&[&m]).await.is_err() {
                        break;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..N {
        let (t, addr) = (t.clone(), addr.clone());
        clients.spawn(async move {
            let c = guard("connect", t.connect_dyn(&addr)).await.unwrap();
            let (mut tx, mut rx) = c.split_dyn();
            for j in 0..20 {
                let m = numbered(i * 1000 + j, 100 + j as usize);
                send(&mut tx, &[&m], "echo request").await;
                assert!(
                    recv(&mut rx, "echo").await[..] == m[..],
                    "connection {i} got another's data"
                );
            }
            guard("close", tx.close_dyn()).await.unwrap();
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
    guard("server", server).await.unwrap();
}

/// Dropping a `recv` future part way loses nothing: the receiver is raced
/// against an always-ready future, so most of its polls are abandoned.
pub async fn recv_is_cancel_safe(proto: &str) {
    const N: u64 = 200;
    const LEN: usize = 16 << 10;
    let ((mut tx, _crx), (_stx, mut rx), _l) = pair(proto).await;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            send(&mut tx, &[&numbered(i, LEN)], "message").await;
        }
        tx
    });
    let mut got = 0;
    guard("receiving while abandoning recv futures", async {
        while got < N {
            tokio::select! {
                biased;
                m = rx.recv_dyn() => {
                    let m = m.unwrap_or_else(|e| panic!("recv failed: {e}"))
                        .unwrap_or_else(|| panic!("the connection ended after {got} messages"));
                    assert!(m[..] == numbered(got, LEN)[..], "message {got} altered by a cancelled recv");
                    got += 1;
                }
                () = std::future::ready(()) => {
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
    guard("sender", sender).await.unwrap();
}

/// Large messages (8 MiB) both ways, intact.
pub async fn large_messages(proto: &str) {
    const LEN: usize = 8 << 20;
    let ((mut ctx, mut crx), (mut stx, mut srx), _l) = pair(proto).await;
    let m = pattern(LEN, 9);
    let whole: [&[u8]; 1] = [&m];
    let (_, got) = tokio::join!(
        send(&mut ctx, &whole, "8 MiB request"),
        recv(&mut srx, "8 MiB request")
    );
    assert!(got[..] == m[..], "the 8 MiB message arrived altered");
    let halves: [&[u8]; 2] = [&m[..LEN / 2], &m[LEN / 2..]];
    let (_, got) = tokio::join!(
        send(&mut stx, &halves, "8 MiB reply"),
        recv(&mut crx, "8 MiB reply")
    );
    assert!(got[..] == m[..], "the 8 MiB reply arrived altered");
}
