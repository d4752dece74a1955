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
/// until it returns `Ok(None)`. Memory held for a message in progress grows
/// with the bytes actually received (at most about three times those, plus
/// 64 KiB), never with what a length prefix claims, and a prefix over the
/// maximum is refused before any body is read.
#[derive(Debug)]
pub struct Deframer {
    max: usize,
    buf: BytesMut,
    preamble_seen: bool,
    /// Length of the message whose body is being received.
    want: Option<usize>,
}

impl Deframer {
    /// A deframer accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(MAX_FRAMED_MESSAGE),
            buf: BytesMut::new(),
            preamble_seen: false,
            want: None,
        }
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
                let target = if 2 * step >= missing {
                    len
                } else {
                    have + step
                };
                let mut grown = BytesMut::with_capacity(target);
                grown.extend_from_slice(&self.buf);
                self.buf = grown;
            }
            _ => {
                if spare < MIN_READ {
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
        Ok(Some(self.buf.split_to(len).freeze()))
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
}
