//! Optional abilities a connection may offer beyond moving messages.
//!
//! Every transport moves messages; some can do more for the engine. A
//! connection says what it can do through
//! [`Connection::capabilities`](crate::Connection::capabilities), which by
//! default offers nothing: a plugin that ignores this module loses no
//! feature, only a faster path.
//!
//! The one capability so far is [`DirectMemory`]: copying bytes straight
//! between this process and the peer's memory (the shm plugin does it with
//! `process_vm_readv` / `process_vm_writev`). The engine uses it for bulk
//! transfers after the exposing side granted the access (checked its key,
//! mode and bounds) and told where the bytes are; without it, bulk data
//! travels in messages.

use std::fmt;
use std::io;
use std::sync::Arc;

/// A range of the peer process's memory: its address there and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRange {
    /// Address in the peer's address space.
    pub addr: u64,
    /// Number of bytes.
    pub len: usize,
}

/// Copies bytes between this process and the peer process's memory.
///
/// The ranges come from the peer itself (a grant message), so a transport
/// offering this must only do so when the peer may read and write this
/// process's memory anyway (same user, ptrace allowed): the capability adds
/// speed, not trust.
pub trait DirectMemory: Send + Sync + fmt::Debug + 'static {
    /// Fills `dst` from the peer's `ranges` (in order; their lengths add up
    /// to `dst.len()`).
    ///
    /// # Errors
    /// The system refused (no permission, the peer is gone, a range is not
    /// mapped in the peer).
    fn read_peer(&self, ranges: &[PeerRange], dst: &mut [u8]) -> io::Result<()>;

    /// Copies `src` into the peer's `ranges` (in order; their lengths add up
    /// to `src.len()`).
    ///
    /// # Errors
    /// See [`DirectMemory::read_peer`].
    fn write_peer(&self, ranges: &[PeerRange], src: &[u8]) -> io::Result<()>;
}

/// What a connection can do besides moving messages. `Default` is nothing.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Direct copies to and from the peer's memory, if offered.
    pub direct_memory: Option<Arc<dyn DirectMemory>>,
}

impl Capabilities {
    /// Capabilities with direct memory access through `direct`.
    pub fn with_direct_memory(direct: Arc<dyn DirectMemory>) -> Self {
        Self {
            direct_memory: Some(direct),
        }
    }
}
