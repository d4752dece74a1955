//! Micro-benchmarks of the codecs on every message's path, with divan:
//! the engine's 24-byte frame header (encode, decode), the RPC id hash
//! (`courier::frame::rpc_id`), and the stream transports' `Deframer` cutting
//! a buffer of many small messages.
//!
//! `cargo bench -p courier-benches --bench codec` (divan's options after
//! `--`, e.g. `-- deframe` to run only the deframer, `--sample-count 1000`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier::frame::{self, Header, Kind, Status};
use courier_transport::framing::{length_prefix, Deframer, PREAMBLE};
use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};

fn main() {
    divan::main();
}

/// A request header as the engine writes it.
fn request_header() -> Header {
    Header {
        kind: Kind::Request,
        flags: 0,
        status: Status::Ok,
        provider: 1,
        rpc: frame::rpc_id("bench.sink"),
        seq: 0x0123_4567,
    }
}

#[divan::bench]
fn header_encode(bencher: Bencher<'_, '_>) {
    let h = request_header();
    bencher
        .counter(ItemsCount::new(1usize))
        .bench(|| black_box(&h).encode());
}

#[divan::bench]
fn header_decode(bencher: Bencher<'_, '_>) {
    let bytes = request_header().encode();
    bencher
        .counter(ItemsCount::new(1usize))
        .bench(|| Header::decode(black_box(&bytes)).unwrap());
}

/// Decode of a whole received message: header, then the payload as a
/// zero-copy slice (what the engine's reader does per message).
#[divan::bench]
fn frame_split(bencher: Bencher<'_, '_>) {
    let mut msg = request_header().encode().to_vec();
    msg.extend_from_slice(&[7u8; 64]);
    let msg = bytes::Bytes::from(msg);
    bencher
        .counter(ItemsCount::new(1usize))
        .bench(|| frame::split(black_box(&msg)).unwrap());
}

#[divan::bench(args = ["hello", "bench.sink", "my_service.provider_method_with_a_long_name"])]
fn rpc_id(bencher: Bencher<'_, '_>, name: &str) {
    bencher
        .counter(BytesCount::new(name.len()))
        .bench(|| frame::rpc_id(black_box(name)));
}

/// Messages in one deframer buffer.
const MESSAGES: usize = 1000;

/// A byte stream as a stream transport receives it: the preamble, then
/// `MESSAGES` length-prefixed messages of `size` bytes.
fn stream_of(size: usize) -> Vec<u8> {
    let mut s = PREAMBLE.to_vec();
    let body = vec![0x5au8; size];
    for _ in 0..MESSAGES {
        s.extend_from_slice(&length_prefix(size).unwrap());
        s.extend_from_slice(&body);
    }
    s
}

/// Cutting 1000 buffered messages of `size` bytes out of one buffer
/// (`next_message` until it returns `None`); the bytes are in the deframer
/// before the clock starts. The counter is in messages.
#[divan::bench(args = [0, 16, 64, 256, 1024])]
fn deframe_buffered(bencher: Bencher<'_, '_>, size: usize) {
    let stream = stream_of(size);
    bencher
        .counter(ItemsCount::new(MESSAGES))
        .with_inputs(|| {
            let mut d = Deframer::new(1 << 20);
            d.extend(&stream);
            d
        })
        .bench_local_values(|mut d| {
            let mut n = 0usize;
            while let Some(m) = d.next_message().unwrap() {
                n += black_box(m).len() + 1;
            }
            n
        });
}

/// The same including the copy into the deframer (`extend`), as a reader
/// that is handed the bytes pays it. The counter is in bytes of stream.
#[divan::bench(args = [16, 64, 1024])]
fn deframe_with_copy(bencher: Bencher<'_, '_>, size: usize) {
    let stream = stream_of(size);
    bencher.counter(BytesCount::new(stream.len())).bench(|| {
        let mut d = Deframer::new(1 << 20);
        d.extend(black_box(&stream));
        let mut n = 0usize;
        while let Some(m) = d.next_message().unwrap() {
            n += black_box(m).len() + 1;
        }
        n
    });
}
