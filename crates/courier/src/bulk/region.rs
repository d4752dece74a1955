//! Exposed memory: the [`BulkMemory`] trait, the ready-made [`BulkBuffer`],
//! a region's [`BulkMode`], and a region made of one or several segments.

use std::fmt;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use courier_transport::PeerRange;
use serde::{Deserialize, Serialize};

use crate::sync::{read, write};

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

/// Memory a bulk region is made of: the engine reads and writes it through
/// these methods, from any thread, while a transfer runs.
///
/// The length must not change while the memory is exposed. Implementations
/// synchronise inside (a lock, or memory that tolerates concurrent access):
/// the methods take `&self`. [`BulkBuffer`] is the ready-made one; a binding
/// implements this over its own buffers (a Python buffer-protocol object,
/// for instance) so that transfers read and write them in place.
pub trait BulkMemory: Send + Sync + 'static {
    /// Length in bytes.
    fn len(&self) -> usize;

    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with bytes `offset..offset + len` to read them. The engine
    /// never asks for a range past [`BulkMemory::len`].
    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8]));

    /// Calls `f` with bytes `offset..offset + len` to overwrite them.
    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8]));

    /// Bytes `offset..offset + len` as shared bytes, if the memory can hand
    /// them out without copying (memory that never changes, such as
    /// [`Bytes`]). The message path then sends them as they are instead of
    /// copying them into the message. Default: `None`.
    fn bytes(&self, offset: usize, len: usize) -> Option<Bytes> {
        let _ = (offset, len);
        None
    }

    /// Whether the engine may write it. Memory that returns `false` can
    /// only be exposed [`BulkMode::ReadOnly`]. Default: `true`.
    fn writable(&self) -> bool {
        true
    }

    /// The address of byte 0 in this process, if the memory stays at one
    /// address while exposed: it lets a peer on the same host copy it
    /// directly (the shm fast path, `process_vm_readv`). `None` (the
    /// default) keeps transfers of this memory on the message path.
    fn direct_addr(&self) -> Option<u64> {
        None
    }
}

impl<T: BulkMemory + ?Sized> BulkMemory for Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        (**self).read_with(offset, len, f);
    }
    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        (**self).write_with(offset, len, f);
    }
    fn bytes(&self, offset: usize, len: usize) -> Option<Bytes> {
        (**self).bytes(offset, len)
    }
    fn writable(&self) -> bool {
        (**self).writable()
    }
    fn direct_addr(&self) -> Option<u64> {
        (**self).direct_addr()
    }
}

/// Immutable bytes, exposed read-only: the message path sends them without
/// a copy, and the shm fast path copies straight out of them.
impl BulkMemory for Bytes {
    fn len(&self) -> usize {
        Self::len(self)
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        f(&self[offset..offset + len]);
    }

    fn write_with(&self, _offset: usize, _len: usize, _f: &mut dyn FnMut(&mut [u8])) {
        // Never called: `writable` is false, so the region is read-only and
        // the engine refuses every write before it gets here.
    }

    fn bytes(&self, offset: usize, len: usize) -> Option<Bytes> {
        Some(self.slice(offset..offset + len))
    }

    fn writable(&self) -> bool {
        false
    }

    fn direct_addr(&self) -> Option<u64> {
        // `Bytes` never moves its bytes; peers only read them (read-only).
        Some(self.as_ptr() as u64)
    }
}

/// A fixed-size byte buffer to expose: cheap to clone (the clones share the
/// bytes), readable and writable by the program through [`BulkBuffer::read`]
/// and [`BulkBuffer::write`] while the engine transfers into or out of it.
///
/// As with Margo, the program should not touch the bytes of a range while
/// a transfer on it is in flight: it would see a part of the transfer.
#[derive(Clone, Default)]
pub struct BulkBuffer {
    data: Arc<RwLock<Box<[u8]>>>,
}

impl fmt::Debug for BulkBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkBuffer")
            .field("len", &self.len())
            .finish()
    }
}

impl BulkBuffer {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self::from(vec![0u8; len])
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.read(|b| b.len())
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.read(<[u8]>::to_vec)
    }

    /// Runs `f` on the bytes.
    pub fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let guard = read(&self.data);
        f(&guard)
    }

    /// Runs `f` on the bytes, to change them.
    pub fn write<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut guard = write(&self.data);
        f(&mut guard)
    }
}

impl From<Vec<u8>> for BulkBuffer {
    fn from(v: Vec<u8>) -> Self {
        Self {
            data: Arc::new(RwLock::new(v.into_boxed_slice())),
        }
    }
}

impl From<&[u8]> for BulkBuffer {
    fn from(v: &[u8]) -> Self {
        Self::from(v.to_vec())
    }
}

impl BulkMemory for BulkBuffer {
    fn len(&self) -> usize {
        Self::len(self)
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        self.read(|b| f(&b[offset..offset + len]));
    }

    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.write(|b| f(&mut b[offset..offset + len]));
    }

    fn direct_addr(&self) -> Option<u64> {
        // A boxed slice never moves nor grows: its address is the buffer's
        // for as long as it lives. Taken from the mutable view, as a peer
        // may write through it.
        Some(self.write(|b| b.as_mut_ptr() as u64))
    }
}

/// An exposed region: its id and key, its mode, its segments end to end.
pub(crate) struct Region {
    pub(crate) id: u64,
    pub(crate) key: u128,
    pub(crate) mode: BulkMode,
    segments: Vec<(usize, Arc<dyn BulkMemory>)>,
    pub(crate) len: usize,
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("id", &self.id)
            .field("mode", &self.mode)
            .field("segments", &self.segments.len())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Region {
    /// A region of `segments`; `None` if their lengths overflow.
    pub(crate) fn new(
        id: u64,
        key: u128,
        mode: BulkMode,
        segments: Vec<Arc<dyn BulkMemory>>,
    ) -> Option<Self> {
        let mut len = 0usize;
        let mut with_len = Vec::with_capacity(segments.len());
        for s in segments {
            let l = s.len();
            len = len.checked_add(l)?;
            with_len.push((l, s));
        }
        Some(Self {
            id,
            key,
            mode,
            segments: with_len,
            len,
        })
    }

    /// Calls `f(segment, offset in it, length, position in the range)` for
    /// each piece of `offset..offset + len` (within the region).
    fn pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&dyn BulkMemory, usize, usize, usize),
    ) {
        let end = offset + len;
        let mut start = 0usize;
        let mut pos = offset;
        for (seg_len, seg) in &self.segments {
            let seg_end = start + seg_len;
            if pos < seg_end && pos < end {
                let n = seg_end.min(end) - pos;
                f(seg.as_ref(), pos - start, n, pos - offset);
                pos += n;
            }
            if pos >= end {
                break;
            }
            start = seg_end;
        }
    }

    /// Bytes `offset..offset + len` as shared pieces, if every segment it
    /// touches hands them out without copying.
    pub(crate) fn shared_pieces(&self, offset: usize, len: usize) -> Option<Vec<Bytes>> {
        let mut pieces = Vec::new();
        let mut ok = true;
        self.pieces(offset, len, |seg, at, n, _| match seg.bytes(at, n) {
            Some(b) if ok && b.len() == n => pieces.push(b),
            _ => ok = false,
        });
        ok.then_some(pieces)
    }

    /// Whether every segment may be written.
    pub(crate) fn writable(&self) -> bool {
        self.segments.iter().all(|(_, s)| s.writable())
    }

    /// Appends bytes `offset..offset + len` to `out`.
    pub(crate) fn append_to(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        self.pieces(offset, len, |seg, at, n, _| {
            seg.read_with(at, n, &mut |s| out.extend_from_slice(s));
        });
    }

    /// Writes `src` at `offset`.
    pub(crate) fn write_from(&self, offset: usize, src: &[u8]) {
        self.pieces(offset, src.len(), |seg, at, n, pos| {
            seg.write_with(at, n, &mut |d| d.copy_from_slice(&src[pos..pos + n]));
        });
    }

    /// Calls `f(position in the range, bytes)` on each piece, to read.
    pub(crate) fn read_pieces(&self, offset: usize, len: usize, mut f: impl FnMut(usize, &[u8])) {
        self.pieces(offset, len, |seg, at, n, pos| {
            seg.read_with(at, n, &mut |s| f(pos, s));
        });
    }

    /// Calls `f(position in the range, bytes)` on each piece, to write.
    pub(crate) fn write_pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(usize, &mut [u8]),
    ) {
        self.pieces(offset, len, |seg, at, n, pos| {
            seg.write_with(at, n, &mut |d| f(pos, d));
        });
    }

    /// Where `offset..offset + len` is in this process's memory, if every
    /// segment it touches has a stable address.
    pub(crate) fn direct_ranges(&self, offset: usize, len: usize) -> Option<Vec<PeerRange>> {
        let mut ranges = Vec::new();
        let mut ok = true;
        self.pieces(offset, len, |seg, at, n, _| match seg.direct_addr() {
            Some(base) => ranges.push(PeerRange {
                addr: base + at as u64,
                len: n,
            }),
            None => ok = false,
        });
        ok.then_some(ranges)
    }
}
