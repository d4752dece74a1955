//! The exposing side: checks every access and answers it.

use std::sync::Arc;

use bytes::Bytes;

use super::wire::{encode_ranges, Access, ACCESS_LEN, GRANT_READ, GRANT_WRITE};
use crate::conn::Conn;
use crate::frame::{Header, Kind, Status, HEADER_LEN};
use crate::state::EngineState;

/// Pulls of up to this size are answered by the connection's reader itself
/// (a copy of at most this much, then a send), like a `Ping`; larger ones
/// on a task of their own.
const INLINE_UP_TO: u64 = 64 << 10;

/// Answers a bulk frame. Grants, pushes and small pulls are answered by the
/// connection's reader itself (no task hop on the latency path; their
/// answers are small); large pulls on a task of their own, so that the
/// reader goes on reading (and pulls served in both directions at once
/// cannot block two readers on each other's sends).
pub(crate) async fn serve(
    state: &Arc<EngineState>,
    conn: &Arc<Conn>,
    header: Header,
    payload: Bytes,
) {
    if header.kind == Kind::BulkRelease {
        state.bulk.release(conn.id, header.seq);
        return;
    }
    // A push is a copy and a small acknowledgement: the reader does it (it
    // never sends anything large). A pull answers with the bytes: only small
    // ones inline, so that the reader is never held up by a large send.
    let small = Access::decode(&payload).is_none_or(|a| a.len <= INLINE_UP_TO);
    if header.kind != Kind::BulkPull || small {
        return answer(state, conn, header, payload).await;
    }
    let state2 = state.clone();
    let conn = conn.clone();
    state
        .rt
        .spawn(async move { answer(&state2, &conn, header, payload).await });
}

async fn answer(state: &EngineState, conn: &Conn, header: Header, payload: Bytes) {
    let refuse = |status: Status, message: String| async move {
        tracing::debug!(peer = %conn.remote(), kind = ?header.kind, "bulk access refused: {message}");
        let _ = conn.send_error(&header, status, &message).await;
    };
    if state.is_finalizing() {
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
    let table = &state.bulk;
    match header.kind {
        Kind::BulkPull => {
            let (region, offset, len) = match table.check(&access, "pull", |m| m.readable()) {
                Ok(x) => x,
                Err(why) => return refuse(Status::BulkRefused, why).await,
            };
            let max = conn.max_message();
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
                    encode_ranges(&ranges, &mut msg);
                    // The lease keeps the memory alive until released (or
                    // the connection ends), even if the region is dropped.
                    table.lease(conn.id, header.seq, region);
                }
                // No stable address: the grantee uses messages.
                None => encode_ranges(&[], &mut msg),
            }
            let _ = conn.send(&[&msg]).await;
        }
        _ => {}
    }
}
