//! Bulk transfers: expose memory, and let a peer pull from it or push into
//! it directly, so that large payloads never ride inside an RPC message
//! (Margo's bulk API, Thallium's `expose`).
//!
//! The caller exposes a region ([`Engine::expose`]) and sends its [`Bulk`]
//! handle inside an ordinary RPC (a `Bulk` is serde-serializable); the
//! handler pulls the data from it or pushes its answer into it
//! ([`Handle::pull`], [`Handle::push`], [`Engine::transfer`]).
//!
//! ```
//! use courier::{BulkBuffer, BulkMode, Engine, Handle, Bulk};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier::Result<()> {
//! let server = Engine::new("tcp").await?;
//! let server_engine = server.clone();
//! // The handler pulls the caller's bytes into a region of its own.
//! server.register("sum", move |handle: Handle, (remote, len): (Bulk, usize)| {
//!     let engine = server_engine.clone();
//!     async move {
//!         let local = BulkBuffer::new(len);
//!         let bulk = engine.expose([local.clone()], BulkMode::WriteOnly)?;
//!         handle.pull(&remote, 0, &bulk, 0, len).await?;
//!         let sum: u64 = local.read(|b| b.iter().map(|&x| u64::from(x)).sum());
//!         handle.respond(&sum).await
//!     }
//! })?;
//!
//! let client = Engine::builder("tcp").client().build().await?;
//! let data = BulkBuffer::from(vec![1u8; 100_000]);
//! let bulk = client.expose([data], BulkMode::ReadOnly)?;
//! let server_addr = client.lookup(&server.address().to_string()).await?;
//! let sum = client.remote::<(Bulk, usize), u64>("sum");
//! assert_eq!(sum.on(&server_addr).call(&(bulk, 100_000)).await?, 100_000);
//! # Ok(()) }
//! ```
//!
//! # A handle is a capability
//!
//! A region gets a random 128-bit key when exposed, carried by its handle.
//! The exposing engine checks, on every access, that the region still
//! exists, that the key matches, that its mode allows the access (a push
//! into a read-only region is refused) and that the range is inside it; a
//! refused access ends the transfer with [`Error::BulkRefused`] naming why.
//! Dropping the last clone of the [`Bulk`] returned by `expose` withdraws
//! the region: accesses after that are refused.
//!
//! # How the bytes travel
//!
//! **Messages (every transport).** A transfer is cut into chunks
//! ([`BulkOptions::chunk_size`], 256 KiB by default) and several chunks are in
//! flight at once ([`BulkOptions::window`]). A pull sends one small
//! `BulkPull` request per chunk, answered by a response carrying the bytes;
//! a push sends `BulkPush` messages carrying the bytes, each acknowledged.
//! Chunks are ordinary messages, so RPCs on the same connection go between
//! them: a large transfer does not hold up small calls.
//!
//! **Direct copies (shm).** When the connection offers
//! [`DirectMemory`](crate::transport::DirectMemory), a transfer of at least
//! [`BulkOptions::direct_threshold`] bytes asks the exposing engine for a
//! *grant*: the same checks as above, then the addresses of the range in the
//! exposing process. The bytes are then copied with one system call
//! (`process_vm_readv` / `process_vm_writev`), and the grant is released.
//! If the system refuses (ptrace not permitted), the connection falls back
//! to messages for good. See `docs/bulk.md` for the trust model.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::engine::Inner;
use crate::{Engine, Error, Handle, Result};

mod region;
mod serve;
mod transfer;

pub use region::{BulkBuffer, BulkMemory};
pub(crate) use serve::serve;

use region::Region;

/// What a peer may do with an exposed region (Margo's `HG_BULK_*`).
///
/// For the local handle of a transfer, the mode says what the transfer may
/// do to it: a pull writes into the local region, a push reads from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BulkMode {
    /// Peers may read it (pull from it).
    ReadOnly,
    /// Peers may write it (push into it).
    WriteOnly,
    /// Both.
    ReadWrite,
}

impl BulkMode {
    /// Whether it may be read.
    pub fn readable(self) -> bool {
        matches!(self, Self::ReadOnly | Self::ReadWrite)
    }

    /// Whether it may be written.
    pub fn writable(self) -> bool {
        matches!(self, Self::WriteOnly | Self::ReadWrite)
    }
}

/// The direction of a transfer, seen from the side that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BulkOp {
    /// Copy from the remote region into the local one.
    Pull,
    /// Copy from the local region into the remote one.
    Push,
}

/// How transfers are run; [`Engine::set_bulk_options`] sets the engine's,
/// and so does the `bulk` object of the JSON configuration
/// ([`crate::Config`]), where every key is optional and `timeout` is
/// `timeout_ms` (milliseconds, or `null`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkOptions {
    /// Bytes per message on the message path (capped so that a chunk fits
    /// the engine's maximum message size). Default 256 KiB: small enough
    /// that even a 1 MiB transfer has several chunks to pipeline (one is
    /// copied while the next travels).
    pub chunk_size: usize,
    /// Chunks in flight at once, per transfer. Default 8 (2 MiB).
    pub window: usize,
    /// A transfer that takes longer fails with [`Error::BulkTimeout`].
    /// Default: none.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Option<Duration>,
    /// Use the transport's direct memory copies when it offers them.
    /// Default: true.
    pub direct: bool,
    /// Smallest transfer that uses direct copies (a grant costs a round
    /// trip; a small transfer is cheaper in one message). Default 64 KiB.
    pub direct_threshold: usize,
    /// Bytes per grant on the direct path. Default 4 MiB: a grant carries
    /// no data, only addresses, so a transfer of up to 4 MiB costs one
    /// round trip and one system call; larger ones have several grants in
    /// flight (`window`), and a region dropped during a transfer stays
    /// readable for at most the copy of one such piece. Values under
    /// 64 KiB are taken as 64 KiB.
    pub direct_chunk: usize,
}

impl Default for BulkOptions {
    fn default() -> Self {
        Self {
            chunk_size: 256 << 10,
            window: 8,
            timeout: None,
            direct: true,
            direct_threshold: 64 << 10,
            direct_chunk: 4 << 20,
        }
    }
}

/// `Option<Duration>` as whole milliseconds (`null`: none) in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// What travels in a handle: the region's id and key, its mode, and the
/// range of it the handle covers.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Descriptor {
    id: u64,
    key: u128,
    mode: BulkMode,
    offset: u64,
    len: u64,
}

/// Withdraws a region when the last local handle on it is dropped.
struct Registration {
    inner: Weak<Inner>,
    region: Arc<Region>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.bulk.withdraw(self.region.id);
        }
    }
}

/// A handle on an exposed memory region (Margo's `hg_bulk_t`, Thallium's
/// `bulk`).
///
/// [`Engine::expose`] returns a *local* handle: it keeps the region exposed
/// while it (or a clone, or a [`Bulk::select`] of it) lives. Serialized —
/// inside RPC arguments — a handle carries only the region's id, key, mode
/// and range; deserialized, it is a *remote* handle, which a transfer uses
/// to name the peer's region. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct Bulk {
    desc: Descriptor,
    local: Option<Arc<Registration>>,
}

impl fmt::Debug for Bulk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulk")
            .field("region", &self.desc.id)
            .field("mode", &self.desc.mode)
            .field("offset", &self.desc.offset)
            .field("len", &self.desc.len)
            .field("local", &self.local.is_some())
            .finish()
    }
}

impl Serialize for Bulk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.desc.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bulk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self {
            desc: Descriptor::deserialize(d)?,
            local: None,
        })
    }
}

impl Bulk {
    /// Bytes the handle covers.
    pub fn len(&self) -> usize {
        usize::try_from(self.desc.len).unwrap_or(usize::MAX)
    }

    /// Whether it covers no byte.
    pub fn is_empty(&self) -> bool {
        self.desc.len == 0
    }

    /// The region's mode.
    pub fn mode(&self) -> BulkMode {
        self.desc.mode
    }

    /// Whether this is a region of this process (from [`Engine::expose`]),
    /// rather than a handle received from a peer.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The sub-range `offset..offset + len` of this handle (Thallium's
    /// `select`). A local selection keeps the region exposed too.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if the range is not inside the handle's.
    pub fn select(&self, offset: usize, len: usize) -> Result<Self> {
        let end = (offset as u64).checked_add(len as u64);
        if end.is_none_or(|e| e > self.desc.len) {
            return Err(Error::BulkInvalid(format!(
                "cannot select {offset}+{len} bytes of a handle of {} bytes",
                self.desc.len
            )));
        }
        Ok(Self {
            desc: Descriptor {
                offset: self.desc.offset + offset as u64,
                len: len as u64,
                ..self.desc
            },
            local: self.local.clone(),
        })
    }

    /// The handle's serialized form (postcard), for bindings that send it
    /// inside their own payloads.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] if encoding fails (it does not in practice).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard::to_allocvec(&self.desc)
            .map_err(|e| Error::BulkInvalid(format!("cannot encode a bulk handle: {e}")))
    }

    /// A remote handle from [`Bulk::to_bytes`]'s form.
    ///
    /// # Errors
    /// [`Error::BulkInvalid`] for bytes that are not a handle.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let desc = postcard::from_bytes(bytes)
            .map_err(|e| Error::BulkInvalid(format!("not a bulk handle: {e}")))?;
        Ok(Self { desc, local: None })
    }
}

/// A transfer started with [`Engine::transfer_nb`] (Margo's
/// `margo_bulk_itransfer`): it runs on the engine's runtime while the caller
/// goes on. Dropping the request does not stop the transfer.
#[derive(Debug)]
pub struct BulkRequest {
    task: tokio::task::JoinHandle<Result<()>>,
}

impl BulkRequest {
    /// Waits for the transfer to end.
    ///
    /// # Errors
    /// What the transfer failed with.
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(Error::BulkInvalid(format!("the transfer task failed: {e}"))),
        }
    }

    /// Whether the transfer has ended (then [`BulkRequest::wait`] returns at
    /// once).
    pub fn test(&self) -> bool {
        self.task.is_finished()
    }
}

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
}

/// Most buffers kept for reuse.
const POOLED_BUFFERS: usize = 16;
/// Largest buffer kept for reuse.
const POOLED_MAX: usize = 8 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        }
    }

    fn new_key(&self, id: u64) -> u128 {
        let lo = self.secret.hash_one((id, 0x6b65_795f_6c6f_u64));
        let hi = self.secret.hash_one((id, 0x6b65_795f_6869_u64));
        (u128::from(hi) << 64) | u128::from(lo)
    }

    fn withdraw(&self, id: u64) {
        lock(&self.regions).remove(&id);
    }

    pub(crate) fn forget_conn(&self, conn: u64) {
        lock(&self.leases).retain(|(c, _), _| *c != conn);
        lock(&self.no_direct).remove(&conn);
    }

    pub(crate) fn options(&self) -> BulkOptions {
        *lock(&self.options)
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
}

impl Engine {
    /// Exposes `segments`, end to end, as one region that peers may access
    /// as `mode` says (Thallium's `engine.expose`). The region stays exposed
    /// while the returned handle or a clone of it lives.
    ///
    /// ```
    /// # use courier::{BulkBuffer, BulkMode, Engine};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// # let engine = Engine::new("tcp").await?;
    /// let header = BulkBuffer::from(&b"HEAD"[..]);
    /// let body = BulkBuffer::new(1 << 20);
    /// let bulk = engine.expose([header, body], BulkMode::ReadWrite)?;
    /// assert_eq!(bulk.len(), 4 + (1 << 20));
    /// let body_only = bulk.select(4, 1 << 20)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Finalized`]; [`Error::BulkInvalid`] if the segments' lengths
    /// add up past `u64`, or a read-only segment (`Bytes`) is exposed
    /// writable.
    pub fn expose<S: BulkMemory>(
        &self,
        segments: impl IntoIterator<Item = S>,
        mode: BulkMode,
    ) -> Result<Bulk> {
        let inner = self.inner();
        if inner.is_finalizing() {
            return Err(Error::Finalized);
        }
        let table = &inner.bulk;
        let id = table.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let key = table.new_key(id);
        let segments: Vec<Arc<dyn BulkMemory>> = segments
            .into_iter()
            .map(|s| Arc::new(s) as Arc<dyn BulkMemory>)
            .collect();
        let region = Region::new(id, key, mode, segments)
            .ok_or_else(|| Error::BulkInvalid("the segments' lengths overflow".into()))?;
        if mode.writable() && !region.writable() {
            return Err(Error::BulkInvalid(format!(
                "a segment is read-only memory (such as Bytes): expose it ReadOnly, not {mode:?}"
            )));
        }
        let region = Arc::new(region);
        lock(&table.regions).insert(id, region.clone());
        Ok(Bulk {
            desc: Descriptor {
                id,
                key,
                mode,
                offset: 0,
                len: region.len as u64,
            },
            local: Some(Arc::new(Registration {
                inner: Arc::downgrade(inner),
                region,
            })),
        })
    }

    /// Sets how this engine runs transfers (chunks, window, timeout, direct
    /// copies).
    pub fn set_bulk_options(&self, options: BulkOptions) {
        *lock(&self.inner().bulk.options) = options;
    }

    /// How this engine runs transfers.
    pub fn bulk_options(&self) -> BulkOptions {
        self.inner().bulk.options()
    }

    /// Copies `len` bytes from `remote` (a handle exposed by the engine at
    /// `address`), starting at `remote_offset`, into `local` at
    /// `local_offset`.
    ///
    /// # Errors
    /// [`Error::BulkRefused`] (the peer refused: dropped region, forged
    /// key, mode, bounds), [`Error::BulkInvalid`] (the local side: not a
    /// local handle, mode, bounds), [`Error::BulkTimeout`],
    /// [`Error::ConnectionLost`] (the peer died mid-transfer),
    /// [`Error::Finalized`].
    pub async fn pull(
        &self,
        address: &Address,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.transfer(
            BulkOp::Pull,
            address,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
        )
        .await
    }

    /// Copies `len` bytes from `local` at `local_offset` into `remote` (a
    /// handle exposed by the engine at `address`) at `remote_offset`.
    ///
    /// # Errors
    /// See [`Engine::pull`].
    pub async fn push(
        &self,
        address: &Address,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.transfer(
            BulkOp::Push,
            address,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
        )
        .await
    }

    /// A pull or a push (PyMargo's `engine.transfer`).
    ///
    /// # Errors
    /// See [`Engine::pull`].
    #[allow(clippy::too_many_arguments)]
    pub async fn transfer(
        &self,
        op: BulkOp,
        address: &Address,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        let inner = self.inner();
        transfer::run(
            inner,
            &address.peer,
            op,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
            inner.bulk.options(),
        )
        .await
    }

    /// Starts a transfer and returns at once (Margo's
    /// `margo_bulk_itransfer`); [`BulkRequest::wait`] or
    /// [`BulkRequest::test`] it. Must be called inside the engine's tokio
    /// runtime context.
    #[allow(clippy::too_many_arguments)]
    pub fn transfer_nb(
        &self,
        op: BulkOp,
        address: &Address,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> BulkRequest {
        let inner = self.inner().clone();
        let peer = address.peer.clone();
        let (remote, local) = (remote.clone(), local.clone());
        let options = inner.bulk.options();
        let rt = inner.rt.clone();
        let task = rt.spawn(async move {
            transfer::run(
                &inner,
                &peer,
                op,
                &remote,
                remote_offset,
                &local,
                local_offset,
                len,
                options,
            )
            .await
        });
        BulkRequest { task }
    }
}

impl Handle {
    /// Pulls `len` bytes from `remote`, a region exposed by the caller of
    /// this request, into `local` (over the request's connection).
    ///
    /// # Errors
    /// See [`Engine::pull`].
    pub async fn pull(
        &self,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.bulk(
            BulkOp::Pull,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
        )
        .await
    }

    /// Pushes `len` bytes of `local` into `remote`, a region exposed by the
    /// caller of this request (over the request's connection).
    ///
    /// # Errors
    /// See [`Engine::pull`].
    pub async fn push(
        &self,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.bulk(
            BulkOp::Push,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
        )
        .await
    }

    async fn bulk(
        &self,
        op: BulkOp,
        remote: &Bulk,
        remote_offset: usize,
        local: &Bulk,
        local_offset: usize,
        len: usize,
    ) -> Result<()> {
        let address = self.address();
        let inner = &address.inner;
        transfer::run(
            inner,
            &address.peer,
            op,
            remote,
            remote_offset,
            local,
            local_offset,
            len,
            inner.bulk.options(),
        )
        .await
    }
}
