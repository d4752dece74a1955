//! Sans-IO framing of messages on byte streams.
//!
//! Stream transports (tcp, unix, and any plugin over a byte stream) share one
//! layout, specified in `docs/wire-format.md`:
//!
//! ```text
//! direction start:  "CRR" 0x01                      (4 bytes, once)
//! each message:     length: u32 little-endian       (4 bytes)
//!                   message bytes                   (length bytes)
//! ```
//!
//! The preamble lets a receiver reject a peer that speaks something else
//! (an HTTP client, a port scanner) after four bytes, instead of reading its
//! bytes as a length.
//!
//! [`Deframer`] turns received bytes back into messages without doing any I/O,
//! so it is tested (and fuzzed) without sockets.

use bytes::{Buf, Bytes, BytesMut};

/// The four bytes that open each direction of a framed stream.
pub const PREAMBLE: [u8; 4] = *b"CRR\x01";

/// Size of the length prefix in front of each message.
pub const PREFIX_LEN: usize = 4;

/// The largest message the 32-bit length prefix can describe.
pub const MAX_FRAMED_MESSAGE: usize = u32::MAX as usize;

/// Smallest read buffer reserved while waiting for data.
const MIN_READ: usize = 8 * 1024;

/// Growth step of the buffer of a message in progress when little is buffered.
const BODY_STEP: usize = 64 * 1024;

/// Messages up to this size get their whole buffer as soon as their length
/// prefix is read (no growth copies); larger ones grow with the bytes that
/// arrive. A mebibyte and 4 KiB: a 1 MiB payload behind its headers (an
/// engine frame's, a bulk chunk's) is still in.
const EAGER_BODY: usize = (1 << 20) + 4096;

/// Messages from this size up (and up to [`EAGER_BODY`]) have their buffer
/// remembered for reuse once the consumer has dropped them.
const REUSE_MIN: usize = 64 * 1024;

/// Bytes of delivered messages remembered for reuse, at most.
const REUSE_BYTES: usize = 2 << 20;

/// Why a byte stream is not a valid message stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeframeError {
    /// The stream did not start with [`PREAMBLE`].
    #[error("the stream does not start with the Courier preamble (got {0:02x?})")]
    BadPreamble([u8; 4]),
    /// A length prefix announced a message over the maximum.
    #[error("a message of {size} bytes was announced, over the maximum of {max} bytes")]
    TooLarge {
        /// The announced size.
        size: u64,
        /// The configured maximum.
        max: usize,
    },
}

/// Encodes the length prefix of a message of `len` bytes.
///
/// Returns `None` when `len` does not fit the 32-bit prefix.
pub fn length_prefix(len: usize) -> Option<[u8; PREFIX_LEN]> {
    u32::try_from(len).ok().map(u32::to_le_bytes)
}

/// Splits a received byte stream into messages.
///
/// Read into [`Deframer::read_buf`], then call [`Deframer::next_message`]
/// until it returns `Ok(None)`. A prefix over the maximum is refused before
/// any body is read. A message of up to 1 MiB gets a buffer of its exact
/// size when its prefix is read (no copies as it arrives); the buffer of a
/// larger one grows with the bytes actually received (at most about three
/// times those, plus 64 KiB), never with what its prefix claims. So a peer
/// that announces and withholds holds at most 1 MiB here.
///
/// The buffers of the last few delivered messages of 64 KiB to 1 MiB (2 MiB
/// of them at most) are remembered: once their consumer has dropped them,
/// the next such message is received into one, still mapped and warm in
/// the cache, instead of a fresh allocation. This lifted unix's raw 1 MiB
/// floor by about a quarter (`docs/benchmarks-journal.md`, "Second pass").
#[derive(Debug)]
pub struct Deframer {
    max: usize,
    buf: BytesMut,
    preamble_seen: bool,
    /// Length of the message whose body is being received.
    want: Option<usize>,
    /// Recently delivered large messages: once their consumer drops them,
    /// their buffer takes the next large message (a buffer still warm in
    /// the cache, with its pages mapped, instead of a fresh allocation).
    recent: Vec<Bytes>,
}

impl Deframer {
    /// A deframer accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(MAX_FRAMED_MESSAGE),
            buf: BytesMut::new(),
            preamble_seen: false,
            want: None,
            recent: Vec::new(),
        }
    }

    /// A remembered buffer that is no longer shared and holds `len` bytes.
    fn reusable(&mut self, len: usize) -> Option<BytesMut> {
        let mut i = 0;
        while i < self.recent.len() {
            if !self.recent[i].is_unique() {
                i += 1;
                continue;
            }
            let bytes = self.recent.swap_remove(i);
            if let Ok(mut buf) = bytes.try_into_mut() {
                if buf.capacity() >= len {
                    buf.clear();
                    return Some(buf);
                }
            }
        }
        None
    }

    /// The buffer to read more bytes into, with spare capacity reserved.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        let have = self.buf.len();
        let spare = self.buf.capacity() - have;
        match self.want {
            Some(len) if have < len => {
                let missing = len - have;
                if spare >= missing.min(MIN_READ) && spare > 0 {
                    return &mut self.buf;
                }
                // Grow with what has arrived, not with what was announced:
                // double what is buffered, or, once the message would fit
                // within two more such steps, allocate exactly its size, so
                // its last bytes never force one more copy of the whole of
                // it (Vec-style doubling copies a 1 MiB + 24 B message into
                // a 2 MiB buffer; power-of-two payloads behind a header hit
                // that every time).
                let step = have.max(BODY_STEP);
                let target = if len <= EAGER_BODY || 2 * step >= missing {
                    len
                } else {
                    have + step
                };
                let mut grown = match target {
                    REUSE_MIN..=EAGER_BODY => self.reusable(target),
                    _ => None,
                }
                .unwrap_or_else(|| BytesMut::with_capacity(target));
                grown.extend_from_slice(&self.buf);
                self.buf = grown;
            }
            _ => {
                // Reserve when half the room is used, not at the first
                // byte: the messages split off the buffer are often still
                // held (a response its caller has not read yet), and then
                // each reservation is a new allocation. Small messages
                // now share one every few kilobytes.
                if spare < MIN_READ / 2 {
                    self.buf.reserve(MIN_READ);
                }
            }
        }
        &mut self.buf
    }

    /// Feeds bytes (for callers that do not read into [`Deframer::read_buf`]).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether no message is partly received (a hang-up here is clean).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.want.is_none()
    }

    /// A description of the partial message, for error messages.
    pub fn progress(&self) -> String {
        match self.want {
            Some(len) => format!("{} of {len} bytes of a message", self.buf.len()),
            None if !self.preamble_seen => format!("{} bytes of the preamble", self.buf.len()),
            None => format!("{} bytes of a length prefix", self.buf.len()),
        }
    }

    /// Returns the next complete message, if one is buffered.
    ///
    /// # Errors
    /// A bad preamble or an oversized length prefix: the stream is unusable.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, DeframeError> {
        if !self.preamble_seen {
            if self.buf.len() < PREAMBLE.len() {
                // Fail early on a wrong prefix of the preamble too.
                if !PREAMBLE.starts_with(&self.buf) {
                    let mut got = [0u8; 4];
                    got[..self.buf.len()].copy_from_slice(&self.buf);
                    return Err(DeframeError::BadPreamble(got));
                }
                return Ok(None);
            }
            let mut got = [0u8; 4];
            got.copy_from_slice(&self.buf[..4]);
            if got != PREAMBLE {
                return Err(DeframeError::BadPreamble(got));
            }
            self.buf.advance(PREAMBLE.len());
            self.preamble_seen = true;
        }
        let len = match self.want {
            Some(len) => len,
            None => {
                if self.buf.len() < PREFIX_LEN {
                    return Ok(None);
                }
                let mut prefix = [0u8; PREFIX_LEN];
                prefix.copy_from_slice(&self.buf[..PREFIX_LEN]);
                let len = u32::from_le_bytes(prefix);
                if len as usize > self.max {
                    return Err(DeframeError::TooLarge {
                        size: u64::from(len),
                        max: self.max,
                    });
                }
                self.buf.advance(PREFIX_LEN);
                self.want = Some(len as usize);
                len as usize
            }
        };
        if self.buf.len() < len {
            return Ok(None);
        }
        self.want = None;
        let message = self.buf.split_to(len).freeze();
        if (REUSE_MIN..=EAGER_BODY).contains(&len) {
            self.recent.push(message.clone());
            let mut kept: usize = self.recent.iter().map(Bytes::len).sum();
            while kept > REUSE_BYTES {
                kept -= self.recent.remove(0).len();
            }
        }
        Ok(Some(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = PREAMBLE.to_vec();
        for m in msgs {
            out.extend_from_slice(&length_prefix(m.len()).unwrap());
            out.extend_from_slice(m);
        }
        out
    }

    #[test]
    fn splits_messages_fed_byte_by_byte() {
        let msgs: [&[u8]; 4] = [b"hello", b"", b"x", &[7u8; 300]];
        let stream = framed(&msgs);
        let mut d = Deframer::new(1024);
        let mut got = Vec::new();
        for b in stream {
            d.extend(&[b]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 4);
        for (g, m) in got.iter().zip(msgs) {
            assert_eq!(&g[..], m);
        }
        assert!(d.is_idle());
    }

    #[test]
    fn refuses_bad_preamble_early() {
        let mut d = Deframer::new(1024);
        d.extend(b"GE");
        assert!(matches!(
            d.next_message(),
            Err(DeframeError::BadPreamble(_))
        ));
    }

    #[test]
    fn refuses_huge_prefix_without_allocating() {
        let mut d = Deframer::new(1 << 20);
        let mut s = PREAMBLE.to_vec();
        s.extend_from_slice(&u32::MAX.to_le_bytes());
        d.extend(&s);
        let err = d.next_message().unwrap_err();
        assert_eq!(
            err,
            DeframeError::TooLarge {
                size: u64::from(u32::MAX),
                max: 1 << 20
            }
        );
    }

    #[test]
    fn a_large_message_is_never_copied_into_a_buffer_past_its_size() {
        let len = (1 << 20) + 24;
        let mut d = Deframer::new(usize::MAX);
        let mut s = PREAMBLE.to_vec();
        s.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
        d.extend(&s);
        assert!(d.next_message().unwrap().is_none());
        let chunk = vec![5u8; 64 * 1024];
        let mut fed = 0;
        let mut largest = 0;
        while fed < len {
            let buf = d.read_buf();
            let n = (len - fed).min(chunk.len()).min(buf.capacity() - buf.len());
            buf.extend_from_slice(&chunk[..n]);
            largest = largest.max(buf.capacity());
            fed += n;
        }
        assert!(
            largest <= len,
            "grew to {largest} bytes for a {len}-byte message"
        );
        assert_eq!(d.next_message().unwrap().unwrap().len(), len);
    }

    #[test]
    fn an_announced_megabyte_reserves_at_most_a_megabyte() {
        let mut d = Deframer::new(usize::MAX);
        let mut s = PREAMBLE.to_vec();
        s.extend_from_slice(&u32::try_from(EAGER_BODY).unwrap().to_le_bytes());
        s.extend_from_slice(&[7u8; 100]);
        d.extend(&s);
        assert!(d.next_message().unwrap().is_none());
        let cap = d.read_buf().capacity();
        assert!(cap <= EAGER_BODY, "reserved {cap} bytes");
    }

    #[test]
    fn buffer_grows_with_data_not_with_announcement() {
        let mut d = Deframer::new(usize::MAX);
        let mut s = PREAMBLE.to_vec();
        s.extend_from_slice(&(1u32 << 30).to_le_bytes());
        d.extend(&s);
        assert!(d.next_message().unwrap().is_none());
        let cap = d.read_buf().capacity();
        assert!(
            cap <= 4 * BODY_STEP,
            "reserved {cap} bytes for a 1 GiB announcement"
        );
        assert!(!d.is_idle());
        assert!(d.progress().contains("of 1073741824 bytes"));
    }

    /// Feeds one message of `len` bytes (its prefix, then its body in reads
    /// of at most 64 KiB into `read_buf`) and returns it with the address
    /// of the buffer its body was received into.
    fn receive(d: &mut Deframer, len: usize, fill: u8) -> Bytes {
        d.extend(&u32::try_from(len).unwrap().to_le_bytes());
        assert!(d.next_message().unwrap().is_none());
        let mut fed = 0;
        while fed < len {
            let buf = d.read_buf();
            let n = (len - fed).min(64 << 10).min(buf.capacity() - buf.len());
            buf.extend_from_slice(&vec![fill; n]);
            fed += n;
        }
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.len(), len);
        assert!(m.iter().all(|&b| b == fill));
        m
    }

    #[test]
    fn a_dropped_large_message_lends_its_buffer_to_the_next() {
        let mut d = Deframer::new(usize::MAX);
        d.extend(&PREAMBLE);
        let len = (256 << 10) + 48;
        let first = receive(&mut d, len, 1);
        let first_at = first.as_ptr();
        drop(first);
        let second = receive(&mut d, len, 2);
        assert_eq!(second.as_ptr(), first_at, "the buffer was not reused");
        // Still held by its consumer: the next one gets a buffer of its own,
        // and the bytes the consumer holds do not change.
        let third = receive(&mut d, len, 3);
        assert_ne!(third.as_ptr(), second.as_ptr());
        assert!(second.iter().all(|&b| b == 2));
    }

    #[test]
    fn a_buffer_too_small_or_a_message_too_large_is_not_reused() {
        let mut d = Deframer::new(usize::MAX);
        d.extend(&PREAMBLE);
        let small = receive(&mut d, 128 << 10, 1);
        drop(small);
        // Larger than the remembered buffer: a fresh one, exactly its size.
        let larger = receive(&mut d, 512 << 10, 2);
        drop(larger);
        // Over EAGER_BODY: grows with the data, never kept for reuse.
        let huge = receive(&mut d, EAGER_BODY + 1, 3);
        drop(huge);
        assert!(d.recent.iter().all(|b| b.len() <= EAGER_BODY));
        let kept: usize = d.recent.iter().map(Bytes::len).sum();
        assert!(kept <= REUSE_BYTES);
    }

    #[test]
    fn what_is_kept_for_reuse_is_bounded() {
        let mut d = Deframer::new(usize::MAX);
        d.extend(&PREAMBLE);
        let mut held = Vec::new();
        for i in 0..32u8 {
            held.push(receive(&mut d, EAGER_BODY, i));
        }
        let kept: usize = d.recent.iter().map(Bytes::len).sum();
        assert!(kept <= REUSE_BYTES, "{kept} bytes kept");
        assert!(!d.recent.is_empty());
    }
}
