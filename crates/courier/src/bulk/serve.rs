//! The exposing side: checks every access and answers it.

use std::sync::Arc;

use bytes::Bytes;

use super::{lock, BulkTable, Region};
use crate::conn::Conn;
use crate::engine::Inner;
use crate::frame::{Header, Kind, Status, HEADER_LEN};

/// Bytes of the access at the start of a bulk frame's payload: region id
/// (u64), key (u128), offset (u64), length (u64), little-endian.
pub(super) const ACCESS_LEN: usize = 40;

/// Grant byte: the grantee will read the range.
pub(super) const GRANT_READ: u8 = 1;
/// Grant byte: the grantee will write the range.
pub(super) const GRANT_WRITE: u8 = 2;

/// One access to a region, as a bulk frame carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Access {
    pub(super) id: u64,
    pub(super) key: u128,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl Access {
    pub(super) fn encode(&self) -> [u8; ACCESS_LEN] {
        let mut b = [0u8; ACCESS_LEN];
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..24].copy_from_slice(&self.key.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let b = payload.get(..ACCESS_LEN)?;
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let mut key = [0u8; 16];
        key.copy_from_slice(&b[8..24]);
        Some(Self {
            id: u64_at(0),
            key: u128::from_le_bytes(key),
            offset: u64_at(24),
            len: u64_at(32),
        })
    }
}

/// Constant-time comparison of two keys (no early exit on the first
/// differing byte).
fn same_key(a: u128, b: u128) -> bool {
    let diff = a ^ b;
    let folded = (diff as u64) | ((diff >> 64) as u64);
    std::hint::black_box(folded) == 0
}

impl BulkTable {
    /// The region `access` names, if the key matches, `mode_ok` accepts
    /// its mode, and the range is inside it; else why not.
    fn check(
        &self,
        access: &Access,
        what: &str,
        mode_ok: impl Fn(super::BulkMode) -> bool,
    ) -> Result<(Arc<Region>, usize, usize), String> {
        let id = access.id;
        let region = lock(&self.regions).get(&id).cloned().ok_or_else(|| {
            format!("no region {id} is exposed here (it was dropped, or the handle is forged)")
        })?;
        if !same_key(region.key, access.key) {
            return Err(format!(
                "the key does not match region {id} (a forged or stale handle)"
            ));
        }
        if !mode_ok(region.mode) {
            return Err(format!(
                "region {id} is exposed {:?}: a {what} is not allowed",
                region.mode
            ));
        }
        let end = access.offset.checked_add(access.len);
        if end.is_none_or(|e| e > region.len as u64) {
            return Err(format!(
                "bytes {}+{} are past the end of region {id} ({} bytes)",
                access.offset, access.len, region.len
            ));
        }
        // Both fit in the region's length, a usize.
        Ok((region, access.offset as usize, access.len as usize))
    }
}

/// Pulls of up to this size are answered by the connection's reader itself
/// (a copy of at most this much, then a send), like a `Ping`; larger ones
/// on a task of their own.
const INLINE_UP_TO: u64 = 64 << 10;

/// Answers a bulk frame. Grants, pushes and small pulls are answered by the
/// connection's reader itself (no task hop on the latency path; their
/// answers are small); large pulls on a task of their own, so that the
/// reader goes on reading (and pulls served in both directions at once
/// cannot block two readers on each other's sends).
pub(crate) async fn serve(inner: &Arc<Inner>, conn: &Arc<Conn>, header: Header, payload: Bytes) {
    if header.kind == Kind::BulkRelease {
        lock(&inner.bulk.leases).remove(&(conn.id, header.seq));
        return;
    }
    // A push is a copy and a small acknowledgement: the reader does it (it
    // never sends anything large). A pull answers with the bytes: only small
    // ones inline, so that the reader is never held up by a large send.
    let small = Access::decode(&payload).is_none_or(|a| a.len <= INLINE_UP_TO);
    if header.kind != Kind::BulkPull || small {
        return answer(inner, conn, header, payload).await;
    }
    let inner2 = inner.clone();
    let conn = conn.clone();
    inner
        .rt
        .spawn(async move { answer(&inner2, &conn, header, payload).await });
}

async fn answer(inner: &Arc<Inner>, conn: &Arc<Conn>, header: Header, payload: Bytes) {
    let refuse = |status: Status, message: String| async move {
        tracing::debug!(peer = %conn.remote(), kind = ?header.kind, "bulk access refused: {message}");
        let _ = conn.send_error(&header, status, &message).await;
    };
    if inner.is_finalizing() {
        return refuse(Status::Finalizing, "the engine is finalizing".into()).await;
    }
    let Some(access) = Access::decode(&payload) else {
        return refuse(
            Status::BadRequest,
            format!(
                "a bulk frame of {} payload bytes is shorter than its {ACCESS_LEN}-byte access",
                payload.len()
            ),
        )
        .await;
    };
    let response = Header {
        kind: Kind::Response,
        ..header
    };
    let table = &inner.bulk;
    match header.kind {
        Kind::BulkPull => {
            let (region, offset, len) = match table.check(&access, "pull", |m| m.readable()) {
                Ok(x) => x,
                Err(why) => return refuse(Status::BulkRefused, why).await,
            };
            let max = inner.transport.max_message_size();
            if len > max.saturating_sub(HEADER_LEN) {
                return refuse(
                    Status::BulkRefused,
                    format!(
                        "a chunk of {len} bytes does not fit this engine's messages ({max} bytes)"
                    ),
                )
                .await;
            }
            if let Some(pieces) = region.shared_pieces(offset, len) {
                // Immutable memory: sent as it is, no copy.
                drop(region);
                let head = response.encode();
                let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + pieces.len());
                parts.push(&head);
                parts.extend(pieces.iter().map(|p| &p[..]));
                let _ = conn.send(&parts).await;
                return;
            }
            let mut msg = table.buffer(HEADER_LEN + len);
            msg.extend_from_slice(&response.encode());
            region.append_to(offset, len, &mut msg);
            drop(region);
            let _ = conn.send(&[&msg]).await;
            table.recycle(msg);
        }
        Kind::BulkPush => {
            let (region, offset, len) = match table.check(&access, "push", |m| m.writable()) {
                Ok(x) => x,
                Err(why) => return refuse(Status::BulkRefused, why).await,
            };
            let data = &payload[ACCESS_LEN..];
            if data.len() != len {
                return refuse(
                    Status::BadRequest,
                    format!("a push announces {len} bytes but carries {}", data.len()),
                )
                .await;
            }
            region.write_from(offset, data);
            drop(region);
            let _ = conn.send(&[&response.encode()]).await;
        }
        Kind::BulkGrant => {
            let want = payload.get(ACCESS_LEN).copied();
            let checked = match want {
                Some(GRANT_READ) => table.check(&access, "pull", |m| m.readable()),
                Some(GRANT_WRITE) => table.check(&access, "push", |m| m.writable()),
                _ => {
                    return refuse(
                        Status::BadRequest,
                        "a grant asks for neither read nor write".into(),
                    )
                    .await
                }
            };
            let (region, offset, len) = match checked {
                Ok(x) => x,
                Err(why) => return refuse(Status::BulkRefused, why).await,
            };
            let mut msg = response.encode().to_vec();
            match region.direct_ranges(offset, len) {
                Some(ranges) => {
                    msg.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
                    for r in &ranges {
                        msg.extend_from_slice(&r.addr.to_le_bytes());
                        msg.extend_from_slice(&(r.len as u64).to_le_bytes());
                    }
                    // The lease keeps the memory alive until released (or
                    // the connection ends), even if the region is dropped.
                    lock(&table.leases).insert((conn.id, header.seq), region);
                }
                // No stable address: the grantee uses messages.
                None => msg.extend_from_slice(&0u32.to_le_bytes()),
            }
            let _ = conn.send(&[&msg]).await;
        }
        _ => {}
    }
}
