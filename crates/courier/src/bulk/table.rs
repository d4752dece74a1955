//! An engine's exposed regions, the grants of the fast path in use, and
//! the checks every access to a region passes.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::AbortHandle;

use super::region::{BulkMemory, BulkMode, Region};
use super::wire::Access;
use crate::config::BulkOptions;
use crate::error::{Error, Result};
use crate::sync::lock;

/// The engine's exposed regions and the grants in use.
#[derive(Debug)]
pub(crate) struct BulkTable {
    regions: Mutex<HashMap<u64, Arc<Region>>>,
    /// Grants of the fast path, by (connection, grant sequence): they keep
    /// the region's memory alive until released.
    leases: Mutex<HashMap<(u64, u64), Arc<Region>>>,
    /// Connections whose direct copies failed: they use messages.
    no_direct: Mutex<HashSet<u64>>,
    next_id: AtomicU64,
    /// Keys are SipHash of a counter under this table's random keys.
    secret: RandomState,
    options: Mutex<BulkOptions>,
    /// Message buffers of finished chunks, reused: a fresh megabyte would
    /// cost a page fault per 4 KiB on its first write.
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Responses that travel by the bulk path (`overflow.rs`), by
    /// (connection, request sequence): the region that holds each until
    /// the caller releases it, and the timer that frees it otherwise.
    held: Mutex<HashMap<(u64, u64), Held>>,
}

/// A response's region, held for its caller to pull.
#[derive(Debug)]
struct Held {
    region: u64,
    timer: Option<AbortHandle>,
}

/// Most buffers kept for reuse.
const POOLED_BUFFERS: usize = 16;
/// Largest buffer kept for reuse.
const POOLED_MAX: usize = 8 << 20;

/// Constant-time comparison of two keys (no early exit on the first
/// differing byte).
fn same_key(a: u128, b: u128) -> bool {
    let diff = a ^ b;
    let folded = (diff as u64) | ((diff >> 64) as u64);
    std::hint::black_box(folded) == 0
}

impl BulkTable {
    pub(crate) fn new(options: BulkOptions) -> Self {
        Self {
            regions: Mutex::default(),
            leases: Mutex::default(),
            no_direct: Mutex::default(),
            next_id: AtomicU64::new(0),
            secret: RandomState::new(),
            options: Mutex::new(options),
            buffers: Mutex::default(),
            held: Mutex::default(),
        }
    }

    fn new_key(&self, id: u64) -> u128 {
        let lo = self.secret.hash_one((id, 0x6b65_795f_6c6f_u64));
        let hi = self.secret.hash_one((id, 0x6b65_795f_6869_u64));
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// Exposes `segments`, end to end, as a new region.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if the lengths overflow, or a read-only
    /// segment is exposed writable.
    pub(crate) fn expose(
        &self,
        segments: Vec<Arc<dyn BulkMemory>>,
        mode: BulkMode,
    ) -> Result<Arc<Region>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let key = self.new_key(id);
        let region = Region::new(id, key, mode, segments)
            .ok_or_else(|| Error::BulkInvalid("the segments' lengths overflow".into()))?;
        if mode.writable() && !region.writable() {
            return Err(Error::BulkInvalid(format!(
                "a segment is read-only memory (such as Bytes): expose it ReadOnly, not {mode:?}"
            )));
        }
        let region = Arc::new(region);
        lock(&self.regions).insert(id, region.clone());
        Ok(region)
    }

    /// Withdraws region `id`: later accesses are refused.
    pub(crate) fn withdraw(&self, id: u64) {
        lock(&self.regions).remove(&id);
    }

    /// Keeps `region` alive for grant `seq` of connection `conn`.
    pub(crate) fn lease(&self, conn: u64, seq: u64, region: Arc<Region>) {
        lock(&self.leases).insert((conn, seq), region);
    }

    /// Ends grant `seq` of connection `conn`.
    pub(crate) fn release(&self, conn: u64, seq: u64) {
        lock(&self.leases).remove(&(conn, seq));
    }

    /// Whether connection `conn` gave up on direct copies.
    pub(crate) fn direct_refused(&self, conn: u64) -> bool {
        lock(&self.no_direct).contains(&conn)
    }

    /// Connection `conn` uses messages from now on.
    pub(crate) fn refuse_direct(&self, conn: u64) {
        lock(&self.no_direct).insert(conn);
    }

    /// Forgets what belonged to a closed connection (the responses held
    /// for it are withdrawn).
    pub(crate) fn forget_conn(&self, conn: u64) {
        lock(&self.leases).retain(|(c, _), _| *c != conn);
        lock(&self.no_direct).remove(&conn);
        let gone: Vec<Held> = {
            let mut held = lock(&self.held);
            let keys: Vec<(u64, u64)> = held.keys().filter(|(c, _)| *c == conn).copied().collect();
            keys.iter().filter_map(|k| held.remove(k)).collect()
        };
        for held in gone {
            self.unhold(held);
        }
    }

    /// Holds region `region` (exposed in this table) for the caller of
    /// request `seq` on connection `conn`, until [`BulkTable::release_held`]
    /// or the connection's end; `timer`, if any, is stopped then.
    pub(crate) fn hold(&self, conn: u64, seq: u64, region: u64, timer: Option<AbortHandle>) {
        let old = lock(&self.held).insert((conn, seq), Held { region, timer });
        if let Some(old) = old {
            self.unhold(old);
        }
    }

    /// Withdraws the region held for request `seq` of connection `conn`;
    /// whether there was one.
    pub(crate) fn release_held(&self, conn: u64, seq: u64) -> bool {
        let held = lock(&self.held).remove(&(conn, seq));
        held.map(|h| self.unhold(h)).is_some()
    }

    fn unhold(&self, held: Held) {
        if let Some(timer) = held.timer {
            timer.abort();
        }
        self.withdraw(held.region);
    }

    /// Regions exposed now (those of payloads by the bulk path included).
    pub(crate) fn regions(&self) -> usize {
        lock(&self.regions).len()
    }

    /// Responses held for their callers to pull now.
    pub(crate) fn held(&self) -> usize {
        lock(&self.held).len()
    }

    pub(crate) fn options(&self) -> BulkOptions {
        *lock(&self.options)
    }

    pub(crate) fn set_options(&self, options: BulkOptions) {
        *lock(&self.options) = options;
    }

    /// An empty buffer with room for `capacity` bytes, reused if possible.
    pub(crate) fn buffer(&self, capacity: usize) -> Vec<u8> {
        let mut pool = lock(&self.buffers);
        match pool.iter().position(|b| b.capacity() >= capacity) {
            Some(i) => pool.swap_remove(i),
            None => {
                drop(pool);
                Vec::with_capacity(capacity)
            }
        }
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn recycle(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > POOLED_MAX {
            return;
        }
        buffer.clear();
        let mut pool = lock(&self.buffers);
        if pool.len() < POOLED_BUFFERS {
            pool.push(buffer);
        }
    }

    /// The region `access` names, if the key matches, `mode_ok` accepts
    /// its mode, and the range is inside it; else why not.
    pub(crate) fn check(
        &self,
        access: &Access,
        what: &str,
        mode_ok: impl Fn(BulkMode) -> bool,
    ) -> std::result::Result<(Arc<Region>, usize, usize), String> {
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
