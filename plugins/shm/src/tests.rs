//! In-crate tests: the ring on the heap, and raw clients that speak the
//! handshake by hand to send the server what a well-behaved client never
//! would.

use std::os::fd::OwnedFd;
use std::time::Duration;

use bytes::BytesMut;
use courier_transport::{
    Address, Connection, Listener, MessageReceiver, MessageSender, Transport, TransportError,
};
use rustix::fs::{MemfdFlags, SealFlags};
use tokio::net::UnixStream;

use crate::ring::heap;
use crate::segment::{self, Layout, HELLO, SEALS};
use crate::{ShmListener, ShmTransport};

/// A hang guard for waits: no test depends on how fast anything is.
async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .unwrap_or_else(|_| panic!("hang guard: {what}"))
}

#[test]
fn ring_wraps_and_refuses_a_lying_peer() {
    let (mut p, mut c, mem) = heap::ring(8);
    let mut out = [0u8; 8];
    // Fill, read part, wrap around.
    assert_eq!(p.write(b"abcdef").unwrap(), 6);
    assert!(!p.publish());
    assert_eq!(c.available().unwrap(), 6);
    assert_eq!(c.read(&mut out[..4]), 4);
    assert_eq!(&out[..4], b"abcd");
    assert!(!c.release());
    assert_eq!(p.write(b"ghijklmn").unwrap(), 6, "8 - 2 unread bytes");
    p.publish();
    let mut all = BytesMut::new();
    assert_eq!(c.refresh().unwrap(), 8);
    assert_eq!(c.read_append(100, &mut all), 8);
    assert_eq!(&all[..], b"efghijkl");
    c.release();
    assert_eq!(p.refresh().unwrap(), 8);

    // A head beyond what the consumer released plus the capacity.
    mem.0
        .ctl
        .head
        .0
        .store(14 + 9, std::sync::atomic::Ordering::Release);
    let err = c.refresh().unwrap_err();
    assert!(err.to_string().contains("write index is 23"), "{err}");
    // A tail moved backwards.
    mem.0
        .ctl
        .tail
        .0
        .store(3, std::sync::atomic::Ordering::Release);
    let err = p.refresh().unwrap_err();
    assert!(err.to_string().contains("read index is 3"), "{err}");
}

#[test]
fn flags_are_taken_once_and_only_when_raised() {
    let (mut p, mut c, _mem) = heap::ring(16);
    assert!(c.prepare_park().unwrap(), "empty ring: must park");
    p.write(b"x").unwrap();
    assert!(p.publish(), "the consumer announced it sleeps: signal");
    p.write(b"y").unwrap();
    assert!(!p.publish(), "the flag was taken: no second signal");
    c.end_park();
    assert!(!c.prepare_park().unwrap(), "data there: do not park");
    assert!(!p.prepare_wait_room().unwrap(), "room there: do not wait");
    let mut big = [0u8; 14];
    assert_eq!(p.write(&big).unwrap(), 14);
    p.publish();
    assert!(p.prepare_wait_room().unwrap(), "full ring: wait");
    assert_eq!(c.refresh().unwrap(), 16);
    assert_eq!(c.read(&mut big), 14);
    assert!(c.release(), "the producer waits: signal");
    p.end_wait_room();
    assert!(!p.close(), "the consumer does not sleep");
    assert!(!c.closed_and_drained().unwrap(), "two bytes left");
    assert_eq!(c.read(&mut big), 2);
    assert!(c.closed_and_drained().unwrap());
    assert!(!c.mark_gone());
    assert!(p.consumer_gone());
}

/// A memfd like a client makes, with `header` written and `seals` added.
fn memfd(size: u64, header: &[u8], seals: SealFlags) -> OwnedFd {
    let fd = rustix::fs::memfd_create(
        segment::MEMFD_NAME,
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    segment::write_all_at(&fd, header, 0).unwrap();
    rustix::fs::fcntl_add_seals(&fd, seals).unwrap();
    fd
}

fn eventfds() -> Vec<OwnedFd> {
    (0..4).map(|_| segment::new_eventfd().unwrap()).collect()
}

/// Connects to `listener` by hand, sends `payload` with `fds`, and returns
/// the socket and the server's first answer byte plus what follows it.
async fn raw_handshake(addr: &Address, payload: &[u8], fds: &[&OwnedFd]) -> (UnixStream, Vec<u8>) {
    let name = crate::SocketName::parse(addr).unwrap();
    let socket = UnixStream::connect_addr(&name.socket_addr().unwrap().into())
        .await
        .unwrap();
    segment::send_with_fds(&socket, payload, &segment::borrow_all(fds))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        socket.readable().await.unwrap();
        match socket.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer[0] == segment::ACCEPTED {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        }
    }
    (socket, answer)
}

/// Runs one raw client against a listener and checks that it is refused
/// with `reason`, and that the listener then serves a real client.
async fn refused(t: &ShmTransport, payload: &[u8], fds: &[&OwnedFd], reason: &str) {
    let mut listener = t.listen(&"shm://".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().clone();
    let (raw, accepted) = tokio::join!(
        raw_handshake(&addr, payload, fds),
        guard("accept", listener.accept())
    );
    let (_socket, answer) = raw;
    let err = accepted.unwrap_err();
    assert!(
        matches!(err, TransportError::Malformed { .. }),
        "{reason}: {err}"
    );
    assert!(err.to_string().contains(reason), "{reason}: {err}");
    assert_eq!(answer.first(), Some(&segment::REFUSED), "{reason}");
    let told = String::from_utf8_lossy(&answer[1..]).into_owned();
    assert!(told.contains(reason), "{reason}: client was told '{told}'");

    // The listener keeps serving.
    let (client, server) = tokio::join!(t.connect(&addr), listener.accept());
    let (mut tx, _) = client.unwrap().split();
    let (_, mut rx) = server.unwrap().split();
    tx.send(&[b"still here"]).await.unwrap();
    assert_eq!(
        &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
        b"still here"
    );
}

fn good_header() -> Vec<u8> {
    Layout::new(1 << 16).unwrap().header().to_vec()
}

#[tokio::test]
async fn malformed_segments_are_refused_and_the_listener_keeps_serving() {
    let t = ShmTransport::new(1 << 20);
    let total = Layout::new(1 << 16).unwrap().total() as u64;
    let efds = eventfds();
    let e: Vec<&OwnedFd> = efds.iter().collect();

    let mut bad_magic = good_header();
    bad_magic[..8].copy_from_slice(b"NOTCOURI");
    let fd = memfd(total, &bad_magic, SEALS);
    refused(&t, &HELLO, &[&fd, e[0], e[1], e[2], e[3]], "bad magic").await;

    // The header is right, the file is smaller than it says.
    let fd = memfd(8192, &good_header(), SEALS);
    refused(
        &t,
        &HELLO,
        &[&fd, e[0], e[1], e[2], e[3]],
        "8192 bytes long",
    )
    .await;

    // Shorter than a header.
    let fd = memfd(16, &[], SEALS);
    refused(
        &t,
        &HELLO,
        &[&fd, e[0], e[1], e[2], e[3]],
        "shorter than its header",
    )
    .await;

    // Not sealed: the client could shrink it under the server's mapping.
    let fd = memfd(total, &good_header(), SealFlags::empty());
    refused(&t, &HELLO, &[&fd, e[0], e[1], e[2], e[3]], "not sealed").await;

    let fd = memfd(total, &good_header(), SEALS);
    refused(&t, &HELLO, &[&fd], "expected 5 descriptors").await;
    refused(&t, b"GET / HT", &[&fd, e[0], e[1], e[2], e[3]], "bad hello").await;
    // A regular file with a good header is not a sealed memfd.
    let path = std::env::temp_dir().join(format!("courier-shm-test-{}", std::process::id()));
    let file = rustix::fs::open(
        &path,
        rustix::fs::OFlags::RDWR
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    rustix::fs::ftruncate(&file, total).unwrap();
    segment::write_all_at(&file, &good_header(), 0).unwrap();
    refused(&t, &HELLO, &[&file, e[0], e[1], e[2], e[3]], "seal").await;
}

/// A raw client that completed the handshake: its segment and eventfds.
struct RawClient {
    _socket: UnixStream,
    memfd: OwnedFd,
    efds: Vec<OwnedFd>,
}

async fn raw_connected(t: &ShmTransport) -> (RawClient, crate::ShmConnection, ShmListener) {
    let mut listener = t.listen(&"shm://".parse().unwrap()).await.unwrap();
    let layout = Layout::new(1 << 16).unwrap();
    let memfd = segment::create_memfd(layout).unwrap();
    let efds = eventfds();
    let fds = [&memfd, &efds[0], &efds[1], &efds[2], &efds[3]];
    let addr = listener.local_addr().clone();
    let (raw, accepted) = tokio::join!(
        raw_handshake(&addr, &HELLO, &fds),
        guard("accept", listener.accept())
    );
    let (socket, answer) = raw;
    assert_eq!(answer, [segment::ACCEPTED]);
    (
        RawClient {
            _socket: socket,
            memfd,
            efds,
        },
        accepted.unwrap(),
        listener,
    )
}

#[tokio::test]
async fn a_corrupt_ring_index_fails_the_connection_with_a_clear_error() {
    let t = ShmTransport::new(1 << 20);
    let (raw, server, _listener) = raw_connected(&t).await;
    let (mut tx, mut rx) = server.split();
    // Ring 0's head (offset 0 of its control block) far past the ring.
    let layout = Layout::new(1 << 16).unwrap();
    segment::write_all_at(
        &raw.memfd,
        &(1u64 << 40).to_le_bytes(),
        layout.ctl_offset(0) as u64,
    )
    .unwrap();
    segment::signal(&raw.efds[0]);
    let err = guard("recv", rx.recv()).await.unwrap_err();
    assert!(matches!(err, TransportError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("write index"), "{err}");
    assert!(err.to_string().contains("shm://courier-"), "{err}");
    // Dead from now on, both ways.
    assert!(matches!(
        rx.recv().await.unwrap_err(),
        TransportError::Closed { .. }
    ));
    assert!(tx.send(&[b"x"]).await.is_err());
}

#[tokio::test]
async fn a_peer_that_vanishes_without_closing_is_an_error_not_a_hang() {
    let t = ShmTransport::new(1 << 20);
    let (raw, server, _listener) = raw_connected(&t).await;
    let (mut tx, mut rx) = server.split();
    let recv = tokio::spawn(async move { guard("recv", rx.recv()).await });
    // Vanish: socket and descriptors closed, no `closed` flag set.
    drop(raw);
    let err = recv.await.unwrap().unwrap_err();
    assert!(matches!(err, TransportError::Io { .. }), "{err}");
    assert!(err.to_string().contains("hung up"), "{err}");
    let err = tx.send(&[b"x"]).await.unwrap_err();
    assert!(err.to_string().contains("hung up"), "{err}");
}

#[tokio::test]
async fn plain_unix_clients_and_strangers_get_clear_errors() {
    let t = ShmTransport::new(1 << 20);
    // A stranger that speaks first and hangs up.
    let mut listener = t.listen(&"shm://".parse().unwrap()).await.unwrap();
    let name = crate::SocketName::parse(listener.local_addr()).unwrap();
    let stranger = async {
        let s = UnixStream::connect_addr(&name.socket_addr().unwrap().into())
            .await
            .unwrap();
        drop(s);
    };
    let (_, accepted) = tokio::join!(stranger, guard("accept", listener.accept()));
    let err = accepted.unwrap_err();
    assert!(
        err.to_string().contains("hung up before its handshake"),
        "{err}"
    );

    // A client that finds something else than a Courier server.
    let plain = std::os::unix::net::UnixListener::bind_addr(
        &crate::SocketName::Abstract(format!("courier-test-plain-{}", std::process::id()))
            .socket_addr()
            .unwrap(),
    )
    .unwrap();
    let addr: Address = format!("shm://courier-test-plain-{}", std::process::id())
        .parse()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = plain.accept().unwrap();
        drop(s);
    });
    let err = guard("connect", t.connect(&addr)).await.unwrap_err();
    server.join().unwrap();
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// A server that refuses before reading (as it does another uid) writes
/// its reason and hangs up; the client's hello then meets a broken pipe.
/// The client reports the server's reason, not the broken pipe.
#[tokio::test]
async fn a_refusal_before_the_hello_is_reported_with_its_reason() {
    let (client_end, server_end) = UnixStream::pair().unwrap();
    let mut answer = vec![segment::REFUSED];
    answer.extend_from_slice(b"the client runs as uid 65534");
    refuse_and_hang_up(server_end.into_std().unwrap(), &answer);
    let settings = crate::conn::Settings {
        max: 1 << 20,
        spin: Duration::ZERO,
    };
    let err = guard(
        "handshake",
        crate::handshake::client(
            client_end,
            "shm://refusing".parse().unwrap(),
            Layout::new(1 << 16).unwrap(),
            settings,
        ),
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("uid 65534"), "{err}");
}

/// Writes `bytes` and closes, reading nothing: a refusing server.
fn refuse_and_hang_up(mut socket: std::os::unix::net::UnixStream, bytes: &[u8]) {
    use std::io::Write;
    socket.set_nonblocking(false).unwrap();
    socket.write_all(bytes).unwrap();
}
