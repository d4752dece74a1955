//! Garbage on the socket, on every stream protocol: a raw connection that
//! writes bytes that are not a valid Courier stream is closed by the server
//! (the raw read ends: end of stream or a reset), and the server keeps
//! answering normal clients. A raw connection that writes *valid* bytes is
//! answered, with the bytes `docs/wire-format.md` pins — so the raw
//! connections themselves are sound. And the other way round: a "server"
//! that answers a client engine with garbage loses the connection, not the
//! client's call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::frame::{
    rpc_id, Extensions, Header, Kind, Status, EXT_TRACEPARENT, FLAG_EXTENSIONS, HEADER_LEN,
};
use courier::transport::framing::PREAMBLE;
use courier::{Error, TraceContext};
use courier_conformance::{
    self as cc, assert_hello, call_hello, garbage, guard, length_prefixed, preamble_and_hello,
    raw_connect, read_message, register_hello, wait_for_close, Closed, RawListener, RawSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts a server with hello, connects a raw socket, writes `bytes`,
/// optionally half-closes, and checks that the server closes the raw
/// connection and still answers a normal client.
async fn server_drops(proto: &str, bytes: &[u8], hang_up_after: bool) -> Closed {
    let server = cc::server(proto).await;
    register_hello(&server);
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    // The server is up and serving before the garbage arrives.
    assert_hello(&client, &address).await;

    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    // The server may close before reading everything; a write error then is fine.
    let _ = raw.write_all(bytes).await;
    if hang_up_after {
        let _ = raw.shutdown().await;
    }
    let closed = wait_for_close(&mut raw, "the server closing a garbage connection").await;

    assert_eq!(
        call_hello(&client, &address).await.unwrap(),
        "Good bye Matthieu",
        "the server stopped serving after garbage"
    );
    let other = cc::client(proto).await;
    let fresh = cc::lookup(&other, &server).await;
    assert_hello(&other, &fresh).await;
    closed
}

/// Bytes that do not start with the preamble (a port scanner, an HTTP client).
async fn random_bytes(proto: &str) {
    server_drops(proto, &garbage(4096, 0x5eed), false).await;
    server_drops(proto, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", false).await;
}

/// The right preamble, then a length prefix of 0xFFFF_FFFF (4 GiB): refused
/// from the prefix alone.
async fn huge_length_prefix(proto: &str) {
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let closed = server_drops(proto, &bytes, false).await;
    assert!(
        matches!(closed, Closed::Eof(0) | Closed::Error(_, 0)),
        "the server answered a 4 GiB announcement: {closed:?}"
    );
}

/// The preamble, a valid length, and a frame header with version 2.
async fn bad_frame_version(proto: &str) {
    let mut header = Header::new(Kind::Hello).encode();
    header[0] = 2;
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&header, b""));
    server_drops(proto, &bytes, false).await;
}

/// The preamble, a length announcing a 24-byte frame, 10 of its bytes, then
/// hang up (half-close): the server closes its side too.
async fn half_frame_then_hang_up(proto: &str) {
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    bytes.extend_from_slice(&Header::new(Kind::Hello).encode()[..10]);
    server_drops(proto, &bytes, true).await;
}

/// A valid request that is not preceded by a Hello.
async fn request_without_hello(proto: &str) {
    let mut header = Header::new(Kind::Request);
    header.rpc = rpc_id("hello");
    header.seq = 1;
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&header.encode(), &hello_args()));
    server_drops(proto, &bytes, false).await;
}

/// A second Hello on a connection.
async fn second_hello(proto: &str) {
    let mut bytes = preamble_and_hello();
    bytes.extend_from_slice(&length_prefixed(&Header::new(Kind::Hello).encode(), b""));
    server_drops(proto, &bytes, false).await;
}

/// postcard's encoding of `("Matthieu", "Dorier")`.
fn hello_args() -> Vec<u8> {
    let mut args = vec![8];
    args.extend_from_slice(b"Matthieu");
    args.push(6);
    args.extend_from_slice(b"Dorier");
    args
}

/// Control: hand-written valid bytes (preamble, Hello, a hello request at
/// sequence 7) are answered with the pinned response bytes; garbage after
/// that on the same connection gets it closed.
async fn valid_bytes_are_answered(proto: &str) {
    let server = cc::server(proto).await;
    register_hello(&server);
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut request = Header::new(Kind::Request);
    request.rpc = rpc_id("hello");
    request.seq = 7;
    let mut bytes = preamble_and_hello();
    bytes.extend_from_slice(&length_prefixed(&request.encode(), &hello_args()));
    raw.write_all(&bytes).await.unwrap();

    let mut preamble = [0u8; 4];
    guard("the preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    assert_eq!(preamble, PREAMBLE);
    let response = read_message(&mut raw).await;
    let header = Header::decode(&response).unwrap();
    assert_eq!(header.kind, Kind::Response);
    assert_eq!(header.seq, 7);
    assert_eq!(header.rpc, rpc_id("hello"));
    let mut expected = vec![17];
    expected.extend_from_slice(b"Good bye Matthieu");
    assert_eq!(&response[HEADER_LEN..], &expected[..]);
    assert_eq!(response.len(), 42);

    let mut bad = Header::new(Kind::Ping).encode();
    bad[7] = 1; // reserved field not zero
    raw.write_all(&length_prefixed(&bad, b"")).await.unwrap();
    wait_for_close(&mut raw, "the server closing after a bad frame").await;
}

/// A raw "server" and a client engine that called `double` on it: the
/// raw connection, the call in flight, and its request's header (after the
/// client's preamble and Hello).
struct RawServer {
    client: courier::Engine,
    address: courier::Address,
    raw: Box<dyn RawSocket>,
    call: tokio::task::JoinHandle<courier::Result<u32>>,
    request: Header,
}

async fn raw_server_called(proto: &str, n: u32) -> RawServer {
    let (listener, peer) = RawListener::bind(proto).await;
    let client = cc::client(proto).await;
    let (found, mut raw) = tokio::join!(client.lookup(&peer), listener.accept());
    let address = found.unwrap();
    let call = {
        let c = client.remote::<u32, u32>("double").on(&address);
        tokio::spawn(async move { c.call(&n).await })
    };
    let request = read_client_request(&mut raw).await;
    RawServer {
        client,
        address,
        raw,
        call,
        request,
    }
}

/// Plays the server's side of a raw connection from a client engine:
/// reads the client's preamble, its Hello, and one request; returns the
/// request's header.
async fn read_client_request(raw: &mut Box<dyn RawSocket>) -> Header {
    let mut preamble = [0u8; 4];
    guard("the client's preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    assert_eq!(preamble, PREAMBLE);
    let hello = read_message(raw).await;
    assert_eq!(Header::decode(&hello).unwrap().kind, Kind::Hello);
    let request = read_message(raw).await;
    let header = Header::decode(&request).unwrap();
    assert_eq!(header.kind, Kind::Request);
    header
}

/// The other direction: a "server" that answers a call with garbage. The
/// call ends with `ConnectionLost` (not a hang) and the client closes that
/// connection.
async fn garbage_from_the_server(proto: &str) {
    let RawServer {
        client: _client,
        address: _,
        mut raw,
        call,
        request,
    } = raw_server_called(proto, 1).await;
    assert_eq!(request.rpc, rpc_id("double"));
    raw.write_all(&garbage(64, 7)).await.unwrap();
    let err = guard("a call answered with garbage", call)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    wait_for_close(&mut raw, "the client closing a garbage connection").await;
}

/// A response to no call in flight (a stray sequence number) is ignored;
/// the real response that follows answers the call.
async fn stray_response_is_ignored(proto: &str) {
    let RawServer {
        client: _client,
        address: _,
        mut raw,
        call,
        request,
    } = raw_server_called(proto, 21).await;
    let response = Header {
        kind: Kind::Response,
        ..request
    };
    let stray = Header {
        seq: request.seq + 1000,
        ..response
    };
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&stray.encode(), &[99]));
    bytes.extend_from_slice(&length_prefixed(&response.encode(), &[42]));
    raw.write_all(&bytes).await.unwrap();
    let answer = guard("a call after a stray response", call).await.unwrap();
    assert_eq!(answer.unwrap(), 42);
}

/// A hello request at `seq` whose header carries the extension `block`.
fn extended_hello(seq: u64, block: &[u8]) -> Vec<u8> {
    let mut request = Header::new(Kind::Request);
    request.rpc = rpc_id("hello");
    request.seq = seq;
    request.flags = FLAG_EXTENSIONS;
    let mut body = block.to_vec();
    body.extend_from_slice(&hello_args());
    length_prefixed(&request.encode(), &body)
}

/// Reads one message and returns its header and payload.
async fn read_frame(raw: &mut Box<dyn RawSocket>) -> (Header, Vec<u8>) {
    let message = read_message(raw).await;
    let header = Header::decode(&message).unwrap();
    (header, message[HEADER_LEN..].to_vec())
}

/// A raw peer that opens a stream and then ignores its credit: the server
/// grants its window (1000 bytes here), takes the items it allowed, and
/// cuts the connection off at the first item past it; the handler, which
/// never read, is released, and the server goes on serving others.
async fn stream_flood_is_cut_off(proto: &str) {
    let server = courier::Engine::builder(proto)
        .config_json(r#"{"streams": {"window_bytes": 1000}}"#)
        .build()
        .await
        .unwrap();
    register_hello(&server);
    server
        .register("sink", |h: courier::Handle, (): ()| async move {
            // Never reads: the items pile up to the window, no further.
            h.cancelled().await;
        })
        .unwrap();
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    let mut open = Header::new(Kind::Request);
    open.rpc = rpc_id("sink");
    open.seq = 1;
    open.flags = FLAG_EXTENSIONS;
    let ext = Extensions {
        stream: Some(1 << 20),
        ..Extensions::default()
    };
    let mut block = Vec::new();
    ext.encode(&mut block);
    bytes.extend_from_slice(&length_prefixed(&open.encode(), &block));
    let item = Header {
        kind: Kind::RequestItem,
        ..open
    };
    let item = Header { flags: 0, ..item };
    // 100-byte items cost 132 of credit each: 8 fit in 1000 (the eighth
    // overshoots), the ninth is a flood; 50 are sent.
    for _ in 0..50 {
        bytes.extend_from_slice(&length_prefixed(&item.encode(), &[7u8; 100]));
    }
    raw.write_all(&bytes).await.unwrap();
    match wait_for_close(&mut raw, "the flooding connection is closed").await {
        Closed::Eof(_) | Closed::Error(..) => {}
    }
    // Nothing of the stream is left on the server, and others are served.
    guard("the stream is released", async {
        loop {
            let s = server.stats();
            if s.streams.open == 0 && s.streams.buffered_bytes == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await;
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    client.finalize().await;
    server.finalize().await;
}

/// Header extensions and cancels from a raw peer, on one connection: a
/// flood of cancels for unknown requests is ignored; an unknown optional
/// extension is skipped and the request served (beside a deadline, and
/// beside a traceparent); an unknown critical one, a malformed block, or
/// an invalid traceparent (all-zero trace id, wrong length) is refused
/// with a `BadExtension` error naming it while the connection goes on; a
/// request whose budget was zero when sent is not run; a frame with a flag
/// bit this version does not define closes the connection (as the version
/// before extensions did with bit 1).
async fn extensions_and_cancels(proto: &str) {
    let server = cc::server(proto).await;
    register_hello(&server);
    let mut raw = raw_connect(&server.address().to_string()).await.unwrap();
    let mut bytes = preamble_and_hello();
    for seq in 0..10_000u64 {
        let cancel = Header {
            seq: 1_000_000 + seq,
            ..Header::new(Kind::Cancel)
        };
        bytes.extend_from_slice(&length_prefixed(&cancel.encode(), b""));
    }
    // An optional extension 0x22 this engine does not know, and a deadline.
    let mut optional = vec![1, 0, 15, 0, 0x22, 3, 1, 2, 3];
    optional.extend_from_slice(&[1, 8]);
    optional.extend_from_slice(&20_000_000u64.to_le_bytes());
    bytes.extend_from_slice(&extended_hello(1, &optional));
    bytes.extend_from_slice(&extended_hello(2, &[1, 0, 3, 0, 0xa2, 1, 0]));
    bytes.extend_from_slice(&extended_hello(3, &[9, 0, 0, 0]));
    bytes.extend_from_slice(&extended_hello(
        4,
        &Extensions::deadline_block(std::time::Duration::ZERO),
    ));
    bytes.extend_from_slice(&extended_hello(5, &[1, 0, 0, 0]));
    // A traceparent between two optional entries this engine does not know.
    let trace = TraceContext::new_root(true).to_bytes();
    let mut traced = vec![1, 0, 38, 0, 0x22, 3, 1, 2, 3, EXT_TRACEPARENT, 26];
    traced.extend_from_slice(&trace);
    traced.extend_from_slice(&[0x7f, 3, 4, 5, 6]);
    bytes.extend_from_slice(&extended_hello(6, &traced));
    let mut zero_trace_id = vec![1, 0, 28, 0, EXT_TRACEPARENT, 26];
    zero_trace_id.extend_from_slice(&trace);
    zero_trace_id[7..23].fill(0);
    bytes.extend_from_slice(&extended_hello(7, &zero_trace_id));
    let mut short = vec![1, 0, 27, 0, EXT_TRACEPARENT, 25];
    short.extend_from_slice(&trace[..25]);
    bytes.extend_from_slice(&extended_hello(8, &short));
    raw.write_all(&bytes).await.unwrap();

    let mut preamble = [0u8; 4];
    guard("the preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    let (h, payload) = read_frame(&mut raw).await;
    assert_eq!((h.kind, h.seq), (Kind::Response, 1), "{h:?}");
    assert_eq!(&payload[1..], b"Good bye Matthieu");
    for (seq, says) in [
        (2, "unknown critical extension 0xa2"),
        (3, "extension block version 9"),
    ] {
        let (h, payload) = read_frame(&mut raw).await;
        assert_eq!(
            (h.kind, h.status, h.seq),
            (Kind::Error, Status::BadExtension, seq)
        );
        let message = String::from_utf8(payload).unwrap();
        assert!(message.contains(says), "{message}");
    }
    // Request 4's budget was zero: not run, not answered; 5 is next.
    let (h, _) = read_frame(&mut raw).await;
    assert_eq!((h.kind, h.seq), (Kind::Response, 5), "{h:?}");
    let (h, payload) = read_frame(&mut raw).await;
    assert_eq!((h.kind, h.seq), (Kind::Response, 6), "{h:?}");
    assert_eq!(&payload[1..], b"Good bye Matthieu");
    for (seq, says) in [
        (
            7,
            "extension 0x02 (traceparent) is invalid: the traceparent's trace id is all zeros",
        ),
        (8, "extension 0x02 has a 25-byte value, expected 26"),
    ] {
        let (h, payload) = read_frame(&mut raw).await;
        assert_eq!(
            (h.kind, h.status, h.seq),
            (Kind::Error, Status::BadExtension, seq)
        );
        let message = String::from_utf8(payload).unwrap();
        assert!(message.contains(says), "{message}");
    }

    let mut unknown_flag = Header::new(Kind::Ping).encode();
    unknown_flag[2] = 0x04;
    raw.write_all(&length_prefixed(&unknown_flag, b""))
        .await
        .unwrap();
    wait_for_close(&mut raw, "the server closing after an unknown flag bit").await;
}

/// What a client engine sends, seen from a raw server: a call without a
/// trace context has no extension block (its request is the header and
/// the arguments, nothing more); a call with one carries exactly the
/// 26-byte traceparent entry, and the answer completes it.
async fn trace_context_on_the_wire(proto: &str) {
    let (listener, peer) = RawListener::bind(proto).await;
    let client = cc::client(proto).await;
    let (found, mut raw) = tokio::join!(client.lookup(&peer), listener.accept());
    let address = found.unwrap();
    let double = client.remote::<u32, u32>("double");
    let trace = TraceContext::new_root(true);
    let plain = {
        let c = double.on(&address);
        tokio::spawn(async move { c.call(&2).await })
    };
    let mut preamble = [0u8; 4];
    guard("the client's preamble", raw.read_exact(&mut preamble))
        .await
        .unwrap();
    let hello = read_message(&mut raw).await;
    assert_eq!(Header::decode(&hello).unwrap().kind, Kind::Hello);
    let request = read_message(&mut raw).await;
    let header = Header::decode(&request).unwrap();
    assert_eq!(header.flags & FLAG_EXTENSIONS, 0, "no context, no block");
    assert_eq!(&request[HEADER_LEN..], &[2], "the arguments alone");
    let answer = Header {
        kind: Kind::Response,
        ..header
    };
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&answer.encode(), &[4]));
    raw.write_all(&bytes).await.unwrap();
    assert_eq!(guard("the plain call", plain).await.unwrap().unwrap(), 4);

    let traced = {
        let c = double.on(&address).trace(trace);
        tokio::spawn(async move { c.call(&3).await })
    };
    let request = read_message(&mut raw).await;
    let header = Header::decode(&request).unwrap();
    assert_eq!(header.flags & FLAG_EXTENSIONS, FLAG_EXTENSIONS);
    let mut want = vec![1, 0, 28, 0, EXT_TRACEPARENT, 26];
    want.extend_from_slice(&trace.to_bytes());
    want.push(3); // the arguments
    assert_eq!(&request[HEADER_LEN..], &want[..]);
    let answer = Header {
        kind: Kind::Response,
        flags: 0,
        ..header
    };
    raw.write_all(&length_prefixed(&answer.encode(), &[6]))
        .await
        .unwrap();
    assert_eq!(guard("the traced call", traced).await.unwrap().unwrap(), 6);
}

/// An answer whose extension block is malformed fails its call with a
/// clear error, and only that call: the connection stays.
async fn malformed_answer_extension(proto: &str) {
    let RawServer {
        client,
        address,
        mut raw,
        call,
        request,
    } = raw_server_called(proto, 1).await;
    let bad = Header {
        kind: Kind::Response,
        flags: FLAG_EXTENSIONS,
        ..request
    };
    let mut bytes = PREAMBLE.to_vec();
    bytes.extend_from_slice(&length_prefixed(&bad.encode(), &[1, 0, 200, 0, 42]));
    raw.write_all(&bytes).await.unwrap();
    let err = guard("a call answered with a bad extension", call)
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        Error::Protocol { reason, .. } => assert!(reason.contains("extension block"), "{reason}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
    // The same connection carries the next call.
    let next = {
        let c = client.remote::<u32, u32>("double").on(&address);
        tokio::spawn(async move { c.call(&2).await })
    };
    let request = read_message(&mut raw).await;
    let request = Header::decode(&request).unwrap();
    let answer = Header {
        kind: Kind::Response,
        ..request
    };
    raw.write_all(&length_prefixed(&answer.encode(), &[4]))
        .await
        .unwrap();
    assert_eq!(guard("the next call", next).await.unwrap().unwrap(), 4);
}

macro_rules! bad_input_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread")]
            async fn random_bytes() {
                super::random_bytes(PROTO).await;
            }
        }
    )*};
}

/// Bytes written by hand in the framing of byte-stream transports
/// (`docs/wire-format.md`): the preamble, length prefixes, frames.
macro_rules! stream_bad_input_tests {
    ($($proto:ident),* $(,)?) => {$(
        mod $proto {
            const PROTO: &str = stringify!($proto);

            #[tokio::test(flavor = "multi_thread")]
            async fn huge_length_prefix() {
                super::super::huge_length_prefix(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn bad_frame_version() {
                super::super::bad_frame_version(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn half_frame_then_hang_up() {
                super::super::half_frame_then_hang_up(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn request_without_hello() {
                super::super::request_without_hello(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn second_hello() {
                super::super::second_hello(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn valid_bytes_are_answered() {
                super::super::valid_bytes_are_answered(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn garbage_from_the_server() {
                super::super::garbage_from_the_server(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn stray_response_is_ignored() {
                super::super::stray_response_is_ignored(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn stream_flood_is_cut_off() {
                super::super::stream_flood_is_cut_off(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn extensions_and_cancels() {
                super::super::extensions_and_cancels(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn trace_context_on_the_wire() {
                super::super::trace_context_on_the_wire(PROTO).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn malformed_answer_extension() {
                super::super::malformed_answer_extension(PROTO).await;
            }
        }
    )*};
}

courier_conformance::for_each_socket_protocol!(bad_input_tests);

/// Garbage UDP datagrams to a quic server's port: ignored, and the server
/// goes on serving existing and new clients.
#[tokio::test(flavor = "multi_thread")]
async fn quic_garbage_datagrams() {
    let proto = "quic";
    let server = cc::server(proto).await;
    register_hello(&server);
    let client = cc::client(proto).await;
    let address = cc::lookup(&client, &server).await;
    assert_hello(&client, &address).await;
    let host_port = server
        .address()
        .wire()
        .rest()
        .split('#')
        .next()
        .unwrap()
        .to_owned();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..64u64 {
        let junk = garbage(1200, 0x9e37 + i);
        udp.send_to(&junk, &host_port).await.unwrap();
    }
    // A datagram that looks like a QUIC long header with a bogus version.
    let mut initial = vec![0xc0, 0xde, 0xad, 0xbe, 0xef, 8];
    initial.extend_from_slice(&garbage(1194, 7));
    udp.send_to(&initial, &host_port).await.unwrap();
    assert_hello(&client, &address).await;
    let other = cc::client(proto).await;
    let fresh = cc::lookup(&other, &server).await;
    assert_hello(&other, &fresh).await;
}

mod framed {
    courier_conformance::for_each_stream_protocol!(stream_bad_input_tests);
}

/// A quic address whose fingerprint is not the server's certificate: the
/// lookup is refused with both fingerprints named, and the server goes on
/// serving clients that have the right address.
#[tokio::test(flavor = "multi_thread")]
async fn quic_wrong_fingerprint() {
    let proto = "quic";
    let server = cc::server(proto).await;
    register_hello(&server);
    let good = server.address().to_string();
    let (host_port, real) = good.split_once("#sha256=").unwrap();
    // Flip the first hex digit.
    let flipped = if real.starts_with('0') { "1" } else { "0" };
    let forged = format!("{host_port}#sha256={flipped}{}", &real[1..]);
    let client = cc::client(proto).await;
    let err = guard("lookup with a forged fingerprint", client.lookup(&forged))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(real), "{msg}");
    assert!(msg.contains(&forged[forged.len() - 64..]), "{msg}");
    let address = guard("lookup", client.lookup(&good)).await.unwrap();
    assert_hello(&client, &address).await;
}
