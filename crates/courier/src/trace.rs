//! Trace context across processes: the W3C `traceparent` of a call travels
//! with its request, so that the handler's work is part of its caller's
//! trace.
//!
//! A [`TraceContext`] is a trace id, the id of the span it was made in,
//! and the trace flags: what the W3C Trace Context specification puts in
//! a `traceparent` header (`00-<trace id>-<parent id>-<flags>`). A request
//! carries one in its header's extension block (entry `0x02`, see
//! [`crate::frame`] and `docs/wire-format.md` §2.1), only if the caller has
//! one. Where it comes from, the first that applies:
//!
//! 1. the call's own: [`RawCallable::trace`](crate::RawCallable::trace),
//!    [`Callable::trace`](crate::Callable::trace);
//! 2. the scope the call is made in: [`in_context`] (a future and what it
//!    awaits) or [`with_context`] (blocking code, and the calls of
//!    [`crate::blocking`] made in it);
//! 3. the request whose handler makes the call: its calls carry the same
//!    trace id, and as parent the span of the handler itself
//!    ([`Handle::trace_context`](crate::Handle::trace_context)), which is in
//!    turn the child of the caller's span
//!    ([`Handle::parent_trace`](crate::Handle::parent_trace));
//! 4. with the `otel` cargo feature, the OpenTelemetry context of the
//!    current `tracing` span (tracing-opentelemetry); on the server side the
//!    handler's `rpc.handle` span then has the received context as its
//!    parent, so that exported spans link up across processes;
//! 5. else nothing is sent: a call without a context costs no random
//!    number, no clock read and no byte on the wire.
//!
//! ```
//! use courier::{Engine, Handle, TraceContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Engine::new("mem").await?;
//! server.register("whoami", |h: Handle, (): ()| async move {
//!     // The caller's span, as received, and this handler's own.
//!     let parent = h.parent_trace().map(|c| c.traceparent());
//!     let own = h.trace_context().map(|c| c.traceparent());
//!     h.respond(&(parent, own)).await
//! })?;
//! let client = Engine::new("mem").await?;
//! let address = client.lookup(&server.address().to_string()).await?;
//! let whoami = client.remote::<(), (Option<String>, Option<String>)>("whoami");
//!
//! let ctx = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
//! let (parent, own) = whoami.on(&address).trace(ctx).call(&()).await?;
//! assert_eq!(parent.as_deref(), Some(ctx.traceparent().as_str()));
//! // Same trace, a new span (the handler's), still sampled.
//! let own: TraceContext = own.unwrap_or_default().parse()?;
//! assert_eq!(own.trace_id(), ctx.trace_id());
//! assert_ne!(own.span_id(), ctx.span_id());
//! assert!(own.sampled());
//!
//! // No context: nothing travels.
//! assert_eq!(whoami.on(&address).call(&()).await?, (None, None));
//! # Ok(())
//! # }
//! ```

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::str::FromStr;

/// Length of a traceparent's binary form, as it travels in a request's
/// extension block: version (1 byte), trace id (16), parent id (8),
/// flags (1).
pub const TRACEPARENT_LEN: usize = 26;

/// Length of a version-00 traceparent string:
/// `00-` + 32 hex digits + `-` + 16 hex digits + `-` + 2 hex digits.
pub const TRACEPARENT_STR_LEN: usize = 55;

/// The trace-flags bit "sampled": the caller may record this trace.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A W3C trace context: which trace a call belongs to, and which span
/// (the parent of the callee's) it was made in.
///
/// Both ids are never all zeros (the specification's invalid value): a
/// context is made by [`TraceContext::new`], [`TraceContext::parse`],
/// [`TraceContext::new_root`] or [`TraceContext::child`], which hold to
/// that, so that any context can be sent.
///
/// ```
/// use courier::{TraceContext, TraceContextError};
///
/// // From an incoming HTTP request's `traceparent` header, say.
/// let caller = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// assert!(caller.sampled());
/// assert_eq!(caller.span_id(), [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
///
/// // A span of ours in the same trace, to send on.
/// let ours = caller.child();
/// assert_eq!(ours.trace_id(), caller.trace_id());
/// assert!(ours.traceparent().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
///
/// // What the specification forbids is refused, saying why.
/// let err = TraceContext::parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01");
/// assert_eq!(err, Err(TraceContextError::ZeroTraceId));
/// let err = TraceContext::parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01");
/// assert_eq!(
///     err.unwrap_err().to_string(),
///     "the traceparent's trace id is not lowercase hex: character 4 is 'B'"
/// );
/// # Ok::<(), TraceContextError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

/// Why a traceparent (a string, or the bytes of a request's extension) is
/// not a valid trace context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceContextError {
    /// Not the length of a traceparent of its version.
    #[error(
        "a traceparent is {TRACEPARENT_STR_LEN} characters ('00-' + 32 hex digits + '-' + 16 + '-' + 2), not {0}"
    )]
    Length(usize),
    /// A field separator is missing.
    #[error("a traceparent has '-' after its {after}: character {at} is {found:?}")]
    Separator {
        /// The field before the separator.
        after: &'static str,
        /// Its position (from 0).
        at: usize,
        /// What is there instead.
        found: char,
    },
    /// A field is not lowercase hexadecimal.
    #[error("the traceparent's {field} is not lowercase hex: character {at} is {found:?}")]
    NotHex {
        /// The field (`version`, `trace id`, `parent id`, `flags`).
        field: &'static str,
        /// The position of the first bad character (from 0).
        at: usize,
        /// That character.
        found: char,
    },
    /// Version `ff`, which the specification forbids.
    #[error("traceparent version {0:#04x} is invalid")]
    Version(u8),
    /// The trace id is all zeros.
    #[error("the traceparent's trace id is all zeros (invalid)")]
    ZeroTraceId,
    /// The parent (span) id is all zeros.
    #[error("the traceparent's parent id is all zeros (invalid)")]
    ZeroSpanId,
}

impl TraceContext {
    /// A context from its parts.
    ///
    /// # Errors
    /// [`TraceContextError::ZeroTraceId`], [`TraceContextError::ZeroSpanId`].
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Result<Self, TraceContextError> {
        if trace_id == [0; 16] {
            return Err(TraceContextError::ZeroTraceId);
        }
        if span_id == [0; 8] {
            return Err(TraceContextError::ZeroSpanId);
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The root of a new trace: a random trace id and span id, sampled or
    /// not. For a program that starts traces without a tracing system.
    pub fn new_root(sampled: bool) -> Self {
        let [a, b] = [random_u64(), random_u64()];
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&a.to_be_bytes());
        trace_id[8..].copy_from_slice(&b.to_be_bytes());
        Self {
            trace_id,
            span_id: random_u64().to_be_bytes(),
            flags: if sampled { FLAG_SAMPLED } else { 0 },
        }
    }

    /// A child span of this one: the same trace and flags, a new random
    /// span id.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            span_id: random_u64().to_be_bytes(),
            ..*self
        }
    }

    /// The 16-byte trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The 8-byte id of the span this context was made in (the W3C
    /// `parent-id` of the calls made with it).
    pub fn span_id(&self) -> [u8; 8] {
        self.span_id
    }

    /// The trace flags.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the caller may record this trace (flag bit 0).
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The trace id in lowercase hex (32 digits), for logs.
    pub fn trace_id_hex(&self) -> impl fmt::Display + '_ {
        Hex(&self.trace_id)
    }

    /// The span id in lowercase hex (16 digits), for logs.
    pub fn span_id_hex(&self) -> impl fmt::Display + '_ {
        Hex(&self.span_id)
    }

    /// The W3C `traceparent` string, version 00:
    /// `00-<32 hex>-<16 hex>-<2 hex>`.
    ///
    /// ```
    /// let ctx = courier::TraceContext::new([0xab; 16], [0x01; 8], 1)?;
    /// assert_eq!(
    ///     ctx.traceparent(),
    ///     "00-abababababababababababababababab-0101010101010101-01"
    /// );
    /// # Ok::<(), courier::TraceContextError>(())
    /// ```
    pub fn traceparent(&self) -> String {
        self.to_string()
    }

    /// Parses a W3C `traceparent`: lowercase hex fields separated by `-`,
    /// ids not all zeros, version not `ff`. A version above 00 is read as
    /// 00 is (its first four fields; more may follow after a `-`), as the
    /// specification asks.
    ///
    /// # Errors
    /// [`TraceContextError`], naming what is wrong and where.
    pub fn parse(s: &str) -> Result<Self, TraceContextError> {
        let b = s.as_bytes();
        if b.len() < TRACEPARENT_STR_LEN {
            return Err(TraceContextError::Length(b.len()));
        }
        let version = hex_field::<1>(b, 0, "version")?[0];
        if version == 0xff {
            return Err(TraceContextError::Version(version));
        }
        // Version 00 is exactly 55 characters; a later one may go on,
        // after a separator.
        if (version == 0 && b.len() != TRACEPARENT_STR_LEN)
            || (b.len() > TRACEPARENT_STR_LEN && b[TRACEPARENT_STR_LEN] != b'-')
        {
            return Err(TraceContextError::Length(b.len()));
        }
        separator(b, 2, "version")?;
        let trace_id = hex_field::<16>(b, 3, "trace id")?;
        separator(b, 35, "trace id")?;
        let span_id = hex_field::<8>(b, 36, "parent id")?;
        separator(b, 52, "parent id")?;
        let flags = hex_field::<1>(b, 53, "flags")?[0];
        Self::new(trace_id, span_id, flags)
    }

    /// The 26 bytes that travel in a request's extension block: version
    /// 0, trace id, parent (span) id, flags.
    pub fn to_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut b = [0u8; TRACEPARENT_LEN];
        b[1..17].copy_from_slice(&self.trace_id);
        b[17..25].copy_from_slice(&self.span_id);
        b[25] = self.flags;
        b
    }

    /// Reads the 26 bytes of [`TraceContext::to_bytes`]. A version other
    /// than 0 (and not `0xff`) is read as version 0 is.
    ///
    /// # Errors
    /// [`TraceContextError::Version`] for `0xff`, and the errors of
    /// [`TraceContext::new`].
    pub fn from_bytes(b: &[u8; TRACEPARENT_LEN]) -> Result<Self, TraceContextError> {
        if b[0] == 0xff {
            return Err(TraceContextError::Version(b[0]));
        }
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&b[1..17]);
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&b[17..25]);
        Self::new(trace_id, span_id, b[25])
    }
}

/// The `N` bytes of a lowercase hex field of `2 * N` characters at `at`.
fn hex_field<const N: usize>(
    b: &[u8],
    at: usize,
    field: &'static str,
) -> Result<[u8; N], TraceContextError> {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let digit = |k: usize| {
            let c = b[k];
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(TraceContextError::NotHex {
                    field,
                    at: k,
                    found: shown(c),
                }),
            }
        };
        let k = at + 2 * i;
        *byte = (digit(k)? << 4) | digit(k + 1)?;
    }
    Ok(out)
}

fn separator(b: &[u8], at: usize, after: &'static str) -> Result<(), TraceContextError> {
    if b[at] == b'-' {
        Ok(())
    } else {
        Err(TraceContextError::Separator {
            after,
            at,
            found: shown(b[at]),
        })
    }
}

/// A byte of a string as a character, for an error message (a byte of a
/// multi-byte character shows as the replacement character).
fn shown(c: u8) -> char {
    if c.is_ascii() {
        char::from(c)
    } else {
        char::REPLACEMENT_CHARACTER
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            Hex(&self.trace_id),
            Hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TraceContext")
            .field(&format_args!("{self}"))
            .finish()
    }
}

impl FromStr for TraceContext {
    type Err = TraceContextError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Bytes in lowercase hex.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

// Random ids: an xorshift64* generator per thread, seeded from the
// standard library's per-process random hash keys. Only made when a
// context is (a call without one never comes here).
thread_local! {
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

/// A random non-zero u64.
fn random_u64() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        if x == 0 {
            // `RandomState::new` is keyed at random per thread, and each
            // one made differs: hashing anything gives a fresh seed.
            x = std::collections::hash_map::RandomState::new().hash_one(0x0063_6f75_7269_6572_u64)
                | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        // Non-zero: x is, and the multiplier is odd.
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

// The scopes calls find their context in (see the module docs).
thread_local! {
    /// The context of the future or handler being polled on this thread
    /// ([`in_context`], a handler's polls).
    static POLLED: Cell<Option<TraceContext>> = const { Cell::new(None) };
    /// The context of the blocking code running on this thread
    /// ([`with_context`], a blocking handler).
    static HERE: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// The context an async call made here would carry, if it sets none of
/// its own: that of the [`in_context`] future or of the handler being
/// polled; with the `otel` feature, else that of the current `tracing`
/// span.
pub fn current() -> Option<TraceContext> {
    let polled = POLLED.with(Cell::get);
    #[cfg(feature = "otel")]
    if polled.is_none() {
        return otel::current_span();
    }
    polled
}

/// The context a blocking call made here would carry: as [`current`], and
/// that of [`with_context`] (or the blocking handler running here) before
/// a `tracing` span's.
pub(crate) fn here() -> Option<TraceContext> {
    let found = POLLED.with(Cell::get).or_else(|| HERE.with(Cell::get));
    #[cfg(feature = "otel")]
    if found.is_none() {
        return otel::current_span();
    }
    found
}

/// Polls `fut` with `ctx` as its trace context: the calls it makes (and
/// the futures it awaits make) carry it, unless they set their own. Only
/// `fut` is in the scope: other futures polled by the same thread are not,
/// wherever `fut` is polled (a task it was spawned as moves between
/// threads with it). A handler's own context is replaced inside.
pub async fn in_context<F: Future>(ctx: TraceContext, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| enter(Some(ctx), || fut.as_mut().poll(cx))).await
}

/// Runs `f` with `ctx` as the trace context of blocking code: the calls of
/// [`crate::blocking`] made in it carry `ctx`, unless they set their own.
///
/// A future polled inside `f` (in a runtime's `block_on`) does not see
/// `ctx`: that thread may poll other tasks there too, which must not
/// inherit it. Give a future its context with [`in_context`].
pub fn with_context<T>(ctx: TraceContext, f: impl FnOnce() -> T) -> T {
    serve_here(Some(ctx), f)
}

/// Runs `f` with `ctx` (or none) as the context of the blocking code on
/// this thread; the one before is back afterwards, even if `f` unwinds.
pub(crate) fn serve_here<T>(ctx: Option<TraceContext>, f: impl FnOnce() -> T) -> T {
    if ctx.is_none() && HERE.with(Cell::get).is_none() {
        return f();
    }
    let _back = Restore {
        slot: &HERE,
        previous: HERE.with(|h| h.replace(ctx)),
    };
    f()
}

/// Runs `f` (one poll of a handler's or a scoped future) with `ctx` (or
/// none) as the context of what is polled; the one before is back
/// afterwards, even if `f` unwinds. Nothing to do, the common case, costs
/// one thread-local read.
pub(crate) fn enter<T>(ctx: Option<TraceContext>, f: impl FnOnce() -> T) -> T {
    if ctx.is_none() && POLLED.with(Cell::get).is_none() {
        return f();
    }
    let _back = Restore {
        slot: &POLLED,
        previous: POLLED.with(|p| p.replace(ctx)),
    };
    f()
}

/// `fut` in the scope of `ctx`, if there is one.
pub(crate) async fn scoped<F: Future>(ctx: Option<TraceContext>, fut: F) -> F::Output {
    match ctx {
        Some(ctx) => in_context(ctx, fut).await,
        None => fut.await,
    }
}

/// Puts a thread's previous context back.
struct Restore {
    slot: &'static std::thread::LocalKey<Cell<Option<TraceContext>>>,
    previous: Option<TraceContext>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.previous.take();
        self.slot.with(|s| s.set(previous));
    }
}

/// The handler's own span, for a request that came with `parent`: records
/// the ids on its `rpc.handle` span, and returns its context — the same
/// trace, a new span id (with the `otel` feature and its layer installed,
/// that of the exported span, whose parent is `parent`).
pub(crate) fn server_span(span: &tracing::Span, parent: &TraceContext) -> TraceContext {
    #[cfg(feature = "otel")]
    let own = otel::server_span(span, parent).unwrap_or_else(|| parent.child());
    #[cfg(not(feature = "otel"))]
    let own = parent.child();
    if !span.is_disabled() {
        span.record("trace_id", tracing::field::display(own.trace_id_hex()));
        span.record("span_id", tracing::field::display(own.span_id_hex()));
        span.record("parent_id", tracing::field::display(parent.span_id_hex()));
    }
    own
}

/// The `otel` feature: trace contexts to and from OpenTelemetry's, through
/// the `tracing` spans that tracing-opentelemetry exports.
#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// The context of an OpenTelemetry span, if it is a valid one.
    fn from_otel(sc: &SpanContext) -> Option<TraceContext> {
        if !sc.is_valid() {
            return None;
        }
        TraceContext::new(
            sc.trace_id().to_bytes(),
            sc.span_id().to_bytes(),
            sc.trace_flags().to_u8(),
        )
        .ok()
    }

    /// The OpenTelemetry context of the current `tracing` span.
    pub(super) fn current_span() -> Option<TraceContext> {
        let cx = tracing::Span::current().context();
        from_otel(cx.span().span_context())
    }

    /// Makes `parent` (received from another process) the parent of the
    /// handler's span, and returns that span's own context, if the span is
    /// exported.
    pub(super) fn server_span(span: &tracing::Span, parent: &TraceContext) -> Option<TraceContext> {
        let remote = SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            TraceState::default(),
        );
        span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
            .ok()?;
        from_otel(span.context().span().span_context())
            .filter(|own| own.trace_id == parent.trace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_and_format_round_trip() {
        let ctx = TraceContext::parse(W3C_EXAMPLE).unwrap();
        assert_eq!(
            ctx.trace_id(),
            [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ]
        );
        assert_eq!(
            ctx.span_id(),
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(ctx.flags(), 1);
        assert!(ctx.sampled());
        assert_eq!(ctx.traceparent(), W3C_EXAMPLE);
        assert_eq!(W3C_EXAMPLE.parse::<TraceContext>(), Ok(ctx));
        assert_eq!(format!("{ctx:?}"), format!("TraceContext({W3C_EXAMPLE})"));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = TraceContext::parse(unsampled).unwrap();
        assert!(!ctx.sampled());
        assert_eq!(ctx.to_string(), unsampled);
        // Bytes round trip too.
        assert_eq!(TraceContext::from_bytes(&ctx.to_bytes()), Ok(ctx));
    }

    #[test]
    fn later_versions_are_read_as_00() {
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::parse(v1).unwrap();
        assert_eq!(ctx.traceparent(), W3C_EXAMPLE);
        let longer = format!("{v1}-whatever-comes-next");
        assert_eq!(TraceContext::parse(&longer), Ok(ctx));
        let mut bytes = ctx.to_bytes();
        bytes[0] = 7;
        assert_eq!(TraceContext::from_bytes(&bytes), Ok(ctx));
    }

    #[test]
    fn invalid_traceparents_are_refused_with_what_is_wrong() {
        use TraceContextError as E;
        let cases: &[(&str, E)] = &[
            ("", E::Length(0)),
            (&W3C_EXAMPLE[..54], E::Length(54)),
            (&format!("{W3C_EXAMPLE}-"), E::Length(56)),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                E::Length(56),
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                E::Version(0xff),
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                E::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                E::ZeroSpanId,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                E::NotHex {
                    field: "trace id",
                    at: 4,
                    found: 'B',
                },
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                E::NotHex {
                    field: "version",
                    at: 1,
                    found: 'g',
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                E::NotHex {
                    field: "flags",
                    at: 54,
                    found: 'x',
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9é2b-01",
                E::NotHex {
                    field: "parent id",
                    at: 48,
                    found: char::REPLACEMENT_CHARACTER,
                },
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                E::Separator {
                    after: "version",
                    at: 2,
                    found: '_',
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7-01",
                E::Separator {
                    after: "trace id",
                    at: 35,
                    found: ' ',
                },
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7:01",
                E::Separator {
                    after: "parent id",
                    at: 52,
                    found: ':',
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(TraceContext::parse(s).as_ref(), Err(want), "{s:?}");
        }
        // The messages name the fault.
        let says = |s: &str| TraceContext::parse(s).unwrap_err().to_string();
        assert!(
            says("00-00000000000000000000000000000000-00f067aa0ba902b7-01")
                .contains("trace id is all zeros")
        );
        assert!(
            says("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01")
                .contains("parent id is all zeros")
        );
        assert!(
            says("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .contains("version 0xff is invalid")
        );
        assert!(
            says("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01")
                .contains("trace id is not lowercase hex: character 4 is 'B'")
        );
        assert!(says("short").contains("is 55 characters"));
    }

    #[test]
    fn bytes_are_checked_as_strings_are() {
        let ctx = TraceContext::parse(W3C_EXAMPLE).unwrap();
        let b = ctx.to_bytes();
        assert_eq!(b[0], 0);
        assert_eq!(&b[1..17], &ctx.trace_id());
        assert_eq!(&b[17..25], &ctx.span_id());
        assert_eq!(b[25], 1);
        let mut ff = b;
        ff[0] = 0xff;
        assert_eq!(
            TraceContext::from_bytes(&ff),
            Err(TraceContextError::Version(0xff))
        );
        let mut zero = b;
        zero[1..17].fill(0);
        assert_eq!(
            TraceContext::from_bytes(&zero),
            Err(TraceContextError::ZeroTraceId)
        );
        let mut zero = b;
        zero[17..25].fill(0);
        assert_eq!(
            TraceContext::from_bytes(&zero),
            Err(TraceContextError::ZeroSpanId)
        );
        assert_eq!(
            TraceContext::new([0; 16], [1; 8], 0),
            Err(TraceContextError::ZeroTraceId)
        );
    }

    #[test]
    fn children_keep_the_trace_and_get_new_span_ids() {
        let root = TraceContext::new_root(true);
        assert!(root.sampled());
        assert!(!TraceContext::new_root(false).sampled());
        let a = root.child();
        let b = root.child();
        assert_eq!((a.trace_id(), a.flags()), (root.trace_id(), root.flags()));
        assert_ne!(a.span_id(), root.span_id());
        assert_ne!(a.span_id(), b.span_id());
        assert_ne!(a.span_id(), [0; 8]);
        assert_ne!(TraceContext::new_root(true).trace_id(), root.trace_id());
        // Children are valid contexts: they survive the wire.
        assert_eq!(TraceContext::from_bytes(&a.to_bytes()), Ok(a));
        // Other threads draw other ids.
        let there = std::thread::spawn(move || root.child()).join().unwrap();
        assert_ne!(there.span_id(), a.span_id());
        assert_ne!(there.span_id(), b.span_id());
    }

    #[test]
    fn scopes_nest_and_end() {
        let a = TraceContext::new_root(true);
        let b = a.child();
        assert_eq!(current(), None);
        assert_eq!(here(), None);
        enter(Some(a), || {
            assert_eq!(current(), Some(a));
            enter(Some(b), || assert_eq!(current(), Some(b)));
            // A handler without a context hides the scope around it.
            enter(None, || assert_eq!(current(), None));
            assert_eq!(current(), Some(a));
        });
        assert_eq!(current(), None);
        with_context(a, || {
            // Blocking code sees it; an async call polled here does not.
            assert_eq!(here(), Some(a));
            assert_eq!(current(), None);
            serve_here(None, || assert_eq!(here(), None));
            // A polled scope comes first.
            enter(Some(b), || assert_eq!(here(), Some(b)));
        });
        assert_eq!(here(), None);
        // Unwinding puts the previous context back.
        let caught = std::panic::catch_unwind(|| with_context(a, || panic!("inside")));
        assert!(caught.is_err());
        assert_eq!(here(), None);
    }

    #[tokio::test]
    async fn in_context_holds_for_its_future_only() {
        let ctx = TraceContext::new_root(false);
        let seen = in_context(ctx, async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(seen, Some(ctx));
        assert_eq!(current(), None);
        assert_eq!(scoped(None, async { current() }).await, None);
        assert_eq!(scoped(Some(ctx), async { current() }).await, Some(ctx));
    }
}
