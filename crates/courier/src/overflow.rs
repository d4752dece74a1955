//! Payloads of any size (Mercury's "overflow"): arguments or a response
//! over the connection's largest message travel by the bulk path, on their
//! own. The sender exposes the payload read-only ([`expose`]) and sends
//! its frame with an overflow entry (`frame::EXT_OVERFLOW`) and no
//! payload; the receiver checks the length against its
//! `max_payload_bytes`, allocates the final buffer once, and pulls the
//! payload straight into it over the same connection (the bulk transfer
//! machinery: chunked messages, or direct copies on shm), in a task of its
//! own. `docs/bulk.md`, "Payloads of any size"; `docs/wire-format.md`, 2.3.
//!
//! * Arguments (`call.rs` exposes them; `dispatch.rs` calls
//!   [`receive`] for the handler, bounded by the request's deadline and
//!   cancellation): the caller's region lives until its call ends.
//! * Responses (`handler.rs` exposes them, held per request; dispatch
//!   calls [`response`] on the caller's side): the caller pulls within its
//!   call, then sends `OverflowRelease` ([`release`]); the handler's
//!   engine frees the region then, when the connection ends, or after
//!   `timeouts.bulk_ms` (60 s if unset).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::bulk::region::BulkMemory;
use crate::bulk::transfer;
use crate::bulk::wire::Access;
use crate::conn::{Conn, Reply};
use crate::error::Error;
use crate::flow::End;
use crate::frame::{Extensions, Header, Kind, Overflow, Status, FLAG_EXTENSIONS};
use crate::state::EngineState;
use crate::sync::lock;

pub(crate) mod expose;

/// Why a payload was not received.
#[derive(Debug)]
pub(crate) enum NotReceived {
    /// Refused before anything moved: over this engine's
    /// `max_payload_bytes`, or no memory for it; why.
    TooLarge(String),
    /// The pull failed (the peer refused it, or the connection broke).
    Failed(Error),
}

/// Refuses, before anything moves, a payload of `entry.len` bytes over
/// this engine's `max_payload_bytes`: why (counted as refused).
pub(crate) fn check(state: &EngineState, entry: &Overflow) -> Result<(), String> {
    let max = state.config.max_payload_bytes;
    if entry.len > max {
        state.stats.bulk.payload_refused();
        return Err(expose::over_max(max));
    }
    Ok(())
}

/// The memory a payload lands in: its final buffer, which the pull writes
/// in place (chunk by chunk, or by direct copies). Its memory is reserved
/// whole when the payload is accepted, and its bytes are made (zeroed, a
/// chunk at a time, just before the pull writes them) as the payload
/// arrives: a pull that stops early touched only what it pulled.
struct Landing {
    buffer: Mutex<Vec<u8>>,
    len: usize,
}

/// Zeros to grow a buffer from (a copy, fast in every build profile).
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Landing {
    /// The buffer, with its first `end` bytes made.
    fn made(&self, end: usize) -> std::sync::MutexGuard<'_, Vec<u8>> {
        let mut b = lock(&self.buffer);
        while b.len() < end {
            let n = (end - b.len()).min(ZEROS.len());
            b.extend_from_slice(&ZEROS[..n]);
        }
        b
    }
}

impl BulkMemory for Landing {
    fn len(&self) -> usize {
        self.len
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        f(&self.made(offset + len)[offset..offset + len]);
    }

    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        f(&mut self.made(offset + len)[offset..offset + len]);
    }
}

/// Receives the payload `entry` names from the peer at the other end of
/// `conn`: allocates its buffer (refused if it cannot be had), pulls it in
/// place, and hands it over without a copy. Memory: the payload, and the
/// chunks in flight (a window of them) on the message path. Checked
/// against `max_payload_bytes` by the caller ([`check`]). Dropping the
/// future stops the pull.
///
/// # Errors
/// [`NotReceived`].
pub(crate) async fn receive(
    state: &EngineState,
    conn: &Arc<Conn>,
    entry: Overflow,
) -> Result<Bytes, NotReceived> {
    let no_memory = || {
        state.stats.bulk.payload_refused();
        NotReceived::TooLarge(format!("no memory for {} bytes", entry.len))
    };
    let len = usize::try_from(entry.len).map_err(|_| no_memory())?;
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(len).map_err(|_| no_memory())?;
    let landing = Arc::new(Landing {
        buffer: Mutex::new(buffer),
        len,
    });
    let access = Access {
        id: entry.region,
        key: entry.key,
        offset: 0,
        len: entry.len,
    };
    transfer::pull_into(state, conn, access, landing.clone())
        .await
        .map_err(NotReceived::Failed)?;
    let buffer = std::mem::take(&mut *landing.made(len));
    state.stats.bulk.payload_received();
    Ok(Bytes::from(buffer))
}

/// Tells the handler's engine that the response of request `seq` is
/// pulled (or given up): it frees the region (`OverflowRelease`, no
/// answer).
pub(crate) async fn release(conn: &Conn, seq: u64) {
    let header = Header {
        seq,
        ..Header::new(Kind::OverflowRelease)
    };
    if let Err(e) = conn.send(&[&header.encode()]).await {
        tracing::debug!(peer = %conn.remote(), seq, "cannot release a pulled response: {e}");
    }
}

/// The caller's side of a response that travels by the bulk path (from
/// the connection's reader): the call is taken out of the connection's
/// table, and a task pulls the response and completes the call with it,
/// then releases the server's region. The pull stops when the call is
/// given up (its deadline, its future dropped). A response over this
/// engine's `max_payload_bytes` (or for which no memory can be had) is
/// not pulled: the call gets the overflow entry back, which `remote.rs`
/// turns into [`Error::TooLarge`]. A pull that fails ends the call with
/// the connection's loss, or a `BulkRefused` error naming why.
pub(crate) fn response(
    state: &Arc<EngineState>,
    conn: &Arc<Conn>,
    header: Header,
    entry: Overflow,
) {
    let seq = header.seq;
    // A call's answer, or the answer that ends a stream this engine
    // opened: the flow gets it once pulled.
    let call = conn.take_call(seq).or_else(|| {
        let flow = conn.opened_stream(seq)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<Reply>();
        state.rt.spawn(async move {
            if let Ok((header, payload)) = rx.await {
                flow.finish(End::Reply(header, payload));
            }
        });
        Some(tx)
    });
    let (state2, conn) = (state.clone(), conn.clone());
    state.rt.spawn(async move {
        let Some(mut call) = call else {
            // Nobody waits for it (late, after a timeout): free it now.
            return release(&conn, seq).await;
        };
        // The entry as the call gets it back when it is not pulled.
        let unpulled = || {
            let block = Extensions {
                overflow: Some(entry),
                ..Extensions::default()
            }
            .block();
            let marked = Header {
                flags: FLAG_EXTENSIONS,
                ..header
            };
            (marked, Bytes::copy_from_slice(&block))
        };
        if check(&state2, &entry).is_err() {
            release(&conn, seq).await;
            let _ = call.send(unpulled());
            return;
        }
        let received = tokio::select! {
            biased;
            () = call.closed() => None,
            r = receive(&state2, &conn, entry) => Some(r),
        };
        release(&conn, seq).await;
        match received {
            // Given up: nobody to tell.
            None => {}
            Some(Ok(payload)) => {
                let pulled = Header {
                    flags: header.flags & !FLAG_EXTENSIONS,
                    ..header
                };
                let _ = call.send((pulled, payload));
            }
            Some(Err(NotReceived::TooLarge(_))) => {
                let _ = call.send(unpulled());
            }
            // Dropped: the call ends with the connection's loss.
            Some(Err(NotReceived::Failed(_))) if conn.is_dead() => {}
            Some(Err(NotReceived::Failed(e))) => {
                let refused = Header {
                    kind: Kind::Error,
                    flags: 0,
                    status: Status::BulkRefused,
                    ..header
                };
                let why = format!("cannot pull the response: {e}");
                let _ = call.send((refused, Bytes::from(why)));
            }
        }
    });
}

/// Sends `header`'s caller an `Error` frame of status `TooLarge` for a
/// payload of `size` bytes refused here (`what`: [`expose::ARGUMENTS`] or
/// [`expose::RESPONSE`]) because of `why`.
pub(crate) async fn refuse(
    state: &EngineState,
    conn: &Conn,
    header: &Header,
    size: u64,
    what: u8,
    why: &str,
) {
    let payload = expose::too_large(size, state.config.max_payload_bytes, what, why);
    let _ = conn
        .send_error_payload(header, Status::TooLarge, &payload)
        .await;
}
