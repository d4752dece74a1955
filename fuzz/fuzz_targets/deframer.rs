//! The sans-IO deframer of every byte-stream transport (tcp, unix, and the
//! streams of quic) on arbitrary bytes, fed in arbitrary pieces.
//!
//! Input layout: byte 0 picks the maximum message size (so small maxima,
//! where "too large" is easy to reach, are explored too), byte 1 seeds the
//! piece sizes, the rest is the stream. Checked: no panic; the messages
//! returned are exactly the stream's messages whichever way it was cut (the
//! same stream fed in one piece gives the same messages and the same
//! error); a message never exceeds the maximum; memory held stays within the
//! documented bound (the bytes actually received, or a message of at most
//! 1 MiB reserved whole).

#![no_main]

use courier_transport::framing::Deframer;
use libfuzzer_sys::fuzz_target;

fn run(max: usize, stream: &[u8], pieces: impl Iterator<Item = usize>) -> (Vec<Vec<u8>>, bool) {
    let mut d = Deframer::new(max);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut pieces = pieces;
    while !rest.is_empty() {
        let n = pieces.next().unwrap_or(rest.len()).clamp(1, rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let buf = d.read_buf();
        buf.extend_from_slice(piece);
        // The documented bound on memory held for a partial message: about
        // three times the bytes received, plus 64 KiB, or the whole message
        // if it is at most 1 MiB (and the maximum), plus the read buffer.
        let bound = (3 * stream.len() + (64 << 10)).max(max.min((1 << 20) + 4096)) + (16 << 10);
        assert!(
            d.read_buf().capacity() <= bound,
            "{} bytes reserved after {} received (max {max})",
            d.read_buf().capacity(),
            stream.len()
        );
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    assert!(m.len() <= max, "a message over the maximum");
                    out.push(m.to_vec());
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return (out, true);
                }
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = match data[0] {
        0 => 0,
        b @ 1..=127 => usize::from(b),
        b => usize::from(b) << 12,
    };
    let mut seed = u32::from(data[1]) | 1;
    let stream = &data[2..];
    let pieces = std::iter::from_fn(move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        Some((seed % 37) as usize + 1)
    });
    let cut = run(max, stream, pieces);
    let whole = run(max, stream, std::iter::empty());
    assert_eq!(cut, whole, "the messages depend on how the stream was cut");
});
