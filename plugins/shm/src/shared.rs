//! The shared mapping: the crate's only `unsafe` code.
//!
//! Three things need it, and nothing else does:
//!
//! 1. mapping the segment ([`map`]): safe only if the file cannot be
//!    truncated under the mapping, which the seals guarantee and `map`
//!    checks right before mapping;
//! 2. viewing a ring's control block in the mapping as a [`RingCtl`] (a
//!    struct of atomics) — [`RingWriter::ctl`], [`RingReader::ctl`];
//! 3. copying bytes into and out of a ring's data area with
//!    `ptr::copy_nonoverlapping` — [`RingWriter::write`], [`RingReader::read`],
//!    [`RingReader::read_append`];
//! 4. the bulk fast path's direct copies to and from the peer process
//!    ([`copy_peer`]: `process_vm_readv` / `process_vm_writev` through
//!    `libc`, which rustix does not wrap).
//!
//! Each process gets exactly one [`RingWriter`] (for the ring it produces)
//! and one [`RingReader`] (for the ring it consumes) per mapping, from
//! [`map`], and they take `&mut self` to copy: within this process nothing
//! else touches those bytes. The other process follows the same protocol on
//! its own mapping; if it does not, it can only change the values of bytes
//! and atomics we read (every bit pattern is a valid `u8` and a valid atomic
//! integer, and we bound-check every offset against our own copy of the
//! layout), never make us touch memory outside the mapping.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use bytes::BytesMut;
use memmap2::{MmapMut, MmapOptions};

use crate::ring::{ConsumerMem, ProducerMem, RingCtl};
use crate::segment::{self, Layout, CTL_LEN, CTL_OFFSET, DATA_OFFSET};

// The layout the header announces is the layout of `RingCtl`, and the control
// blocks fit before the (page-aligned) data areas.
const _: () = {
    assert!(std::mem::size_of::<RingCtl>() == CTL_LEN);
    assert!(std::mem::align_of::<RingCtl>() == 64);
    assert!(CTL_OFFSET.is_multiple_of(64) && CTL_LEN.is_multiple_of(64));
    assert!(CTL_OFFSET + 2 * CTL_LEN <= DATA_OFFSET);
    assert!(DATA_OFFSET.is_multiple_of(4096));
};

/// One mapped segment, unmapped when the last ring handle is dropped.
#[derive(Debug)]
struct Mapping {
    /// Owns the mapping (`munmap` on drop).
    _map: MmapMut,
    /// Start of the mapping (page-aligned), valid for `layout.total()` bytes
    /// for as long as `_map` lives.
    base: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Mapping` is a pointer to memory it owns (through `_map`, which is
// itself `Send + Sync`). Sharing it between threads is sound because every
// access through `base` is either an atomic operation (the control blocks)
// or a copy on a range that one `RingWriter`/`RingReader` — unique in this
// process, used through `&mut self` — has exclusive use of by the ring
// protocol.
unsafe impl Send for Mapping {}
// SAFETY: see `Send` above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The control block of ring `ring` (0 or 1).
    fn ctl(&self, ring: usize) -> &RingCtl {
        debug_assert!(ring < 2);
        let offset = self.layout.ctl_offset(ring);
        // SAFETY: `offset + size_of::<RingCtl>()` is within the mapping
        // (`CTL_OFFSET + 2 * CTL_LEN <= DATA_OFFSET <= total`, checked at
        // compile time above) and a multiple of 64 from a page-aligned base,
        // so the pointer is in bounds and aligned for `RingCtl`
        // (`align(64)`). `RingCtl` is made of atomic integers only, which have
        // the layout of plain integers and accept every bit pattern, so the
        // zero-filled or peer-written bytes are a valid value; atomics allow
        // the concurrent writes of the other process. The reference cannot
        // outlive `&self`, and the mapping lives as long as `self`.
        unsafe { &*self.base.as_ptr().add(offset).cast::<RingCtl>() }
    }

    /// Pointer to byte `at` of ring `ring`'s data area, checking that
    /// `len` bytes from there stay inside it.
    fn data(&self, ring: usize, at: usize, len: usize) -> *mut u8 {
        let size = self.layout.ring_size();
        // Our own offsets (the ring masks them and splits wrapping copies):
        // a failure here is a bug in this crate, never peer input. Checked
        // in release builds too, because the copies below rely on it.
        assert!(
            ring < 2 && at <= size && len <= size - at,
            "ring copy out of bounds: ring {ring}, offset {at}, length {len}, size {size}"
        );
        // SAFETY: `data_offset(ring) + at + len <= data_offset(1) + size ==
        // total`, the mapping's length, so the resulting pointer (and the
        // `len` bytes after it) are inside the mapping.
        unsafe { self.base.as_ptr().add(self.layout.data_offset(ring) + at) }
    }
}

/// Maps the segment `fd` (whose header parsed as `layout`) and returns the
/// writer of ring `produce` and the reader of the other ring, with the
/// segment's inode number. The caller closes `fd` afterwards: the mapping
/// stays.
///
/// `populate` pre-faults the whole mapping (`MAP_POPULATE`), so the first
/// messages do not pay page faults. Only the client, which created the
/// segment and pays for its memory, asks for it: a server that populated
/// whatever size a client announced would let a client make it allocate.
pub(crate) fn map(
    fd: &OwnedFd,
    layout: Layout,
    produce: usize,
    populate: bool,
) -> io::Result<(RingWriter, RingReader, u64)> {
    // Re-checked here, right before mapping, because the mapping's safety
    // depends on it and not on what a caller did before.
    segment::check_sealed_size(fd, layout)
        .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
    let inode = segment::inode(fd)?;
    let mut options = MmapOptions::new();
    options.len(layout.total());
    if populate {
        options.populate();
    }
    // SAFETY: `MmapMut::map_mut` is unsafe because another process could
    // truncate the file and make accesses to the mapping fault (SIGBUS), or
    // write it while we hold references into it. Truncation: the file carries
    // F_SEAL_SHRINK (checked just above, and a seal can never be removed),
    // and its size, read after the seal was seen, is the `layout.total()`
    // bytes we map. Concurrent writes: we never make references to the
    // mapped bytes except to the atomics of the control blocks; data bytes
    // are only copied with raw pointers (see the module docs).
    let mut map = unsafe { options.map_mut(fd)? };
    let base = NonNull::new(map.as_mut_ptr())
        .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
    let mapping = Arc::new(Mapping {
        _map: map,
        base,
        layout,
    });
    let produce = produce & 1;
    Ok((
        RingWriter {
            mapping: mapping.clone(),
            ring: produce,
        },
        RingReader {
            mapping,
            ring: 1 - produce,
        },
        inode,
    ))
}

/// The producer's access to one ring of a mapping.
#[derive(Debug)]
pub(crate) struct RingWriter {
    mapping: Arc<Mapping>,
    ring: usize,
}

impl ProducerMem for RingWriter {
    fn ctl(&self) -> &RingCtl {
        self.mapping.ctl(self.ring)
    }

    fn capacity(&self) -> u64 {
        self.mapping.layout.ring_size() as u64
    }

    fn write(&mut self, at: usize, src: &[u8]) {
        let dst = self.mapping.data(self.ring, at, src.len());
        // SAFETY: `dst..dst + src.len()` is inside the mapping (checked by
        // `data`). The ring protocol gives the producer exclusive use of the
        // free part of the ring, which is where the producer writes; this
        // writer is the only one of this ring in this process and is
        // borrowed mutably. `src` cannot overlap the mapping: no reference
        // into the mapped data is ever handed out.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }
}

/// The consumer's access to one ring of a mapping.
#[derive(Debug)]
pub(crate) struct RingReader {
    mapping: Arc<Mapping>,
    ring: usize,
}

impl ConsumerMem for RingReader {
    fn ctl(&self) -> &RingCtl {
        self.mapping.ctl(self.ring)
    }

    fn capacity(&self) -> u64 {
        self.mapping.layout.ring_size() as u64
    }

    fn read(&mut self, at: usize, dst: &mut [u8]) {
        let src = self.mapping.data(self.ring, at, dst.len());
        // SAFETY: `src..src + dst.len()` is inside the mapping (checked by
        // `data`); the consumer has exclusive use of the published part of
        // the ring, which is where it reads, and this reader is unique in
        // this process. `dst` is a live `&mut [u8]` of this process, so it
        // cannot overlap the mapping. A hostile peer writing these bytes
        // concurrently only changes their values (any `u8` is valid).
        unsafe { ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    fn read_append(&mut self, at: usize, len: usize, dst: &mut BytesMut) {
        let src = self.mapping.data(self.ring, at, len);
        dst.reserve(len);
        let spare = dst.spare_capacity_mut();
        assert!(spare.len() >= len, "BytesMut::reserve did not reserve");
        // SAFETY: the source range is inside the mapping and ours to read
        // (as in `read`); the destination is `len` bytes of `dst`'s spare
        // capacity (reserved and checked just above), which cannot overlap
        // the mapping. After the copy those `len` bytes are initialized, so
        // extending `dst`'s length over them is sound.
        unsafe {
            ptr::copy_nonoverlapping(src, spare.as_mut_ptr().cast::<u8>(), len);
            dst.set_len(dst.len() + len);
        }
    }
}

// ---------------------------------------------------------------------------
// Direct copies to and from a peer process (the bulk fast path).
// ---------------------------------------------------------------------------

/// Most iovecs one `process_vm_readv` / `process_vm_writev` takes
/// (`IOV_MAX` on Linux).
const MAX_IOV: usize = 1024;

/// The direction of a direct copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Peer memory → `local`.
    FromPeer,
    /// `local` → peer memory.
    ToPeer,
}

/// Copies between `local` and the peer process `pid`'s `ranges` (whose
/// lengths add up to `local.len()`), with `process_vm_readv` (from the
/// peer) or `process_vm_writev` (to the peer), looping over short copies.
///
/// The kernel checks that this process may access the peer's memory
/// (`PTRACE_MODE_ATTACH_REALCREDS`: the same user and a ptrace policy that
/// allows it, or `CAP_SYS_PTRACE`) and that every remote range is mapped
/// in the peer; a refusal is an error (`EPERM`, `ESRCH`, `EFAULT`), never a
/// fault in this process.
pub(crate) fn copy_peer(
    pid: i32,
    direction: Direction,
    ranges: &[courier_transport::PeerRange],
    local: LocalBytes<'_>,
) -> io::Result<()> {
    // Checked here, not trusted from the caller: an overflowing sum would
    // wrap in a release build and pass the comparison below.
    let total = ranges
        .iter()
        .try_fold(0usize, |sum, r| sum.checked_add(r.len))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "remote ranges whose lengths add up past usize::MAX",
            )
        })?;
    let mut local = local;
    // For `Write` the pointer comes from the `&mut` (the kernel writes
    // through it); for `Read` the kernel only reads through it.
    let (local_ptr, local_len) = match &mut local {
        LocalBytes::Read(b) => (b.as_ptr().cast_mut(), b.len()),
        LocalBytes::Write(b) => (b.as_mut_ptr(), b.len()),
    };
    if total != local_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("remote ranges of {total} bytes for a local buffer of {local_len}"),
        ));
    }
    // The remote iovecs: addresses in the peer, never dereferenced here.
    let mut remote: Vec<libc::iovec> = ranges
        .iter()
        .filter(|r| r.len > 0)
        .map(|r| libc::iovec {
            iov_base: r.addr as usize as *mut libc::c_void,
            iov_len: r.len,
        })
        .collect();
    let mut done = 0usize;
    let mut first = 0usize;
    while done < local_len {
        let batch = &remote[first..remote.len().min(first + MAX_IOV)];
        let batch_len: usize = batch.iter().map(|v| v.iov_len).sum();
        let local_iov = libc::iovec {
            // SAFETY: `done + batch_len <= local_len` (the batches split
            // `ranges`, whose lengths add up to `local_len`), so the
            // pointer stays inside `local`'s buffer.
            iov_base: unsafe { local_ptr.add(done) }.cast::<libc::c_void>(),
            iov_len: batch_len,
        };
        // SAFETY: the local iovec covers `batch_len` bytes of `local`, a
        // live slice borrowed for this whole call: mutably (`Write`) when
        // the kernel writes it (`process_vm_readv`), shared (`Read`) when
        // it only reads it (`process_vm_writev`). The remote iovecs are
        // interpreted by the kernel in the peer's address space only, with
        // its permission checks; the kernel never touches this process's
        // memory outside the local iovec. Both arrays outlive the call.
        let n = unsafe {
            match direction {
                Direction::FromPeer => libc::process_vm_readv(
                    pid,
                    &local_iov,
                    1,
                    batch.as_ptr(),
                    batch.len() as libc::c_ulong,
                    0,
                ),
                Direction::ToPeer => libc::process_vm_writev(
                    pid,
                    &local_iov,
                    1,
                    batch.as_ptr(),
                    batch.len() as libc::c_ulong,
                    0,
                ),
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut n = n as usize;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the kernel copied nothing (a remote range is not mapped in the peer)",
            ));
        }
        done += n;
        // Skip the remote iovecs fully copied; trim a partly copied one.
        while n > 0 && first < remote.len() {
            let v = &mut remote[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                v.iov_base = (v.iov_base as usize + n) as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// The local side of a direct copy.
#[derive(Debug)]
pub(crate) enum LocalBytes<'a> {
    /// Copied to the peer.
    Read(&'a [u8]),
    /// Filled from the peer.
    Write(&'a mut [u8]),
}

#[cfg(test)]
mod direct_tests {
    #![allow(clippy::unwrap_used)]

    use super::{copy_peer, Direction, LocalBytes};
    use courier_transport::PeerRange;

    fn range_of(b: &[u8], from: usize, len: usize) -> PeerRange {
        PeerRange {
            addr: b[from..].as_ptr() as u64,
            len,
        }
    }

    /// Ranges whose lengths overflow when added are refused before any
    /// copy, not wrapped around into a length that matches.
    #[test]
    fn overflowing_ranges_are_refused() {
        let pid = std::process::id() as i32;
        let ranges = [
            PeerRange {
                addr: 0,
                len: usize::MAX,
            },
            PeerRange { addr: 0, len: 9 },
        ];
        // usize::MAX + 9 wraps to 8, the local length.
        let mut dst = [0u8; 8];
        let err = copy_peer(
            pid,
            Direction::FromPeer,
            &ranges,
            LocalBytes::Write(&mut dst),
        )
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        assert_eq!(dst, [0u8; 8]);
    }

    /// Copies within this process (always permitted) gather and scatter
    /// several ranges in order.
    #[test]
    fn copies_gather_and_scatter_ranges() {
        let pid = std::process::id() as i32;
        let source: Vec<u8> = (0..=255u8).collect();
        let ranges = [range_of(&source, 10, 5), range_of(&source, 200, 3)];
        let mut dst = [0u8; 8];
        copy_peer(
            pid,
            Direction::FromPeer,
            &ranges,
            LocalBytes::Write(&mut dst),
        )
        .unwrap();
        assert_eq!(dst, [10, 11, 12, 13, 14, 200, 201, 202]);

        let mut target = vec![0u8; 16];
        let base = target.as_mut_ptr() as u64;
        let ranges = [
            PeerRange {
                addr: base + 1,
                len: 2,
            },
            PeerRange {
                addr: base + 8,
                len: 2,
            },
        ];
        copy_peer(
            pid,
            Direction::ToPeer,
            &ranges,
            LocalBytes::Read(&[7, 8, 9, 10]),
        )
        .unwrap();
        assert_eq!(&target[..11], &[0, 7, 8, 0, 0, 0, 0, 0, 9, 10, 0]);
    }

    /// Refusals are errors: lengths that do not match, an address not
    /// mapped, a process that does not exist.
    #[test]
    fn refusals_are_errors() {
        let pid = std::process::id() as i32;
        let mut dst = [0u8; 4];
        let bad_len = [PeerRange {
            addr: dst.as_ptr() as u64,
            len: 3,
        }];
        assert!(copy_peer(
            pid,
            Direction::FromPeer,
            &bad_len,
            LocalBytes::Write(&mut dst)
        )
        .is_err());
        let unmapped = [PeerRange { addr: 8, len: 4 }];
        assert!(copy_peer(
            pid,
            Direction::FromPeer,
            &unmapped,
            LocalBytes::Write(&mut dst)
        )
        .is_err());
        let source = [1u8; 4];
        let ok = [PeerRange {
            addr: source.as_ptr() as u64,
            len: 4,
        }];
        // pid_max is at most 2^22: this pid does not exist.
        let err = copy_peer(
            i32::MAX,
            Direction::FromPeer,
            &ok,
            LocalBytes::Write(&mut dst),
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }
}
