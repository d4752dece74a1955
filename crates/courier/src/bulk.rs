//! Bulk transfers: expose memory, and let a peer pull from it or push into
//! it directly, so that large payloads never ride inside an RPC message
//! (Margo's bulk API, Thallium's `expose`).
//!
//! The caller exposes a region ([`Engine::expose`]) and sends its [`Bulk`]
//! handle inside an ordinary RPC (a `Bulk` is serde-serializable); the
//! handler pulls the data from it or pushes its answer into it
//! ([`Handle::pull`], [`Handle::push`], [`Engine::transfer`]).
//!
//! A handle carries its range: a transfer copies the whole *source* range
//! (the remote handle of a pull, the local handle of a push) to the start of
//! the *destination* range, which must be at least as long. To move part of
//! a region, slice its handle: `handle.pull(&remote.slice(a..b)?,
//! &local.slice(c..)?)`.
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
//!         handle.pull(&remote, &bulk).await?;
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
//! ([`BulkOptions::chunk_size`](crate::BulkOptions::chunk_size), 256 KiB by default) and several chunks are in
//! flight at once ([`BulkOptions::window`](crate::BulkOptions::window)). A pull sends one small
//! `BulkPull` request per chunk, answered by a response carrying the bytes;
//! a push sends `BulkPush` messages carrying the bytes, each acknowledged.
//! Chunks are ordinary messages, so RPCs on the same connection go between
//! them: a large transfer does not hold up small calls.
//!
//! **Direct copies (shm).** When the connection offers
//! [`DirectMemory`](crate::transport::DirectMemory), a transfer of at least
//! [`BulkOptions::direct_threshold`](crate::BulkOptions::direct_threshold) bytes asks the exposing engine for a
//! *grant*: the same checks as above, then the addresses of the range in the
//! exposing process. The bytes are then copied with one system call
//! (`process_vm_readv` / `process_vm_writev`), and the grant is released.
//! If the system refuses (ptrace not permitted), the connection falls back
//! to messages for good. See `docs/bulk.md` for the trust model.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::address::Address;
use crate::cancel::{self, CancelToken};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::handler::Handle;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::timeouts;

pub(crate) mod handle;
pub(crate) mod region;
pub(crate) mod serve;
pub(crate) mod table;
pub(crate) mod transfer;
pub(crate) mod wire;

pub use crate::config::BulkOptions;
pub use handle::Bulk;
pub use region::{BulkBuffer, BulkMemory, BulkMode};
pub use transfer::BulkOp;

/// A transfer to run: made by [`Engine::transfer`], [`Engine::pull`],
/// [`Engine::push`], [`Handle::pull`] and [`Handle::push`].
///
/// Await it to run it; or [`Transfer::start`] it (Margo's
/// `margo_bulk_itransfer`) and go on while it runs. Its timeout is
/// [`Transfer::timeout`] if set, else the engine's `timeouts.bulk_ms`.
#[must_use = "a transfer does nothing until it is awaited or started"]
pub struct Transfer<'a> {
    state: Arc<EngineState>,
    peer: Arc<Peer>,
    op: BulkOp,
    remote: &'a Bulk,
    local: &'a Bulk,
    timeout: Option<Duration>,
    options: Option<BulkOptions>,
}

impl std::fmt::Debug for Transfer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("op", &self.op)
            .field("peer", &self.peer.addr.to_string())
            .field("remote", self.remote)
            .field("local", self.local)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<'a> Transfer<'a> {
    fn new(
        state: Arc<EngineState>,
        peer: Arc<Peer>,
        op: BulkOp,
        remote: &'a Bulk,
        local: &'a Bulk,
    ) -> Self {
        Self {
            state,
            peer,
            op,
            remote,
            local,
            timeout: None,
            options: None,
        }
    }

    /// Fails the transfer with [`Error::BulkTimeout`] if it takes longer
    /// than `after` (instead of the engine's `timeouts.bulk_ms`).
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Runs this transfer with `options` instead of the engine's.
    pub fn options(mut self, options: BulkOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Starts the transfer on the engine's runtime and returns at once
    /// (Margo's `margo_bulk_itransfer`); [`BulkRequest::wait`] or
    /// [`BulkRequest::test`] it. Dropping the request does not stop the
    /// transfer; the cancellation of the request whose handler started it
    /// does ([`Error::Cancelled`]).
    pub fn start(self) -> BulkRequest {
        let (remote, local) = (self.remote.clone(), self.local.clone());
        let inherited = cancel::current();
        let deadline = timeouts::bulk(
            &self.state.config.timeouts,
            self.timeout,
            inherited.as_ref().and_then(CancelToken::deadline),
        );
        let options = self.options.unwrap_or_else(|| self.state.bulk.options());
        let (state, peer, op) = (self.state, self.peer, self.op);
        let rt = state.rt.clone();
        let task = rt.spawn(async move {
            let bounds = transfer::Bounds {
                deadline,
                inherited,
            };
            transfer::run(&state, &peer, op, &remote, &local, options, bounds).await
        });
        BulkRequest { task }
    }
}

impl<'a> IntoFuture for Transfer<'a> {
    type Output = Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        // A transfer made by a handler inherits its request's deadline
        // (unless it has a timeout of its own) and is cancelled with it.
        let inherited = cancel::current();
        let deadline = timeouts::bulk(
            &self.state.config.timeouts,
            self.timeout,
            inherited.as_ref().and_then(CancelToken::deadline),
        );
        let options = self.options.unwrap_or_else(|| self.state.bulk.options());
        Box::pin(async move {
            transfer::run(
                &self.state,
                &self.peer,
                self.op,
                self.remote,
                self.local,
                options,
                transfer::Bounds {
                    deadline,
                    inherited,
                },
            )
            .await
        })
    }
}

/// A transfer started with [`Transfer::start`]: it runs on the engine's
/// runtime while the caller goes on. Dropping the request does not stop the
/// transfer.
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

impl Engine {
    /// Exposes `segments`, end to end, as one region that peers may access
    /// as `mode` says (Thallium's `engine.expose`). The region stays exposed
    /// while the returned handle or a clone (or slice) of it lives.
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
    /// let body_only = bulk.slice(4..)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Finalized`]; [`Error::BulkInvalid`] if the segments' lengths
    /// add up past `usize`, or a read-only segment (`Bytes`) is exposed
    /// writable.
    pub fn expose<S: BulkMemory>(
        &self,
        segments: impl IntoIterator<Item = S>,
        mode: BulkMode,
    ) -> Result<Bulk> {
        let state = self.state();
        if state.is_finalizing() {
            return Err(Error::Finalized);
        }
        let segments: Vec<Arc<dyn BulkMemory>> = segments
            .into_iter()
            .map(|s| Arc::new(s) as Arc<dyn BulkMemory>)
            .collect();
        let region = state.bulk.expose(segments, mode)?;
        Ok(Bulk::exposed(&state.bulk, region))
    }

    /// Sets how this engine runs transfers (chunks, window, direct copies).
    pub fn set_bulk_options(&self, options: BulkOptions) {
        self.state().bulk.set_options(options);
    }

    /// How this engine runs transfers.
    pub fn bulk_options(&self) -> BulkOptions {
        self.state().bulk.options()
    }

    /// A pull or a push with the engine at `address` (PyMargo's
    /// `engine.transfer`): copies all of the source range — `remote` for a
    /// pull, `local` for a push — to the start of the destination range,
    /// which must be at least as long. Slice the handles to move part of a
    /// region.
    ///
    /// ```
    /// # use courier::{BulkBuffer, BulkMode, BulkOp, Engine};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> courier::Result<()> {
    /// # let a = Engine::new("mem").await?;
    /// # let b = Engine::builder("mem").client().build().await?;
    /// let data = a.expose([BulkBuffer::from(&b"0123456789"[..])], BulkMode::ReadOnly)?;
    /// let buf = BulkBuffer::new(4);
    /// let local = b.expose([buf.clone()], BulkMode::WriteOnly)?;
    /// let addr = b.lookup(&a.address().to_string()).await?;
    /// // Bytes 3..7 of `data` into `buf`.
    /// b.transfer(BulkOp::Pull, &addr, &data.slice(3..7)?, &local).await?;
    /// assert_eq!(buf.to_vec(), b"3456");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// (When awaited.) [`Error::BulkRefused`] (the peer refused: dropped
    /// region, forged key, mode, bounds), [`Error::BulkInvalid`] (the local
    /// side: not a local handle, mode, a destination shorter than the
    /// source), [`Error::BulkTimeout`], [`Error::ConnectionLost`] (the peer
    /// died mid-transfer), [`Error::Finalized`].
    pub fn transfer<'a>(
        &self,
        op: BulkOp,
        address: &Address,
        remote: &'a Bulk,
        local: &'a Bulk,
    ) -> Transfer<'a> {
        Transfer::new(
            self.state().clone(),
            address.peer.clone(),
            op,
            remote,
            local,
        )
    }

    /// Copies all of `remote` (a range exposed by the engine at `address`)
    /// into `local`; see [`Engine::transfer`].
    pub fn pull<'a>(&self, address: &Address, remote: &'a Bulk, local: &'a Bulk) -> Transfer<'a> {
        self.transfer(BulkOp::Pull, address, remote, local)
    }

    /// Copies all of `local` into `remote` (a range exposed by the engine at
    /// `address`); see [`Engine::transfer`].
    pub fn push<'a>(&self, address: &Address, remote: &'a Bulk, local: &'a Bulk) -> Transfer<'a> {
        self.transfer(BulkOp::Push, address, remote, local)
    }
}

impl Handle {
    /// Pulls all of `remote`, a range exposed by the caller of this
    /// request, into `local` (over the request's connection); see
    /// [`Engine::transfer`].
    pub fn pull<'a>(&self, remote: &'a Bulk, local: &'a Bulk) -> Transfer<'a> {
        self.transfer(BulkOp::Pull, remote, local)
    }

    /// Pushes all of `local` into `remote`, a range exposed by the caller
    /// of this request (over the request's connection); see
    /// [`Engine::transfer`].
    pub fn push<'a>(&self, remote: &'a Bulk, local: &'a Bulk) -> Transfer<'a> {
        self.transfer(BulkOp::Push, remote, local)
    }

    /// A pull or a push with the caller of this request.
    pub fn transfer<'a>(&self, op: BulkOp, remote: &'a Bulk, local: &'a Bulk) -> Transfer<'a> {
        let address = self.address();
        Transfer::new(address.state, address.peer, op, remote, local)
    }
}
