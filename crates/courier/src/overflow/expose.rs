//! The sending side of a payload by the bulk path: whether a message is
//! over its connection's largest, exposing the payload read-only (no
//! copy), holding a response's region until its caller releases it, and
//! the bytes of a `TooLarge` refusal. A leaf of the call path: `call.rs`
//! (arguments) and `handler.rs` (responses) call it; the receiving side,
//! which pulls, is its parent module (`overflow.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::bulk::handle::Bulk;
use crate::bulk::region::{BulkMemory, BulkMode};
use crate::conn::Conn;
use crate::error::Result;
use crate::frame::{Extensions, Overflow, HEADER_LEN, MAX_BLOCK_LEN};
use crate::state::EngineState;

/// How long a response's region waits for its caller's `OverflowRelease`
/// when `timeouts.bulk_ms` is not set.
pub(crate) const DEFAULT_KEEP: Duration = Duration::from_secs(60);

/// Bytes before the reason in the payload of an `Error` frame of status
/// `TooLarge`: the payload's size (u64), the refusing engine's
/// `max_payload_bytes` (u64), and what it is (u8: [`ARGUMENTS`] or
/// [`RESPONSE`]).
pub(crate) const TOO_LARGE_HEAD: usize = 17;

/// A `TooLarge` refusal of the arguments of a request.
pub(crate) const ARGUMENTS: u8 = 1;

/// A `TooLarge` refusal of a response.
pub(crate) const RESPONSE: u8 = 2;

/// Whether a message of `payload` bytes, behind the header and the
/// extension block of `ext` (with a deadline's entry if `deadline`), is
/// over `conn`'s largest message. A few additions on every call; the
/// exact block length is worked out only near the limit.
pub(crate) fn over(conn: &Conn, payload: usize, deadline: bool, ext: &Extensions) -> bool {
    let max = conn.max_message();
    if payload.saturating_add(HEADER_LEN + MAX_BLOCK_LEN) <= max {
        return false;
    }
    let ext = Extensions {
        deadline: deadline.then_some(Duration::ZERO),
        ..*ext
    };
    payload.saturating_add(HEADER_LEN + ext.block().len()) > max
}

/// Exposes `payload`, read-only and as it is (no copy), for the peer to
/// pull: the entry that names it, and the handle that keeps it exposed
/// while it lives.
///
/// # Errors
/// [`crate::Error::BulkInvalid`] (never, for one segment of bytes).
pub(crate) fn expose(state: &EngineState, payload: Bytes) -> Result<(Bulk, Overflow)> {
    let len = payload.len() as u64;
    let segment: Arc<dyn BulkMemory> = Arc::new(payload);
    let region = state.bulk.expose(vec![segment], BulkMode::ReadOnly)?;
    let entry = Overflow {
        region: region.id,
        key: region.key,
        len,
    };
    state.stats.bulk.payload_sent();
    Ok((Bulk::exposed(&state.bulk, region), entry))
}

/// Exposes a handler's response for the caller of request `seq` on
/// `conn`: held until the caller's `OverflowRelease`, the connection's
/// end, or `timeouts.bulk_ms` (else [`DEFAULT_KEEP`]) without a release.
///
/// # Errors
/// See [`expose`].
pub(crate) fn hold_response(
    state: &EngineState,
    conn: &Conn,
    seq: u64,
    payload: Bytes,
) -> Result<Overflow> {
    let len = payload.len() as u64;
    let segment: Arc<dyn BulkMemory> = Arc::new(payload);
    let region = state.bulk.expose(vec![segment], BulkMode::ReadOnly)?;
    let keep = state
        .config
        .timeouts
        .bulk_ms
        .map_or(DEFAULT_KEEP, Duration::from_millis);
    let table = Arc::downgrade(&state.bulk);
    let (conn_id, peer) = (conn.id, conn.remote().to_string());
    let timer = state.rt.spawn(async move {
        tokio::time::sleep(keep).await;
        if table.upgrade().is_some_and(|t| t.release_held(conn_id, seq)) {
            tracing::info!(%peer, seq, "freed a response never pulled by its caller after {keep:?}");
        }
    });
    state
        .bulk
        .hold(conn.id, seq, region.id, Some(timer.abort_handle()));
    if conn.is_dead() {
        // The connection's end may have come before the hold.
        state.bulk.release_held(conn.id, seq);
    }
    state.stats.bulk.payload_sent();
    Ok(Overflow {
        region: region.id,
        key: region.key,
        len,
    })
}

/// The payload of an `Error` frame of status `TooLarge`: `size`, `max`,
/// `what` ([`ARGUMENTS`] or [`RESPONSE`]), then `why` in UTF-8.
pub(crate) fn too_large(size: u64, max: u64, what: u8, why: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(TOO_LARGE_HEAD + why.len());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b.push(what);
    b.extend_from_slice(why.as_bytes());
    b
}

/// Reads [`too_large`]'s bytes: size, max, whether it is a response, why.
pub(crate) fn parse_too_large(payload: &[u8]) -> Option<(u64, u64, bool, String)> {
    let head = payload.get(..TOO_LARGE_HEAD)?;
    let mut size = [0u8; 8];
    size.copy_from_slice(&head[..8]);
    let mut max = [0u8; 8];
    max.copy_from_slice(&head[8..16]);
    let why = String::from_utf8_lossy(&payload[TOO_LARGE_HEAD..]).into_owned();
    Some((
        u64::from_le_bytes(size),
        u64::from_le_bytes(max),
        head[16] == RESPONSE,
        why,
    ))
}

/// Why a payload is refused as over `max` (`max_payload_bytes`).
pub(crate) fn over_max(max: u64) -> String {
    format!("over max_payload_bytes ({max} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_large_bytes_are_pinned() {
        // Arguments of 3 MiB refused by an engine whose limit is 2 MiB.
        let b = too_large(3 << 20, 2 << 20, ARGUMENTS, "over");
        assert_eq!(
            b,
            [
                0x00, 0x00, 0x30, 0, 0, 0, 0, 0, // size: 3 MiB
                0x00, 0x00, 0x20, 0, 0, 0, 0, 0,    // max_payload_bytes: 2 MiB
                0x01, // the arguments (2: a response)
                b'o', b'v', b'e', b'r', // why, UTF-8
            ]
        );
        assert_eq!(
            parse_too_large(&b),
            Some((3 << 20, 2 << 20, false, "over".to_owned()))
        );
        let r = too_large(1, 0, RESPONSE, "");
        assert_eq!(parse_too_large(&r), Some((1, 0, true, String::new())));
        assert_eq!(parse_too_large(&b[..16]), None);
    }
}
