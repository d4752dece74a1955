//! The engine's frame: a fixed 24-byte header in front of every message.
//!
//! Transports carry opaque messages; the engine puts this header at the
//! start of each one. `docs/wire-format.md` is the specification, and the
//! tests below pin its bytes.
//!
//! ```text
//! offset size field
//!      0    1 version   (1)
//!      1    1 kind      (see [`Kind`])
//!      2    1 flags     (bit 0: no response expected; bit 1: extensions follow)
//!      3    1 status    (see [`Status`]; 0 except in error frames)
//!      4    2 provider  u16 little-endian (65535 is reserved)
//!      6    2 reserved  must be zero
//!      8    8 rpc id    u64 little-endian (see [`rpc_id`])
//!     16    8 sequence  u64 little-endian, per connection and direction
//!     24    … extension block (if flag bit 1), then the payload
//! ```
//!
//! # Header extensions
//!
//! Optional fields travel in an extension block between the header and the
//! payload, announced by [`FLAG_EXTENSIONS`]:
//!
//! ```text
//! offset size field
//!      0    1 block version (1)
//!      1    1 reserved      must be zero
//!      2    2 length        u16 little-endian: bytes of entries that follow
//!      4    … entries       each: type u8, length u8, value[length]
//! ```
//!
//! An entry type with bit 7 set is *critical*: an engine that does not know
//! it refuses the frame. An unknown type without bit 7 is skipped. Known
//! types: [`EXT_DEADLINE`], [`EXT_TRACEPARENT`], [`EXT_STREAM`], [`EXT_OVERFLOW`]. [`Extensions::decode`]
//! parses a block, [`Extensions::encode`] and [`Extensions::block`] write
//! one.

use std::time::Duration;

use bytes::Bytes;

use crate::trace::{TraceContext, TraceContextError, TRACEPARENT_LEN};

/// The frame version this engine speaks.
pub const VERSION: u8 = 1;

/// Length of the frame header.
pub const HEADER_LEN: usize = 24;

/// The provider id Courier reserves (as Margo reserves 65535).
pub const RESERVED_PROVIDER: u16 = u16::MAX;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// First frame of the side that opened the connection; payload: that
    /// engine's listening address (UTF-8, empty for a client-mode engine).
    Hello = 1,
    /// An RPC request; payload: the arguments.
    Request = 2,
    /// A successful response; payload: the response value.
    Response = 3,
    /// A failed request; `status` says why, payload: a UTF-8 message.
    Error = 4,
    /// Asks the receiving engine to finalize (remote shutdown).
    Shutdown = 5,
    /// Liveness probe; answered by a `Pong` with the same sequence.
    Ping = 6,
    /// Answer to a `Ping`.
    Pong = 7,
    /// Bulk: asks for bytes of an exposed region; payload: the 40-byte bulk
    /// access (`crate::bulk`). Answered by a `Response` carrying the bytes,
    /// or an `Error` with [`Status::BulkRefused`].
    BulkPull = 8,
    /// Bulk: writes bytes into an exposed region; payload: the 40-byte bulk
    /// access, then the bytes. Answered by an empty `Response`, or an
    /// `Error` with [`Status::BulkRefused`].
    BulkPush = 9,
    /// Bulk fast path: asks where a range of an exposed region is in the
    /// exposing process's memory; payload: the bulk access and one byte
    /// (1 read, 2 write). Answered by a `Response` listing the memory
    /// ranges (the access is leased until `BulkRelease`), or an `Error`.
    BulkGrant = 10,
    /// Bulk fast path: ends the lease of a `BulkGrant` (one-way); the
    /// sequence is the grant's.
    BulkRelease = 11,
    /// The caller gave up on a request (dropped its call, or its deadline
    /// passed): the sequence is the request's. No answer; a cancel for an
    /// unknown or finished request is ignored.
    Cancel = 12,
    /// Streams: an item of a request's request stream (caller to handler);
    /// the sequence is the request's, the payload the item.
    RequestItem = 13,
    /// Streams: the caller's request stream ended (caller to handler);
    /// status `Ok`: a clean end; [`Status::StreamAborted`]: the caller
    /// aborted it, payload its message.
    RequestEnd = 14,
    /// Streams: the handler's engine lets the caller send more request
    /// items (handler to caller); payload: a u64 of credit.
    RequestCredit = 15,
    /// Streams: an item of a request's response stream (handler to caller).
    /// The stream ends with the request's `Response` or `Error` frame.
    ResponseItem = 16,
    /// Streams: the caller lets the handler send more response items
    /// (caller to handler); payload: a u64 of credit.
    ResponseCredit = 17,
    /// Overflow: the caller has pulled a response that travelled by the
    /// bulk path ([`EXT_OVERFLOW`]); the handler's engine may free it. The
    /// sequence is the request's; no answer.
    OverflowRelease = 18,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::Request,
            3 => Self::Response,
            4 => Self::Error,
            5 => Self::Shutdown,
            6 => Self::Ping,
            7 => Self::Pong,
            8 => Self::BulkPull,
            9 => Self::BulkPush,
            10 => Self::BulkGrant,
            11 => Self::BulkRelease,
            12 => Self::Cancel,
            13 => Self::RequestItem,
            14 => Self::RequestEnd,
            15 => Self::RequestCredit,
            16 => Self::ResponseItem,
            17 => Self::ResponseCredit,
            18 => Self::OverflowRelease,
            _ => return None,
        })
    }
}

/// Why a request failed (the status byte of an error frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Success (every frame but `Error`).
    Ok = 0,
    /// No RPC with that id at that provider.
    NoSuchRpc = 1,
    /// The handler returned an error; payload: its message.
    HandlerFailed = 2,
    /// The handler panicked; payload: the panic message.
    HandlerPanicked = 3,
    /// The handler finished without responding.
    NoResponse = 4,
    /// Remote shutdown is not enabled on the receiving engine.
    ShutdownRefused = 5,
    /// The RPC is registered one-way (`disable_response`) but the request
    /// expects a response.
    OneWay = 6,
    /// The receiving engine is finalizing.
    Finalizing = 7,
    /// The request frame itself was invalid.
    BadRequest = 8,
    /// A bulk access was refused (unknown or dropped region, wrong key,
    /// mode, out of bounds); payload: why.
    BulkRefused = 9,
    /// The provider (or the connection) is at its limit of handlers running
    /// and queued: the request was refused before any handler saw it, and
    /// may be sent again. Payload: why.
    Busy = 10,
    /// The request's header extensions are malformed, or carry a critical
    /// extension this engine does not know. Nothing ran. Payload: why.
    BadExtension = 11,
    /// The caller aborted its request stream (in a `RequestEnd` frame), or
    /// a stream broke its flow control. Payload: why.
    StreamAborted = 12,
    /// A payload over the receiving engine's `max_payload_bytes`, refused
    /// before any of it was moved. Payload: why.
    TooLarge = 13,
}

impl Status {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::NoSuchRpc,
            2 => Self::HandlerFailed,
            3 => Self::HandlerPanicked,
            4 => Self::NoResponse,
            5 => Self::ShutdownRefused,
            6 => Self::OneWay,
            7 => Self::Finalizing,
            8 => Self::BadRequest,
            9 => Self::BulkRefused,
            10 => Self::Busy,
            11 => Self::BadExtension,
            12 => Self::StreamAborted,
            13 => Self::TooLarge,
            _ => return None,
        })
    }
}

/// Flag bit: the sender expects no response (one-way RPC).
pub const FLAG_NO_RESPONSE: u8 = 0b0000_0001;

/// Flag bit: an extension block follows the header (see the module docs).
pub const FLAG_EXTENSIONS: u8 = 0b0000_0010;

const KNOWN_FLAGS: u8 = FLAG_NO_RESPONSE | FLAG_EXTENSIONS;

/// The extension block version this engine writes and reads.
pub const EXT_VERSION: u8 = 1;

/// Length of the extension block's own header (version, reserved, length).
pub const EXT_BLOCK_HEADER_LEN: usize = 4;

/// Bit 7 of an entry type: an engine that does not know the type must
/// refuse the frame (without it, the entry is skipped).
pub const EXT_CRITICAL: u8 = 0x80;

/// Extension type 1, the caller's deadline: the budget left when the
/// request was sent, as a u64 little-endian count of microseconds. A
/// relative duration, so that the two hosts' clocks need not agree.
/// Not critical: an engine that ignores it still answers.
pub const EXT_DEADLINE: u8 = 0x01;

/// The largest budget an engine honours: a deadline further away is taken
/// as this one (7 days), so that an absurd value cannot overflow a clock.
pub const MAX_BUDGET: Duration = Duration::from_secs(7 * 24 * 3600);

/// Extension type 2, the caller's W3C trace context (its `traceparent`,
/// binary): version u8 (0), trace id (16 bytes), parent id (8 bytes),
/// trace flags u8 — 26 bytes ([`TraceContext::to_bytes`]). Not critical:
/// an engine that does not know it skips it and still answers.
pub const EXT_TRACEPARENT: u8 = 0x02;

/// Extension type `0x81`, critical: the request opens streams
/// (`docs/streams.md`). Value: a u64, the credit the caller grants the
/// handler for its response stream at once. Critical, so that an engine
/// that has no streams refuses the request rather than answer it as a
/// unary call.
pub const EXT_STREAM: u8 = 0x81;

/// Extension type `0x82`, critical: the frame's payload did not travel with
/// it but is exposed for a bulk pull by the sender ([`Overflow`], 32
/// bytes). Critical: an engine that does not know it would take the empty
/// payload for the arguments.
pub const EXT_OVERFLOW: u8 = 0x82;

/// Bytes of an overflow entry's value.
pub const OVERFLOW_LEN: usize = 32;

/// Bytes of an extension block that carries only a deadline.
pub const DEADLINE_BLOCK_LEN: usize = EXT_BLOCK_HEADER_LEN + 2 + 8;

/// Bytes of the largest block this engine writes: a deadline, a
/// traceparent, a stream and an overflow entry.
pub const MAX_BLOCK_LEN: usize =
    DEADLINE_BLOCK_LEN + 2 + TRACEPARENT_LEN + 2 + 8 + 2 + OVERFLOW_LEN;

/// Where a payload that did not travel with its frame waits to be pulled
/// ([`EXT_OVERFLOW`]): a region exposed read-only by the frame's sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    /// The region's id in the sender's engine.
    pub region: u64,
    /// The region's key.
    pub key: u128,
    /// The payload's length in bytes (the whole region).
    pub len: u64,
}

impl Overflow {
    /// The entry's 32 bytes: region u64, key u128, length u64.
    pub fn to_bytes(&self) -> [u8; OVERFLOW_LEN] {
        let mut b = [0u8; OVERFLOW_LEN];
        b[..8].copy_from_slice(&self.region.to_le_bytes());
        b[8..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Reads the entry's 32 bytes.
    pub fn from_bytes(b: &[u8; OVERFLOW_LEN]) -> Self {
        let mut region = [0u8; 8];
        region.copy_from_slice(&b[..8]);
        let mut key = [0u8; 16];
        key.copy_from_slice(&b[8..24]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&b[24..]);
        Self {
            region: u64::from_le_bytes(region),
            key: u128::from_le_bytes(key),
            len: u64::from_le_bytes(len),
        }
    }
}

/// The optional fields of a frame, from its extension block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The caller's remaining budget when it sent the request (capped at
    /// [`MAX_BUDGET`]).
    pub deadline: Option<Duration>,
    /// The caller's trace context ([`EXT_TRACEPARENT`]).
    pub trace: Option<TraceContext>,
    /// The request opens streams; the credit granted for the response
    /// stream ([`EXT_STREAM`]).
    pub stream: Option<u64>,
    /// The payload waits to be pulled ([`EXT_OVERFLOW`]).
    pub overflow: Option<Overflow>,
}

/// An extension block, built on the stack ([`Extensions::block`]): the
/// call path writes one without allocating. Derefs to its bytes.
#[derive(Clone, Copy)]
pub struct ExtensionBlock {
    len: u8,
    bytes: [u8; MAX_BLOCK_LEN],
}

impl std::ops::Deref for ExtensionBlock {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for ExtensionBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ExtensionBlock").field(&&**self).finish()
    }
}

/// Why an extension block is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// The frame says extensions follow, but the block is cut short.
    #[error("the extension block is cut short: {needed} bytes announced, {have} present")]
    Truncated {
        /// Bytes the block (or entry) announces.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// A block version this engine does not read.
    #[error(
        "extension block version {0} is not supported (this engine reads version {EXT_VERSION})"
    )]
    Version(u8),
    /// The block's reserved byte is not zero.
    #[error("the extension block's reserved byte is {0:#04x}, not zero")]
    Reserved(u8),
    /// A critical entry of a type this engine does not know.
    #[error("unknown critical extension {0:#04x}")]
    UnknownCritical(u8),
    /// A known entry whose value has the wrong length.
    #[error("extension {kind:#04x} has a {len}-byte value, expected {expected}")]
    BadLength {
        /// The entry type.
        kind: u8,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// The same known entry twice.
    #[error("extension {0:#04x} appears twice")]
    Duplicate(u8),
    /// A traceparent entry ([`EXT_TRACEPARENT`]) that is not a valid trace
    /// context: an all-zero trace id or parent id, or version `0xff`.
    #[error("extension 0x02 (traceparent) is invalid: {0}")]
    Traceparent(TraceContextError),
}

impl Extensions {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.deadline.is_none()
            && self.trace.is_none()
            && self.stream.is_none()
            && self.overflow.is_none()
    }

    /// Splits the extension block off the start of `payload` (the bytes
    /// after the header of a frame with [`FLAG_EXTENSIONS`]); returns the
    /// extensions and the payload proper.
    ///
    /// # Errors
    /// [`ExtensionError`]: the block is malformed, or carries a critical
    /// entry this engine does not know. The frame's own framing is intact
    /// (the transport delimits it), so only this frame is refused.
    pub fn decode(payload: &Bytes) -> Result<(Self, Bytes), ExtensionError> {
        let Some(head) = payload.get(..EXT_BLOCK_HEADER_LEN) else {
            return Err(ExtensionError::Truncated {
                needed: EXT_BLOCK_HEADER_LEN,
                have: payload.len(),
            });
        };
        if head[0] != EXT_VERSION {
            return Err(ExtensionError::Version(head[0]));
        }
        if head[1] != 0 {
            return Err(ExtensionError::Reserved(head[1]));
        }
        let len = usize::from(u16::from_le_bytes([head[2], head[3]]));
        let end = EXT_BLOCK_HEADER_LEN + len;
        let Some(mut entries) = payload.get(EXT_BLOCK_HEADER_LEN..end) else {
            return Err(ExtensionError::Truncated {
                needed: end,
                have: payload.len(),
            });
        };
        let mut ext = Self::default();
        while let [kind, len, rest @ ..] = entries {
            let (kind, len) = (*kind, usize::from(*len));
            let Some(value) = rest.get(..len) else {
                return Err(ExtensionError::Truncated {
                    needed: len,
                    have: rest.len(),
                });
            };
            match kind {
                EXT_DEADLINE => {
                    let micros = u64::from_le_bytes(fixed(kind, value, ext.deadline.is_some())?);
                    ext.deadline = Some(Duration::from_micros(micros).min(MAX_BUDGET));
                }
                EXT_TRACEPARENT => {
                    let bytes = fixed(kind, value, ext.trace.is_some())?;
                    let trace =
                        TraceContext::from_bytes(&bytes).map_err(ExtensionError::Traceparent)?;
                    ext.trace = Some(trace);
                }
                EXT_STREAM => {
                    let credit = u64::from_le_bytes(fixed(kind, value, ext.stream.is_some())?);
                    ext.stream = Some(credit);
                }
                EXT_OVERFLOW => {
                    let bytes = fixed(kind, value, ext.overflow.is_some())?;
                    ext.overflow = Some(Overflow::from_bytes(&bytes));
                }
                k if k & EXT_CRITICAL != 0 => return Err(ExtensionError::UnknownCritical(k)),
                _ => {} // an optional extension this engine does not know
            }
            entries = &rest[len..];
        }
        if !entries.is_empty() {
            // One byte left: an entry type without its length.
            return Err(ExtensionError::Truncated {
                needed: 2,
                have: entries.len(),
            });
        }
        Ok((ext, payload.slice(end..)))
    }

    /// The extension block of these extensions, appended to `out` (nothing
    /// if there are none). A deadline over [`MAX_BUDGET`] is capped.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.block());
    }

    /// The extension block of these extensions, on the stack (empty if
    /// there are none): the deadline's entry first, then the
    /// traceparent's, the stream's, the overflow's. A deadline over
    /// [`MAX_BUDGET`] is capped.
    pub fn block(&self) -> ExtensionBlock {
        let mut block = ExtensionBlock {
            len: 0,
            bytes: [0; MAX_BLOCK_LEN],
        };
        if self.is_empty() {
            return block;
        }
        let b = &mut block.bytes;
        b[0] = EXT_VERSION;
        let mut at = EXT_BLOCK_HEADER_LEN;
        // One entry: its type, its length, its value (at most 32 bytes).
        let mut put = |kind: u8, value: &[u8]| {
            b[at] = kind;
            b[at + 1] = value.len() as u8;
            b[at + 2..at + 2 + value.len()].copy_from_slice(value);
            at += 2 + value.len();
        };
        if let Some(deadline) = self.deadline {
            let micros = u64::try_from(deadline.min(MAX_BUDGET).as_micros()).unwrap_or(u64::MAX);
            put(EXT_DEADLINE, &micros.to_le_bytes());
        }
        if let Some(trace) = &self.trace {
            put(EXT_TRACEPARENT, &trace.to_bytes());
        }
        if let Some(credit) = self.stream {
            put(EXT_STREAM, &credit.to_le_bytes());
        }
        if let Some(overflow) = &self.overflow {
            put(EXT_OVERFLOW, &overflow.to_bytes());
        }
        let entries = (at - EXT_BLOCK_HEADER_LEN) as u16;
        b[2..4].copy_from_slice(&entries.to_le_bytes());
        block.len = at as u8;
        block
    }

    /// The block of a deadline alone, on the stack (the hot path of a call
    /// with a timeout).
    pub fn deadline_block(budget: Duration) -> [u8; DEADLINE_BLOCK_LEN] {
        let micros = u64::try_from(budget.min(MAX_BUDGET).as_micros()).unwrap_or(u64::MAX);
        let mut b = [0u8; DEADLINE_BLOCK_LEN];
        b[0] = EXT_VERSION;
        b[2..4].copy_from_slice(&10u16.to_le_bytes());
        b[4] = EXT_DEADLINE;
        b[5] = 8;
        b[6..].copy_from_slice(&micros.to_le_bytes());
        b
    }
}

/// The value of a known entry, which has a fixed length `N`: refused if it
/// has another length, or if the entry came before (`seen`).
fn fixed<const N: usize>(kind: u8, value: &[u8], seen: bool) -> Result<[u8; N], ExtensionError> {
    let bytes = value.try_into().map_err(|_| ExtensionError::BadLength {
        kind,
        len: value.len(),
        expected: N,
    })?;
    if seen {
        return Err(ExtensionError::Duplicate(kind));
    }
    Ok(bytes)
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: Kind,
    /// Flag bits ([`FLAG_NO_RESPONSE`]).
    pub flags: u8,
    /// Failure reason of an `Error` frame.
    pub status: Status,
    /// Provider id of a request (0..=65534).
    pub provider: u16,
    /// RPC id of a request (see [`rpc_id`]).
    pub rpc: u64,
    /// Sequence number matching a response to its request.
    pub seq: u64,
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header.
    #[error("frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// A version this engine does not speak.
    #[error("frame version {0} is not supported (this engine speaks version {VERSION})")]
    Version(u8),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// An unknown status byte.
    #[error("unknown status {0}")]
    Status(u8),
    /// Flag bits this version does not define.
    #[error("unknown flag bits {0:#04x}")]
    Flags(u8),
    /// The reserved field is not zero.
    #[error("reserved header field is {0:#06x}, not zero")]
    Reserved(u16),
}

impl Header {
    /// A header of `kind` with every other field zero.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind,
            flags: 0,
            status: Status::Ok,
            provider: 0,
            rpc: 0,
            seq: 0,
        }
    }

    /// The header's 24 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = self.kind as u8;
        b[2] = self.flags;
        b[3] = self.status as u8;
        b[4..6].copy_from_slice(&self.provider.to_le_bytes());
        b[8..16].copy_from_slice(&self.rpc.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// Decodes the header at the start of `frame`.
    ///
    /// # Errors
    /// [`FrameError`] for a short frame or any field out of range.
    pub fn decode(frame: &[u8]) -> Result<Self, FrameError> {
        let Some(b) = frame.get(..HEADER_LEN) else {
            return Err(FrameError::TooShort(frame.len()));
        };
        if b[0] != VERSION {
            return Err(FrameError::Version(b[0]));
        }
        let kind = Kind::from_u8(b[1]).ok_or(FrameError::Kind(b[1]))?;
        let flags = b[2];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FrameError::Flags(flags));
        }
        let status = Status::from_u8(b[3]).ok_or(FrameError::Status(b[3]))?;
        let reserved = u16::from_le_bytes([b[6], b[7]]);
        if reserved != 0 {
            return Err(FrameError::Reserved(reserved));
        }
        let mut rpc = [0u8; 8];
        rpc.copy_from_slice(&b[8..16]);
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&b[16..24]);
        Ok(Self {
            kind,
            flags,
            status,
            provider: u16::from_le_bytes([b[4], b[5]]),
            rpc: u64::from_le_bytes(rpc),
            seq: u64::from_le_bytes(seq),
        })
    }

    /// Whether the no-response flag is set.
    pub fn no_response(&self) -> bool {
        self.flags & FLAG_NO_RESPONSE != 0
    }

    /// Whether an extension block follows the header.
    pub fn has_extensions(&self) -> bool {
        self.flags & FLAG_EXTENSIONS != 0
    }
}

/// Splits a received message into its header and payload (without copying).
///
/// # Errors
/// See [`Header::decode`].
pub fn split(message: &Bytes) -> Result<(Header, Bytes), FrameError> {
    let header = Header::decode(message)?;
    Ok((header, message.slice(HEADER_LEN..)))
}

/// Builds a one-part message: the header followed by a payload encoded by
/// `encode` into the same buffer (one allocation per message).
pub(crate) fn with_header<E>(
    header: &Header,
    encode: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
) -> Result<Vec<u8>, E> {
    let mut buf = Vec::with_capacity(HEADER_LEN + 64);
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut buf = encode(buf)?;
    buf[..HEADER_LEN].copy_from_slice(&header.encode());
    Ok(buf)
}

/// Overwrites the header of a message built by [`with_header`].
pub(crate) fn set_header(message: &mut [u8], header: &Header) {
    message[..HEADER_LEN].copy_from_slice(&header.encode());
}

/// The stable 64-bit id of an RPC name: FNV-1a over the name's UTF-8 bytes
/// (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
///
/// Both sides compute it from the name, so only the id travels. Two names
/// with the same id cannot be registered in one engine.
///
/// ```
/// assert_eq!(courier::frame::rpc_id(""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(courier::frame::rpc_id("hello"), 0xa430_d846_80aa_bd0b);
/// ```
pub const fn rpc_id(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pins the bytes of a request and a response (docs/wire-format.md).
    #[test]
    fn request_and_response_bytes_are_pinned() {
        let req = Header {
            kind: Kind::Request,
            flags: 0,
            status: Status::Ok,
            provider: 3,
            rpc: rpc_id("hello"),
            seq: 7,
        };
        assert_eq!(
            req.encode(),
            [
                0x01, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00,
                0x00, // version kind flags status provider reserved
                0x0b, 0xbd, 0xaa, 0x80, 0x46, 0xd8, 0x30, 0xa4, // rpc id "hello"
                0x07, 0, 0, 0, 0, 0, 0, 0, // sequence
            ]
        );
        let resp = Header {
            kind: Kind::Response,
            ..req
        };
        let mut msg = resp.encode().to_vec();
        // postcard's encoding of the String "Good bye Matthieu": varint length, bytes.
        msg.extend_from_slice(&postcard::to_allocvec("Good bye Matthieu").unwrap());
        assert_eq!(msg[1], 0x03);
        assert_eq!(msg[24], 17);
        assert_eq!(&msg[25..], b"Good bye Matthieu");
        let (h, payload) = split(&Bytes::from(msg)).unwrap();
        assert_eq!(h, resp);
        assert_eq!(payload.len(), 18);
    }

    /// Pins the bytes of a bulk pull and its refusal (docs/wire-format.md).
    #[test]
    fn bulk_frames_are_pinned() {
        let pull = Header {
            seq: 5,
            ..Header::new(Kind::BulkPull)
        };
        assert_eq!(
            pull.encode(),
            [
                0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version BulkPull, rest zero
                0, 0, 0, 0, 0, 0, 0, 0, // rpc id: unused
                0x05, 0, 0, 0, 0, 0, 0, 0, // sequence
            ]
        );
        assert_eq!(Header::new(Kind::BulkPush).encode()[1], 0x09);
        assert_eq!(Header::new(Kind::BulkGrant).encode()[1], 0x0a);
        assert_eq!(Header::new(Kind::BulkRelease).encode()[1], 0x0b);
        let refused = Header {
            kind: Kind::Error,
            status: Status::BulkRefused,
            ..pull
        };
        let b = refused.encode();
        assert_eq!((b[1], b[3]), (0x04, 0x09));
        assert_eq!(Header::decode(&b), Ok(refused));
        let mut b = pull.encode();
        b[1] = 19;
        assert_eq!(Header::decode(&b), Err(FrameError::Kind(19)));
    }

    #[test]
    fn rejects_bad_headers() {
        let good = Header::new(Kind::Ping).encode();
        assert_eq!(Header::decode(&good[..23]), Err(FrameError::TooShort(23)));
        let mut b = good;
        b[0] = 2;
        assert_eq!(Header::decode(&b), Err(FrameError::Version(2)));
        let mut b = good;
        b[1] = 0;
        assert_eq!(Header::decode(&b), Err(FrameError::Kind(0)));
        let mut b = good;
        b[2] = 0x80;
        assert_eq!(Header::decode(&b), Err(FrameError::Flags(0x80)));
        b[2] = 0x04;
        assert_eq!(Header::decode(&b), Err(FrameError::Flags(0x04)));
        let mut b = good;
        b[3] = 200;
        assert_eq!(Header::decode(&b), Err(FrameError::Status(200)));
        let mut b = good;
        b[7] = 1;
        assert_eq!(Header::decode(&b), Err(FrameError::Reserved(0x100)));
    }

    /// Pins the bytes of a request with a 250 ms deadline
    /// (docs/wire-format.md, "Header extensions").
    #[test]
    fn deadline_extension_bytes_are_pinned() {
        let req = Header {
            kind: Kind::Request,
            flags: FLAG_EXTENSIONS,
            status: Status::Ok,
            provider: 3,
            rpc: rpc_id("hello"),
            seq: 7,
        };
        let mut msg = req.encode().to_vec();
        let ext = Extensions {
            deadline: Some(Duration::from_millis(250)),
            ..Extensions::default()
        };
        ext.encode(&mut msg);
        msg.extend_from_slice(b"args");
        assert_eq!(
            msg,
            [
                0x01, 0x02, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, // flags: extensions
                0x0b, 0xbd, 0xaa, 0x80, 0x46, 0xd8, 0x30, 0xa4, // rpc id "hello"
                0x07, 0, 0, 0, 0, 0, 0, 0, // sequence
                0x01, 0x00, 0x0a, 0x00, // block version 1, reserved, 10 bytes of entries
                0x01, 0x08, // deadline, 8 bytes
                0x90, 0xd0, 0x03, 0, 0, 0, 0, 0, // 250 000 microseconds
                b'a', b'r', b'g', b's',
            ]
        );
        assert_eq!(
            &Extensions::deadline_block(Duration::from_millis(250))[..],
            &msg[24..38]
        );
        let (h, rest) = split(&Bytes::from(msg)).unwrap();
        assert_eq!(h, req);
        assert!(h.has_extensions());
        let (back, payload) = Extensions::decode(&rest).unwrap();
        assert_eq!(back, ext);
        assert_eq!(&payload[..], b"args");
    }

    #[test]
    fn unknown_extensions_are_skipped_unless_critical() {
        // An optional type 0x22 this engine does not know, then a deadline.
        let block = Bytes::from_static(&[
            1, 0, 15, 0, 0x22, 3, 9, 9, 9, 0x01, 8, 1, 0, 0, 0, 0, 0, 0, 0, b'p',
        ]);
        let (ext, payload) = Extensions::decode(&block).unwrap();
        assert_eq!(ext.deadline, Some(Duration::from_micros(1)));
        assert_eq!(&payload[..], b"p");
        // The same around a traceparent: the unknown entry before and after.
        let trace = TraceContext::new_root(true);
        let mut block = vec![1, 0, 38, 0, 0x22, 3, 9, 9, 9, EXT_TRACEPARENT, 26];
        block.extend_from_slice(&trace.to_bytes());
        block.extend_from_slice(&[0x7f, 3, 1, 2, 3, b'p']);
        let (ext, payload) = Extensions::decode(&Bytes::from(block)).unwrap();
        assert_eq!((ext.deadline, ext.trace), (None, Some(trace)));
        assert_eq!(&payload[..], b"p");
        let critical = Bytes::from_static(&[1, 0, 3, 0, 0xa2, 1, 0]);
        assert_eq!(
            Extensions::decode(&critical),
            Err(ExtensionError::UnknownCritical(0xa2))
        );
        let empty = Bytes::from_static(&[1, 0, 0, 0, b'x']);
        assert_eq!(
            Extensions::decode(&empty).unwrap(),
            (Extensions::default(), Bytes::from_static(b"x"))
        );
    }

    #[test]
    fn malformed_extensions_are_refused() {
        let cases: [(&[u8], ExtensionError); 7] = [
            (&[1, 0], ExtensionError::Truncated { needed: 4, have: 2 }),
            (&[2, 0, 0, 0], ExtensionError::Version(2)),
            (&[1, 7, 0, 0], ExtensionError::Reserved(7)),
            (
                &[1, 0, 9, 0, 1],
                ExtensionError::Truncated {
                    needed: 13,
                    have: 5,
                },
            ),
            (
                &[1, 0, 3, 0, 0x22, 5, 0],
                ExtensionError::Truncated { needed: 5, have: 1 },
            ),
            (
                &[1, 0, 3, 0, 0x01, 1, 0],
                ExtensionError::BadLength {
                    kind: 1,
                    len: 1,
                    expected: 8,
                },
            ),
            (
                &[1, 0, 1, 0, 0x22],
                ExtensionError::Truncated { needed: 2, have: 1 },
            ),
        ];
        for (bytes, want) in cases {
            let got = Extensions::decode(&Bytes::copy_from_slice(bytes));
            assert_eq!(got, Err(want.clone()), "{bytes:?}");
            assert!(!want.to_string().is_empty());
        }
        let mut twice = vec![1, 0, 20, 0];
        for _ in 0..2 {
            twice.extend_from_slice(&[1, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(
            Extensions::decode(&Bytes::from(twice)),
            Err(ExtensionError::Duplicate(1))
        );
    }

    /// Pins the bytes of a request carrying a deadline and a traceparent in
    /// one block (docs/wire-format.md, "Header extensions").
    #[test]
    fn deadline_and_traceparent_bytes_are_pinned() {
        let req = Header {
            kind: Kind::Request,
            flags: FLAG_EXTENSIONS,
            status: Status::Ok,
            provider: 3,
            rpc: rpc_id("hello"),
            seq: 7,
        };
        let trace =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let ext = Extensions {
            deadline: Some(Duration::from_millis(250)),
            trace: Some(trace),
            ..Extensions::default()
        };
        let mut msg = req.encode().to_vec();
        ext.encode(&mut msg);
        msg.extend_from_slice(b"args");
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x01, 0x02, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, // flags: extensions
            0x0b, 0xbd, 0xaa, 0x80, 0x46, 0xd8, 0x30, 0xa4, // rpc id "hello"
            0x07, 0, 0, 0, 0, 0, 0, 0, // sequence
            0x01, 0x00, 0x26, 0x00, // block version 1, reserved, 38 bytes of entries
            0x01, 0x08, // deadline, 8 bytes
            0x90, 0xd0, 0x03, 0, 0, 0, 0, 0, // 250 000 microseconds
            0x02, 0x1a, // traceparent, 26 bytes
            0x00, // version 0
            0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, // trace id
            0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
            0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7, // parent id
            0x01, // flags: sampled
            b'a', b'r', b'g', b's',
        ];
        assert_eq!(msg, want);
        assert_eq!(ext.block().len(), DEADLINE_BLOCK_LEN + 2 + TRACEPARENT_LEN);
        let (h, rest) = split(&Bytes::from(msg)).unwrap();
        assert_eq!(h, req);
        let (back, payload) = Extensions::decode(&rest).unwrap();
        assert_eq!(back, ext);
        assert_eq!(&payload[..], b"args");

        // A traceparent alone: 4 + 28 bytes.
        let alone = Extensions {
            trace: Some(trace),
            ..Extensions::default()
        };
        let block = alone.block();
        assert_eq!(&block[..6], &[0x01, 0x00, 0x1c, 0x00, 0x02, 0x1a]);
        assert_eq!(&block[6..], &trace.to_bytes());
        let (back, rest) = Extensions::decode(&Bytes::copy_from_slice(&block)).unwrap();
        assert_eq!((back, rest.len()), (alone, 0));
        // A deadline alone: the same bytes as the deadline's own block.
        let deadline = Extensions {
            deadline: Some(Duration::from_millis(250)),
            ..Extensions::default()
        };
        assert_eq!(
            &deadline.block()[..],
            &Extensions::deadline_block(Duration::from_millis(250))[..]
        );
        assert!(Extensions::default().block().is_empty());
    }

    #[test]
    fn overflow_extension_bytes_are_pinned() {
        // A hello request at provider 3, sequence 7, with a 250 ms budget,
        // whose 3 MiB of arguments wait in region 5 of the caller.
        let req = Header {
            kind: Kind::Request,
            flags: FLAG_EXTENSIONS,
            status: Status::Ok,
            provider: 3,
            rpc: rpc_id("hello"),
            seq: 7,
        };
        let overflow = Overflow {
            region: 5,
            key: 0x0f0e_0d0c_0b0a_0908_0706_0504_0302_0100,
            len: 3 << 20,
        };
        let ext = Extensions {
            deadline: Some(Duration::from_millis(250)),
            overflow: Some(overflow),
            ..Extensions::default()
        };
        let mut msg = req.encode().to_vec();
        ext.encode(&mut msg);
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x01, 0x02, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, // flags: extensions
            0x0b, 0xbd, 0xaa, 0x80, 0x46, 0xd8, 0x30, 0xa4, // rpc id "hello"
            0x07, 0, 0, 0, 0, 0, 0, 0, // sequence
            0x01, 0x00, 0x2c, 0x00, // block version 1, reserved, 44 bytes of entries
            0x01, 0x08, // deadline, 8 bytes
            0x90, 0xd0, 0x03, 0, 0, 0, 0, 0, // 250 000 microseconds
            0x82, 0x20, // overflow (critical), 32 bytes
            0x05, 0, 0, 0, 0, 0, 0, 0, // region 5
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, // key
            0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
            0x00, 0x00, 0x30, 0, 0, 0, 0, 0, // length: 3 MiB
            // no payload
        ];
        assert_eq!(msg, want);
        let (h, rest) = split(&Bytes::from(msg)).unwrap();
        assert_eq!(h, req);
        let (back, payload) = Extensions::decode(&rest).unwrap();
        assert_eq!(back, ext);
        assert!(payload.is_empty());
        assert_eq!(Overflow::from_bytes(&overflow.to_bytes()), overflow);
        // Every entry this engine writes fits the largest block.
        let all = Extensions {
            trace: Some(TraceContext::new([7; 16], [9; 8], 1).unwrap()),
            stream: Some(1),
            ..ext
        };
        assert_eq!(all.block().len(), MAX_BLOCK_LEN);

        // The caller's release of a pulled response: its sequence is the
        // request's; and a refusal of a payload over the limit.
        let release = Header {
            seq: 7,
            ..Header::new(Kind::OverflowRelease)
        };
        assert_eq!(
            release.encode(),
            [
                0x01, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // version, kind 18
                0, 0, 0, 0, 0, 0, 0, 0, // rpc id: unused
                0x07, 0, 0, 0, 0, 0, 0, 0, // the request's sequence
            ]
        );
        let too_large = Header {
            kind: Kind::Error,
            status: Status::TooLarge,
            ..req
        };
        let b = too_large.encode();
        assert_eq!((b[1], b[2], b[3]), (0x04, 0x02, 0x0d));
        // An overflow entry of another length is refused, and so is a
        // second one.
        let short = Bytes::from_static(&[1, 0, 3, 0, EXT_OVERFLOW, 1, 0]);
        assert_eq!(
            Extensions::decode(&short).unwrap_err(),
            ExtensionError::BadLength {
                kind: EXT_OVERFLOW,
                len: 1,
                expected: OVERFLOW_LEN
            }
        );
        let mut twice = vec![1, 0, 68, 0];
        for _ in 0..2 {
            twice.extend_from_slice(&[EXT_OVERFLOW, 32]);
            twice.extend_from_slice(&overflow.to_bytes());
        }
        assert_eq!(
            Extensions::decode(&Bytes::from(twice)).unwrap_err(),
            ExtensionError::Duplicate(EXT_OVERFLOW)
        );
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let good = TraceContext::new([7; 16], [9; 8], 1).unwrap().to_bytes();
        let entry = |value: &[u8]| {
            let mut block = vec![1, 0, (2 + value.len()) as u8, 0, EXT_TRACEPARENT];
            block.push(value.len() as u8);
            block.extend_from_slice(value);
            Bytes::from(block)
        };
        let mut zero_trace = good;
        zero_trace[1..17].fill(0);
        let mut zero_parent = good;
        zero_parent[17..25].fill(0);
        let mut version_ff = good;
        version_ff[0] = 0xff;
        let cases = [
            (
                entry(&good[..25]),
                ExtensionError::BadLength {
                    kind: 2,
                    len: 25,
                    expected: 26,
                },
                "extension 0x02 has a 25-byte value, expected 26",
            ),
            (
                entry(&zero_trace),
                ExtensionError::Traceparent(TraceContextError::ZeroTraceId),
                "traceparent) is invalid: the traceparent's trace id is all zeros",
            ),
            (
                entry(&zero_parent),
                ExtensionError::Traceparent(TraceContextError::ZeroSpanId),
                "parent id is all zeros",
            ),
            (
                entry(&version_ff),
                ExtensionError::Traceparent(TraceContextError::Version(0xff)),
                "version 0xff is invalid",
            ),
        ];
        for (block, want, says) in cases {
            let got = Extensions::decode(&block);
            assert_eq!(got, Err(want.clone()));
            assert!(want.to_string().contains(says), "{want}");
        }
        let mut twice = vec![1, 0, 56, 0];
        for _ in 0..2 {
            twice.extend_from_slice(&[EXT_TRACEPARENT, 26]);
            twice.extend_from_slice(&good);
        }
        assert_eq!(
            Extensions::decode(&Bytes::from(twice)),
            Err(ExtensionError::Duplicate(2))
        );
        // A later version (not 0xff) is read as version 0.
        let mut v1 = good;
        v1[0] = 1;
        let (ext, _) = Extensions::decode(&entry(&v1)).unwrap();
        assert_eq!(ext.trace.map(|t| t.to_bytes()), Some(good));
    }

    #[test]
    fn stream_extension_bytes_are_pinned() {
        // A stream request for `hello` at provider 3, sequence 7, that
        // grants 4 MiB for its response stream, payload `args`.
        let req = Header {
            kind: Kind::Request,
            flags: FLAG_EXTENSIONS,
            status: Status::Ok,
            provider: 3,
            rpc: rpc_id("hello"),
            seq: 7,
        };
        let ext = Extensions {
            stream: Some(4 << 20),
            ..Extensions::default()
        };
        let mut msg = req.encode().to_vec();
        ext.encode(&mut msg);
        msg.extend_from_slice(b"args");
        assert_eq!(
            &msg[HEADER_LEN..],
            &[
                0x01, 0x00, 0x0a, 0x00, // block v1, 10 bytes of entries
                0x81, 0x08, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, // stream: 4 MiB
                b'a', b'r', b'g', b's',
            ]
        );
        let (h, payload) = split(&Bytes::from(msg)).unwrap();
        let (back, args) = Extensions::decode(&payload).unwrap();
        assert_eq!(h, req);
        assert_eq!(back, ext);
        assert_eq!(&args[..], b"args");
        // An item of that stream, and a credit frame (8 bytes, u64).
        let item = Header {
            kind: Kind::ResponseItem,
            ..Header::new(Kind::Request)
        };
        assert_eq!(item.encode()[1], 16);
        assert_eq!(Kind::from_u8(13), Some(Kind::RequestItem));
        assert_eq!(Kind::from_u8(14), Some(Kind::RequestEnd));
        assert_eq!(Kind::from_u8(15), Some(Kind::RequestCredit));
        assert_eq!(Kind::from_u8(17), Some(Kind::ResponseCredit));
        assert_eq!(Status::from_u8(12), Some(Status::StreamAborted));
    }

    #[test]
    fn absurd_deadlines_are_capped() {
        let mut block = vec![1, 0, 10, 0, 1, 8];
        block.extend_from_slice(&u64::MAX.to_le_bytes());
        let (ext, _) = Extensions::decode(&Bytes::from(block)).unwrap();
        assert_eq!(ext.deadline, Some(MAX_BUDGET));
        let sent = Extensions::deadline_block(Duration::MAX);
        let (ext, _) = Extensions::decode(&Bytes::copy_from_slice(&sent)).unwrap();
        assert_eq!(ext.deadline, Some(MAX_BUDGET));
    }

    #[test]
    fn a_cancel_frame_is_kind_12() {
        let cancel = Header {
            seq: 9,
            ..Header::new(Kind::Cancel)
        };
        let b = cancel.encode();
        assert_eq!((b[1], b[16]), (12, 9));
        assert_eq!(Header::decode(&b), Ok(cancel));
        let busy = Header {
            status: Status::Busy,
            ..Header::new(Kind::Error)
        };
        assert_eq!(busy.encode()[3], 10);
    }

    fn any_kind() -> impl Strategy<Value = Kind> {
        (1u8..=18).prop_map(|k| Kind::from_u8(k).unwrap())
    }

    fn any_status() -> impl Strategy<Value = Status> {
        (0u8..=13).prop_map(|s| Status::from_u8(s).unwrap())
    }

    proptest! {
        #[test]
        fn header_round_trips(kind in any_kind(), status in any_status(), no_resp: bool,
                              provider: u16, rpc: u64, seq: u64,
                              payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = Header { kind, flags: if no_resp { FLAG_NO_RESPONSE } else { 0 }, status, provider, rpc, seq };
            let mut msg = h.encode().to_vec();
            msg.extend_from_slice(&payload);
            let (back, p) = split(&Bytes::from(msg)).unwrap();
            prop_assert_eq!(back, h);
            prop_assert_eq!(&p[..], &payload[..]);
            prop_assert_eq!(back.no_response(), no_resp);
        }

        #[test]
        fn extension_blocks_round_trip_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..48), micros: Option<u64>,
                                                 trace in proptest::option::of((any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>()))) {
            // Arbitrary bytes: refused or decoded, never a panic.
            let _ = Extensions::decode(&Bytes::from(bytes.clone()));
            let trace = trace.and_then(|(t, s, f)| TraceContext::new(t, s, f).ok());
            let ext = Extensions { deadline: micros.map(Duration::from_micros), trace, ..Extensions::default() };
            let mut block = Vec::new();
            ext.encode(&mut block);
            if ext.is_empty() {
                prop_assert!(block.is_empty());
            } else {
                block.extend_from_slice(&bytes);
                let (back, rest) = Extensions::decode(&Bytes::from(block)).unwrap();
                prop_assert_eq!(back.deadline, ext.deadline.map(|d| d.min(MAX_BUDGET)));
                prop_assert_eq!(back.trace, ext.trace);
                prop_assert_eq!(&rest[..], &bytes[..]);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = Header::decode(&bytes) {
                // Whatever decodes re-encodes to the same header bytes.
                prop_assert_eq!(&h.encode()[..], &bytes[..HEADER_LEN]);
            }
        }
    }
}
