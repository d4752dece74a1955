//! The side that runs a transfer: checks its own arguments, then moves the
//! bytes in chunked, pipelined messages, or with direct copies.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use courier_transport::{DirectMemory, PeerRange};
use tokio::sync::oneshot;

use super::serve::{Access, ACCESS_LEN, GRANT_READ, GRANT_WRITE};
use super::{lock, Bulk, BulkOp, BulkOptions, Region};
use crate::address::Peer;
use crate::conn::{Conn, Reply};
use crate::engine::Inner;
use crate::frame::{Header, Kind, Status, HEADER_LEN};
use crate::{Error, Result};

/// Runs one transfer (see [`crate::Engine::transfer`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    op: BulkOp,
    remote: &Bulk,
    remote_offset: usize,
    local: &Bulk,
    local_offset: usize,
    len: usize,
    options: BulkOptions,
) -> Result<()> {
    let Some(registration) = &local.local else {
        return Err(Error::BulkInvalid(
            "the local handle is not a region of this process (it came from a peer)".into(),
        ));
    };
    let local_region = registration.region.clone();
    let (local_ok, local_needs) = match op {
        BulkOp::Pull => (local.desc.mode.writable(), "writable, to pull into it"),
        BulkOp::Push => (local.desc.mode.readable(), "readable, to push from it"),
    };
    if !local_ok {
        return Err(Error::BulkInvalid(format!(
            "the local region is exposed {:?}; it must be {local_needs}",
            local.desc.mode
        )));
    }
    let local_start = within(local, local_offset, len, "local")?;
    let remote_start = within(remote, remote_offset, len, "remote")?;
    let access = Access {
        id: remote.desc.id,
        key: remote.desc.key,
        offset: remote_start,
        len: len as u64,
    };
    let job = Job {
        op,
        access,
        local: local_region,
        // Within the local region, a usize.
        local_start: local_start as usize,
        options,
    };
    let work = async {
        if inner.is_finalizing() {
            return Err(Error::Finalized);
        }
        let conn = peer.connection(inner).await?;
        job.run(inner, &conn).await
    };
    match options.timeout {
        None => work.await,
        Some(after) => tokio::time::timeout(after, work)
            .await
            .map_err(|_| Error::BulkTimeout {
                address: peer.addr.to_string(),
                after,
            })?,
    }
}

/// The absolute start of `offset..offset + len` of `handle`, if inside it.
fn within(handle: &Bulk, offset: usize, len: usize, which: &str) -> Result<u64> {
    let end = (offset as u64).checked_add(len as u64);
    if end.is_none_or(|e| e > handle.desc.len) {
        return Err(Error::BulkInvalid(format!(
            "bytes {offset}+{len} are past the end of the {which} handle ({} bytes)",
            handle.desc.len
        )));
    }
    Ok(handle.desc.offset + offset as u64)
}

struct Job {
    op: BulkOp,
    access: Access,
    local: Arc<Region>,
    local_start: usize,
    options: BulkOptions,
}

/// Forgets the calls still in flight when a transfer ends early.
struct InFlight<'a> {
    conn: &'a Conn,
    queue: VecDeque<(u64, oneshot::Receiver<Reply>, usize, usize)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        for (seq, ..) in &self.queue {
            self.conn.forget_call(*seq);
        }
    }
}

/// Maps an answer that is not a `Response` to the caller's error.
fn refused(conn: &Conn, header: &Header, payload: &[u8]) -> Error {
    let address = conn.remote().to_string();
    let message = String::from_utf8_lossy(payload).into_owned();
    match (header.kind, header.status) {
        (Kind::Error, Status::BulkRefused) => Error::BulkRefused {
            address,
            reason: message,
        },
        (Kind::Error, Status::Finalizing) => Error::RemoteFinalizing { address },
        _ => Error::Protocol {
            address,
            reason: format!(
                "unexpected answer to a bulk access ({:?}, {:?}): {message}",
                header.kind, header.status
            ),
        },
    }
}

impl Job {
    async fn run(&self, inner: &Arc<Inner>, conn: &Arc<Conn>) -> Result<()> {
        let len = self.access.len as usize;
        if self.options.direct && len >= self.options.direct_threshold && len > 0 {
            let direct = conn
                .capabilities
                .get()
                .and_then(|c| c.direct_memory.clone());
            let refused_before = lock(&inner.bulk.no_direct).contains(&conn.id);
            if let (Some(direct), false) = (direct, refused_before) {
                if self.direct(inner, conn, direct.as_ref()).await? {
                    return Ok(());
                }
            }
        }
        self.messages(inner, conn).await
    }

    /// The message path: chunks, `window` of them in flight.
    async fn messages(&self, inner: &Inner, conn: &Conn) -> Result<()> {
        let len = self.access.len as usize;
        let max = inner.transport.max_message_size();
        let chunk = self
            .options
            .chunk_size
            .min(max.saturating_sub(HEADER_LEN + ACCESS_LEN))
            .max(1);
        let window = self.options.window.max(1);
        let mut flight = InFlight {
            conn,
            queue: VecDeque::with_capacity(window),
        };
        let mut next = 0usize;
        let mut first = true;
        // A zero-byte transfer still sends one (empty) access, so that the
        // peer checks the handle.
        while first || next < len || !flight.queue.is_empty() {
            while flight.queue.len() < window && (first || next < len) {
                first = false;
                let n = chunk.min(len - next);
                let (seq, rx) = conn.register_call()?;
                flight.queue.push_back((seq, rx, next, n));
                let access = Access {
                    offset: self.access.offset + next as u64,
                    len: n as u64,
                    ..self.access
                };
                let header = Header {
                    seq,
                    ..Header::new(match self.op {
                        BulkOp::Pull => Kind::BulkPull,
                        BulkOp::Push => Kind::BulkPush,
                    })
                };
                match self.op {
                    BulkOp::Pull => {
                        conn.send(&[&header.encode(), &access.encode()]).await?;
                    }
                    BulkOp::Push => {
                        if let Some(pieces) = self.local.shared_pieces(self.local_start + next, n) {
                            // Immutable memory: sent as it is, no copy.
                            let (head, acc) = (header.encode(), access.encode());
                            let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + pieces.len());
                            parts.push(&head);
                            parts.push(&acc);
                            parts.extend(pieces.iter().map(|p| &p[..]));
                            conn.send(&parts).await?;
                            next += n;
                            continue;
                        }
                        let mut msg = inner.bulk.buffer(HEADER_LEN + ACCESS_LEN + n);
                        msg.extend_from_slice(&header.encode());
                        msg.extend_from_slice(&access.encode());
                        self.local.append_to(self.local_start + next, n, &mut msg);
                        conn.send(&[&msg]).await?;
                        inner.bulk.recycle(msg);
                    }
                }
                next += n;
            }
            let Some((seq, rx, at, n)) = flight.queue.pop_front() else {
                break;
            };
            let reply = rx.await;
            conn.forget_call(seq);
            let (header, payload): (Header, Bytes) = reply.map_err(|_| conn.lost())?;
            if header.kind != Kind::Response {
                return Err(refused(conn, &header, &payload));
            }
            if self.op == BulkOp::Pull {
                if payload.len() != n {
                    return Err(Error::Protocol {
                        address: conn.remote().to_string(),
                        reason: format!(
                            "a bulk pull of {n} bytes was answered with {}",
                            payload.len()
                        ),
                    });
                }
                self.local.write_from(self.local_start + at, &payload);
            }
        }
        Ok(())
    }

    /// The fast path: grants, direct copies, releases, chunk by chunk with
    /// `window` grants asked ahead (so that the exposing side, answering
    /// the next grant while this side copies, stays awake). `Ok(false)`
    /// means "use messages" (no stable address there, or the system
    /// refused a copy): nothing needs undoing, the message path copies the
    /// whole range again.
    async fn direct(&self, inner: &Inner, conn: &Conn, direct: &dyn DirectMemory) -> Result<bool> {
        let len = self.access.len as usize;
        let chunk = self.options.direct_chunk.max(64 << 10);
        let window = self.options.window.max(1);
        let want = match self.op {
            BulkOp::Pull => GRANT_READ,
            BulkOp::Push => GRANT_WRITE,
        };
        let mut flight = InFlight {
            conn,
            queue: VecDeque::with_capacity(window),
        };
        let mut next = 0usize;
        let outcome = loop {
            while flight.queue.len() < window && next < len {
                let n = chunk.min(len - next);
                let (seq, rx) = conn.register_call()?;
                flight.queue.push_back((seq, rx, next, n));
                let access = Access {
                    offset: self.access.offset + next as u64,
                    len: n as u64,
                    ..self.access
                };
                let header = Header {
                    seq,
                    ..Header::new(Kind::BulkGrant)
                };
                conn.send(&[&header.encode(), &access.encode(), &[want]])
                    .await?;
                next += n;
            }
            let Some((seq, rx, at, n)) = flight.queue.pop_front() else {
                break Ok(true);
            };
            let reply = rx.await;
            conn.forget_call(seq);
            let (reply, payload) = reply.map_err(|_| conn.lost())?;
            if reply.kind != Kind::Response {
                break Err(refused(conn, &reply, &payload));
            }
            let Some(ranges) = parse_ranges(&payload, n as u64) else {
                break Err(Error::Protocol {
                    address: conn.remote().to_string(),
                    reason: "a bulk grant whose ranges do not add up to the range asked for".into(),
                });
            };
            if ranges.is_empty() {
                // The peer has no stable address for that memory.
                break Ok(false);
            }
            let copied = self.copy(direct, &ranges, at, n);
            release(conn, seq).await?;
            if let Err(e) = copied {
                tracing::info!(peer = %conn.remote(), "direct bulk copies refused ({e}); this connection uses messages from now on");
                lock(&inner.bulk.no_direct).insert(conn.id);
                break Ok(false);
            }
        };
        // Grants asked ahead and not used: release them (the peer answers
        // frames in order, so each release follows its grant).
        for (seq, ..) in &flight.queue {
            release(conn, *seq).await?;
        }
        outcome
    }

    /// One direct copy of `n` bytes at `at` of the range, with the peer's
    /// `ranges`.
    fn copy(
        &self,
        direct: &dyn DirectMemory,
        ranges: &[PeerRange],
        at: usize,
        n: usize,
    ) -> std::io::Result<()> {
        let mut outcome = Ok(());
        match self.op {
            BulkOp::Pull => self
                .local
                .write_pieces(self.local_start + at, n, |pos, dst| {
                    if outcome.is_ok() {
                        outcome = direct.read_peer(&sub_ranges(ranges, pos, dst.len()), dst);
                    }
                }),
            BulkOp::Push => self
                .local
                .read_pieces(self.local_start + at, n, |pos, src| {
                    if outcome.is_ok() {
                        outcome = direct.write_peer(&sub_ranges(ranges, pos, src.len()), src);
                    }
                }),
        }
        outcome
    }
}

/// Ends the lease of grant `seq` (one-way).
async fn release(conn: &Conn, seq: u64) -> Result<()> {
    let header = Header {
        seq,
        ..Header::new(Kind::BulkRelease)
    };
    conn.send(&[&header.encode()]).await
}

/// Parses a grant's ranges: a u32 count, then (u64 address, u64 length)
/// each. An empty list is valid (no direct access); otherwise the lengths
/// must add up to `len`.
fn parse_ranges(payload: &[u8], len: u64) -> Option<Vec<PeerRange>> {
    let count = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let body = payload.get(4..)?;
    if body.len() != count.checked_mul(16)? {
        return None;
    }
    let mut ranges = Vec::with_capacity(count);
    let mut total = 0u64;
    for piece in body.chunks_exact(16) {
        let addr = u64::from_le_bytes(piece[..8].try_into().ok()?);
        let n = u64::from_le_bytes(piece[8..].try_into().ok()?);
        total = total.checked_add(n)?;
        ranges.push(PeerRange {
            addr,
            len: usize::try_from(n).ok()?,
        });
    }
    (count == 0 || total == len).then_some(ranges)
}

/// The part `pos..pos + len` of the byte sequence `ranges` describe.
fn sub_ranges(ranges: &[PeerRange], pos: usize, len: usize) -> Vec<PeerRange> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let end = pos + len;
    for r in ranges {
        let r_end = start + r.len;
        let from = pos.max(start);
        let to = end.min(r_end);
        if from < to {
            out.push(PeerRange {
                addr: r.addr + (from - start) as u64,
                len: to - from,
            });
        }
        if r_end >= end {
            break;
        }
        start = r_end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_ranges_cut_across_pieces() {
        let r = [
            PeerRange { addr: 100, len: 10 },
            PeerRange { addr: 500, len: 5 },
        ];
        assert_eq!(sub_ranges(&r, 0, 15), r.to_vec());
        assert_eq!(
            sub_ranges(&r, 8, 4),
            vec![
                PeerRange { addr: 108, len: 2 },
                PeerRange { addr: 500, len: 2 }
            ]
        );
        assert_eq!(sub_ranges(&r, 12, 3), vec![PeerRange { addr: 502, len: 3 }]);
    }

    #[test]
    fn grant_ranges_must_add_up() {
        let mut p = 2u32.to_le_bytes().to_vec();
        for (a, n) in [(10u64, 4u64), (20, 6)] {
            p.extend_from_slice(&a.to_le_bytes());
            p.extend_from_slice(&n.to_le_bytes());
        }
        assert_eq!(parse_ranges(&p, 10).map(|r| r.len()), Some(2));
        assert_eq!(parse_ranges(&p, 11), None);
        assert_eq!(parse_ranges(&p[..20], 10), None);
        assert_eq!(parse_ranges(&0u32.to_le_bytes(), 10), Some(vec![]));
    }
}
