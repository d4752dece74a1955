//! The side that runs a transfer: checks its own arguments, then moves the
//! bytes in chunked, pipelined messages, or with direct copies. Every chunk
//! and grant is a call of `call.rs`; the whole transfer is bounded by one
//! deadline (`timeouts.rs`).

use std::collections::VecDeque;
use std::sync::Arc;

use courier_transport::{DirectMemory, PeerRange};

use super::handle::Bulk;
use super::region::{BulkMemory, BulkMode, Region};
use super::wire::{parse_ranges, Access, ACCESS_LEN, GRANT_READ, GRANT_WRITE};
use crate::call::{Body, PendingCall};
use crate::cancel::CancelToken;
use crate::config::BulkOptions;
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::frame::{Header, Kind, Status, HEADER_LEN};
use crate::peer::Peer;
use crate::state::EngineState;
use crate::timeouts::{self, Deadline};

/// The direction of a transfer, seen from the side that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkOp {
    /// Copy from the remote region into the local one.
    Pull,
    /// Copy from the local region into the remote one.
    Push,
}

/// What bounds a transfer: its deadline, and the request whose handler
/// runs it (its cancellation stops the transfer).
pub(crate) struct Bounds {
    pub(crate) deadline: Deadline,
    pub(crate) inherited: Option<CancelToken>,
}

/// Runs one transfer (see [`crate::bulk::Transfer`]): the whole source
/// range (`remote` for a pull, `local` for a push) is copied to the start of
/// the destination range, which must be at least as long.
///
/// # Errors
/// See [`crate::Engine::transfer`].
pub(crate) async fn run(
    state: &EngineState,
    peer: &Peer,
    op: BulkOp,
    remote: &Bulk,
    local: &Bulk,
    options: BulkOptions,
    bounds: Bounds,
) -> Result<()> {
    let Bounds {
        deadline,
        inherited,
    } = bounds;
    let job = Job::new(op, remote, local, options)?;
    let bytes = match op {
        BulkOp::Pull => remote.len(),
        BulkOp::Push => local.len(),
    };
    let started = std::time::Instant::now();
    let result = bounded(state, peer, &job, deadline, inherited).await;
    state.stats.bulk.transfer(
        op == BulkOp::Pull,
        bytes as u64,
        started.elapsed(),
        result.is_ok(),
    );
    result
}

/// Pulls all of the range `access` names, exposed by the engine at the
/// other end of `conn`, into `into` (this process's memory, from its
/// start; at least as long): a payload that travelled by the bulk path
/// (`overflow.rs`). The same chunks, window and direct copies as [`run`],
/// on that connection only (a dead one is not reopened), and counted in
/// the same statistics. Not bounded here: the caller races it against
/// its deadline and cancellation (dropping it drops the chunks in flight).
///
/// # Errors
/// As [`run`]'s, but for timeouts and cancellation.
pub(crate) async fn pull_into(
    state: &EngineState,
    conn: &Arc<Conn>,
    access: Access,
    into: Arc<dyn BulkMemory>,
) -> Result<()> {
    let local = Region::new(0, 0, BulkMode::WriteOnly, vec![into])
        .ok_or_else(|| Error::BulkInvalid("the destination's length overflows".into()))?;
    let job = Job {
        op: BulkOp::Pull,
        access,
        local: Arc::new(local),
        local_start: 0,
        options: state.bulk.options(),
    };
    let started = std::time::Instant::now();
    let result = job.run(state, conn).await;
    state
        .stats
        .bulk
        .transfer(true, access.len, started.elapsed(), result.is_ok());
    result
}

/// [`run`]'s job, within its deadline and its request's cancellation.
async fn bounded(
    state: &EngineState,
    peer: &Peer,
    job: &Job,
    deadline: Deadline,
    inherited: Option<CancelToken>,
) -> Result<()> {
    let work = deadline.bound(
        async {
            let conn = state.connection_for(peer).await?;
            job.run(state, &conn).await
        },
        timeouts::expired_bulk(&peer.addr),
    );
    match inherited {
        None => work.await,
        // Started by a handler: stops when its request is cancelled (the
        // chunks in flight are dropped, which tells the peer).
        Some(token) => tokio::select! {
            biased;
            r = work => r,
            _ = token.fired_reason() => Err(Error::Cancelled {
                rpc: "<bulk transfer>".to_owned(),
                address: peer.addr.to_string(),
            }),
        },
    }
}

struct Job {
    op: BulkOp,
    /// The remote range moved (its length is the transfer's).
    access: Access,
    local: Arc<Region>,
    local_start: usize,
    options: BulkOptions,
}

impl Job {
    /// Checks the local side of a transfer.
    fn new(op: BulkOp, remote: &Bulk, local: &Bulk, options: BulkOptions) -> Result<Self> {
        let Some((region, local_start)) = local.local_range() else {
            return Err(Error::BulkInvalid(
                "the local handle is not a region of this process (it came from a peer)".into(),
            ));
        };
        let (local_ok, local_needs) = match op {
            BulkOp::Pull => (local.mode().writable(), "writable, to pull into it"),
            BulkOp::Push => (local.mode().readable(), "readable, to push from it"),
        };
        if !local_ok {
            return Err(Error::BulkInvalid(format!(
                "the local region is exposed {:?}; it must be {local_needs}",
                local.mode()
            )));
        }
        let (source, destination, len) = match op {
            BulkOp::Pull => ("remote", "local", remote.len()),
            BulkOp::Push => ("local", "remote", local.len()),
        };
        let room = match op {
            BulkOp::Pull => local.len(),
            BulkOp::Push => remote.len(),
        };
        if room < len {
            return Err(Error::BulkInvalid(format!(
                "the {destination} range ({room} bytes) is shorter than the {source} range \
                 ({len} bytes) a {op:?} copies into it",
            )));
        }
        Ok(Self {
            op,
            access: remote.access().part(0, len),
            local: region,
            local_start,
            options,
        })
    }

    async fn run(&self, state: &EngineState, conn: &Arc<Conn>) -> Result<()> {
        let len = self.access.len as usize;
        if self.options.direct && len >= self.options.direct_threshold && len > 0 {
            let direct = conn
                .capabilities
                .get()
                .and_then(|c| c.direct_memory.clone());
            if let (Some(direct), false) = (direct, state.bulk.direct_refused(conn.id)) {
                if self.direct(state, conn, direct.as_ref()).await? {
                    return Ok(());
                }
            }
        }
        self.messages(state, conn).await
    }

    /// Sends chunk `at..at + n` (a pull asks for it, a push carries it).
    async fn send_chunk<'c>(
        &self,
        state: &EngineState,
        conn: &'c Conn,
        at: usize,
        n: usize,
    ) -> Result<PendingCall<'c>> {
        let access = self.access.part(at, n).encode();
        match self.op {
            BulkOp::Pull => {
                conn.start(Header::new(Kind::BulkPull), Body::Parts(&[&access]))
                    .await
            }
            BulkOp::Push => {
                if let Some(pieces) = self.local.shared_pieces(self.local_start + at, n) {
                    // Immutable memory: sent as it is, no copy.
                    let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + pieces.len());
                    parts.push(&access);
                    parts.extend(pieces.iter().map(|p| &p[..]));
                    return conn
                        .start(Header::new(Kind::BulkPush), Body::Parts(&parts))
                        .await;
                }
                let mut msg = state.bulk.buffer(HEADER_LEN + ACCESS_LEN + n);
                msg.resize(HEADER_LEN, 0);
                msg.extend_from_slice(&access);
                self.local.append_to(self.local_start + at, n, &mut msg);
                let sent = conn
                    .start(Header::new(Kind::BulkPush), Body::Encoded(&mut msg))
                    .await;
                state.bulk.recycle(msg);
                sent
            }
        }
    }

    /// The message path: chunks, `window` of them in flight.
    async fn messages(&self, state: &EngineState, conn: &Conn) -> Result<()> {
        let len = self.access.len as usize;
        let max = conn.max_message();
        let chunk = self
            .options
            .chunk_size
            .min(max.saturating_sub(HEADER_LEN + ACCESS_LEN))
            .max(1);
        let window = self.options.window.max(1);
        let mut flight: VecDeque<(PendingCall<'_>, usize, usize)> = VecDeque::with_capacity(window);
        let mut next = 0usize;
        let mut first = true;
        // A zero-byte transfer still sends one (empty) access, so that the
        // peer checks the handle.
        while first || next < len || !flight.is_empty() {
            while flight.len() < window && (first || next < len) {
                first = false;
                let n = chunk.min(len - next);
                flight.push_back((self.send_chunk(state, conn, next, n).await?, next, n));
                next += n;
            }
            let Some((pending, at, n)) = flight.pop_front() else {
                break;
            };
            let (header, payload) = pending.reply().await?;
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
    async fn direct(
        &self,
        state: &EngineState,
        conn: &Conn,
        direct: &dyn DirectMemory,
    ) -> Result<bool> {
        let len = self.access.len as usize;
        let chunk = self.options.direct_chunk.max(64 << 10);
        let window = self.options.window.max(1);
        let want = match self.op {
            BulkOp::Pull => GRANT_READ,
            BulkOp::Push => GRANT_WRITE,
        };
        let mut flight: VecDeque<(PendingCall<'_>, usize, usize)> = VecDeque::with_capacity(window);
        let mut next = 0usize;
        let outcome = loop {
            while flight.len() < window && next < len {
                let n = chunk.min(len - next);
                let access = self.access.part(next, n).encode();
                let pending = conn
                    .start(
                        Header::new(Kind::BulkGrant),
                        Body::Parts(&[&access, &[want]]),
                    )
                    .await?;
                flight.push_back((pending, next, n));
                next += n;
            }
            let Some((pending, at, n)) = flight.pop_front() else {
                break Ok(true);
            };
            let seq = pending.seq();
            let (reply, payload) = pending.reply().await?;
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
                state.bulk.refuse_direct(conn.id);
                break Ok(false);
            }
        };
        // Grants asked ahead and not used: release them (the peer answers
        // frames in order, so each release follows its grant).
        for (pending, ..) in &flight {
            release(conn, pending.seq()).await?;
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
}
