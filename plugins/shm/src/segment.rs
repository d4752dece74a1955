//! The shared segment's layout and header, and the system calls around it:
//! creating and sealing the memfd, the eventfds, and passing them over the
//! unix socket with `SCM_RIGHTS`. All through rustix's safe API; the mapping
//! itself is in `shared.rs`.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::event::{eventfd, EventfdFlags};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// `CRSHMSEG`, little-endian: the first eight bytes of every segment.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"CRSHMSEG");
/// Version of the segment layout and handshake.
pub(crate) const VERSION: u32 = 1;
/// Offset of the first ring's control block (the header is one cache line).
pub(crate) const CTL_OFFSET: usize = 64;
/// Size of one ring's control block (`RingCtl`: five cache lines).
pub(crate) const CTL_LEN: usize = 5 * 64;
/// Offset of the first ring's data area: one page after the start, so the
/// data areas are page-aligned.
pub(crate) const DATA_OFFSET: usize = 4096;
/// Smallest ring a server accepts (and a transport can be configured with).
pub(crate) const MIN_RING: usize = 4096;
/// Largest ring a server accepts (and a transport can be configured with).
pub(crate) const MAX_RING: usize = 1 << 30;
/// Bytes of the header that are defined (the rest of its line is zero).
const HEADER_LEN: usize = 40;
/// The name memfds get (shown in `/proc/<pid>/maps` and `/proc/<pid>/fd`).
pub(crate) const MEMFD_NAME: &str = "courier-shm";
/// Seals a segment must carry before a server maps it.
pub(crate) const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);
/// What a client sends with the segment's descriptors.
pub(crate) const HELLO: [u8; 8] = *b"CRSHMHI\x01";
/// Descriptors passed by a client: the memfd, then the four eventfds.
pub(crate) const FD_COUNT: usize = 5;
/// The server's answer when it accepted the segment.
pub(crate) const ACCEPTED: u8 = 1;
/// The server's answer (followed by a reason) when it refused it.
pub(crate) const REFUSED: u8 = 0;

/// Where things are in a segment with rings of a given size.
///
/// ```text
/// 0                 header: magic, version, offsets, ring size, segment size
/// 64                ring 0 control block (client -> server)   5 lines
/// 384               ring 1 control block (server -> client)   5 lines
/// 4096              ring 0 data area                          ring_size bytes
/// 4096 + ring_size  ring 1 data area                          ring_size bytes
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    ring_size: usize,
}

impl Layout {
    /// The layout for rings of `ring_size` bytes, if it is a power of two in
    /// `[MIN_RING, MAX_RING]`.
    pub(crate) fn new(ring_size: usize) -> Option<Self> {
        (ring_size.is_power_of_two() && (MIN_RING..=MAX_RING).contains(&ring_size))
            .then_some(Self { ring_size })
    }

    /// Bytes of one ring's data area.
    pub(crate) fn ring_size(self) -> usize {
        self.ring_size
    }

    /// Size of the whole segment.
    pub(crate) fn total(self) -> usize {
        DATA_OFFSET + 2 * self.ring_size
    }

    /// Offset of ring `ring`'s control block.
    pub(crate) fn ctl_offset(self, ring: usize) -> usize {
        CTL_OFFSET + ring * CTL_LEN
    }

    /// Offset of ring `ring`'s data area.
    pub(crate) fn data_offset(self, ring: usize) -> usize {
        DATA_OFFSET + ring * self.ring_size
    }

    /// The header bytes (little-endian):
    /// magic u64, version u32, ctl offset u32, ctl length u32,
    /// data offset u32, ring size u64, segment size u64.
    pub(crate) fn header(self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(CTL_OFFSET as u32).to_le_bytes());
        h[16..20].copy_from_slice(&(CTL_LEN as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(DATA_OFFSET as u32).to_le_bytes());
        h[24..32].copy_from_slice(&(self.ring_size as u64).to_le_bytes());
        h[32..40].copy_from_slice(&(self.total() as u64).to_le_bytes());
        h
    }

    /// Parses and checks a header; the reason names the first thing wrong.
    pub(crate) fn parse(h: &[u8; HEADER_LEN]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let magic = u64_at(0);
        if magic != MAGIC {
            return Err(format!(
                "bad magic {:02x?} (expected {:02x?})",
                magic.to_le_bytes(),
                MAGIC.to_le_bytes()
            ));
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!(
                "segment version {version}, this side speaks {VERSION}"
            ));
        }
        let fixed = [
            ("control block offset", u32_at(12), CTL_OFFSET),
            ("control block length", u32_at(16), CTL_LEN),
            ("data offset", u32_at(20), DATA_OFFSET),
        ];
        for (what, got, want) in fixed {
            if got as usize != want {
                return Err(format!("{what} is {got}, expected {want}"));
            }
        }
        let ring_size = u64_at(24);
        let layout = usize::try_from(ring_size)
            .ok()
            .and_then(Self::new)
            .ok_or_else(|| {
                format!(
                    "ring size {ring_size} is not a power of two between {MIN_RING} and {MAX_RING}"
                )
            })?;
        let total = u64_at(32);
        if total != layout.total() as u64 {
            return Err(format!(
                "segment size {total} in the header, but rings of {ring_size} bytes need {}",
                layout.total()
            ));
        }
        Ok(layout)
    }
}

fn io(e: rustix::io::Errno) -> io::Error {
    e.into()
}

/// Creates a client's segment: a memfd of the layout's size with its header
/// written, sealed against shrinking, growing and further sealing.
pub(crate) fn create_memfd(layout: Layout) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(MEMFD_NAME, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(io)?;
    rustix::fs::ftruncate(&fd, layout.total() as u64).map_err(io)?;
    write_all_at(&fd, &layout.header(), 0)?;
    rustix::fs::fcntl_add_seals(&fd, SEALS).map_err(io)?;
    Ok(fd)
}

/// Writes `buf` at `offset` of a file (used for headers, before mapping).
pub(crate) fn write_all_at(fd: &OwnedFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = rustix::io::pwrite(fd, buf, offset).map_err(io)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Reads and checks the header of a segment a client passed, before
/// anything is mapped.
pub(crate) fn read_header(fd: &OwnedFd) -> Result<Layout, String> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match rustix::io::pread(fd, &mut h[got..], got as u64) {
            Ok(0) => {
                return Err(format!(
                    "the segment is {got} bytes long, shorter than its header"
                ))
            }
            Ok(n) => got += n,
            Err(e) => return Err(format!("cannot read the segment header: {}", io(e))),
        }
    }
    Layout::parse(&h)
}

/// Checks that a segment cannot shrink under a mapping of `layout` (sealed)
/// and is exactly its size. The seal is checked first: once it is there,
/// the size read after it cannot go down any more.
pub(crate) fn check_sealed_size(fd: &OwnedFd, layout: Layout) -> Result<(), String> {
    let seals = rustix::fs::fcntl_get_seals(fd)
        .map_err(|e| format!("cannot read the segment's seals (not a memfd?): {}", io(e)))?;
    if !seals.contains(SEALS) {
        return Err(format!(
            "the segment is not sealed against shrinking, growing and resealing \
             (seals {seals:?}, need {SEALS:?})"
        ));
    }
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("cannot stat the segment: {}", io(e)))?;
    if u64::try_from(stat.st_size).ok() != Some(layout.total() as u64) {
        return Err(format!(
            "the segment is {} bytes long, its header says {}",
            stat.st_size,
            layout.total()
        ));
    }
    Ok(())
}

/// The segment's inode number: the same on both ends of a connection,
/// different for every segment alive.
pub(crate) fn inode(fd: &OwnedFd) -> io::Result<u64> {
    Ok(rustix::fs::fstat(fd).map_err(io)?.st_ino)
}

/// A non-blocking, close-on-exec eventfd.
pub(crate) fn new_eventfd() -> io::Result<OwnedFd> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io)
}

/// Makes a descriptor a peer passed non-blocking (it could have passed a
/// blocking one, and a blocking read or write would stall a runtime thread).
pub(crate) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true).map_err(io)
}

/// Adds one to an eventfd's counter: wakes whoever waits on it. A full
/// counter (`EAGAIN`) means a wake-up is already pending, which is as good.
pub(crate) fn signal(fd: impl AsFd) {
    if let Err(e) = rustix::io::write(fd, &1u64.to_ne_bytes()) {
        if e != rustix::io::Errno::AGAIN {
            tracing::debug!("cannot signal a shared-memory peer: {}", io(e));
        }
    }
}

/// Resets an eventfd's counter; `WouldBlock` when it was zero.
pub(crate) fn drain(fd: impl AsFd) -> io::Result<()> {
    let mut buf = [0u8; 8];
    rustix::io::read(fd, &mut buf).map(drop).map_err(io)
}

/// Looks at the socket without taking anything: `Ok(0)` at end of file.
pub(crate) fn peek(socket: &UnixStream) -> io::Result<usize> {
    let mut buf = [0u8; 1];
    rustix::net::recv(socket, &mut buf, RecvFlags::PEEK | RecvFlags::DONTWAIT)
        .map(|(n, _)| n)
        .map_err(io)
}

/// Sends `payload` with the descriptors `fds` attached (`SCM_RIGHTS`).
pub(crate) async fn send_with_fds(
    socket: &UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(FD_COUNT))];
    let sent = socket
        .async_io(Interest::WRITABLE, || {
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "too many descriptors for one message",
                ));
            }
            rustix::net::sendmsg(
                socket,
                &[IoSlice::new(payload)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io)
        })
        .await?;
    if sent != payload.len() {
        // A unix stream socket takes a message this small whole or not at all.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the handshake was only partly sent",
        ));
    }
    Ok(())
}

/// What [`recv_with_fds`] got.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of payload.
    pub(crate) len: usize,
    /// The descriptors attached (close-on-exec), in order.
    pub(crate) fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit.
    pub(crate) truncated: bool,
}

/// Receives up to `buf.len()` bytes and the descriptors attached to them.
/// Room is made for more descriptors than expected, so that a peer sending
/// too many is detected (and the extra ones closed) rather than truncated.
pub(crate) async fn recv_with_fds(socket: &UnixStream, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2 * FD_COUNT))];
    socket
        .async_io(Interest::READABLE, || {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = rustix::net::recvmsg(
                socket,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io)?;
            let mut fds = Vec::new();
            for m in control.drain() {
                if let RecvAncillaryMessage::ScmRights(rights) = m {
                    fds.extend(rights);
                }
            }
            Ok(Received {
                len: msg.bytes,
                fds,
                truncated: msg.flags.contains(ReturnFlags::CTRUNC),
            })
        })
        .await
}

/// Borrows descriptors for [`send_with_fds`].
pub(crate) fn borrow_all<'a>(fds: &'a [&'a OwnedFd]) -> Vec<BorrowedFd<'a>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_each_field() {
        let layout = Layout::new(1 << 20).unwrap();
        assert_eq!(Layout::parse(&layout.header()), Ok(layout));
        for (i, what) in [
            (0, "bad magic"),
            (8, "version"),
            (12, "control block offset"),
            (16, "control block length"),
            (20, "data offset"),
            (25, "ring size"),
            (33, "segment size"),
        ] {
            let mut h = layout.header();
            h[i] ^= 0x40;
            let err = Layout::parse(&h).unwrap_err();
            assert!(err.contains(what), "byte {i}: {err}");
        }
        assert!(Layout::new(3000).is_none());
        assert!(Layout::new(2048).is_none());
        assert!(Layout::new(MAX_RING * 2).is_none());
    }
}
