//! Python buffer-protocol objects as bulk memory: the binding's only
//! `unsafe` code.
//!
//! The engine reads and writes exposed memory on a connection's reader
//! thread, where the GIL must not be taken (a reader waiting for the GIL
//! would stall the connection behind whatever Python is doing). pyo3's safe
//! accessors of a buffer (`PyBuffer::copy_to_slice`, `as_slice`, ...) all
//! need the GIL, so [`PyBufferMemory`] reads the memory through the pointer
//! of the buffer it holds instead. That is sound because of two facts:
//!
//! * **The memory is pinned.** A buffer export (`PyObject_GetBuffer`) keeps
//!   the object alive and its memory at one address until the export is
//!   released: a `bytearray` refuses to resize while exported, a NumPy
//!   array refuses `resize`, a `bytes` never changes. [`PyBufferMemory`]
//!   owns the export for as long as it lives, and the engine keeps it alive
//!   while the region is exposed, while a transfer uses it and while a peer
//!   holds a grant on it (the shm fast path).
//! * **Accesses stay in bounds.** `len` is the export's length in bytes,
//!   taken once (a contiguous export is `len` bytes from its pointer).
//!   The engine promises never to ask for a range past it, but this module
//!   does not rely on a promise made in another crate: every access checks
//!   its range against `len` itself before it touches the memory
//!   ([`PinnedMemory`]), and refuses one outside with a panic naming it.
//!
//! Engine-side accesses are serialised among themselves by a lock (reads
//! share it, writes take it alone), as `BulkBuffer` does. The Python
//! program itself must not modify a range while a transfer on it runs (as
//! with Margo): it would see part of the transfer.
//!
//! Releasing an export needs the GIL, and a region may be dropped on a
//! thread that does not hold it (a reader, at the end of a grant or of a
//! non-blocking transfer). So exports are never released where the
//! region is dropped: they are queued, and released by the next Python
//! thread that drops a `Bulk` ([`release_pending`]) or by a background
//! thread that attaches to the interpreter for it. Nothing that holds an
//! engine lock ever waits for the GIL.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, Once, RwLock};

use courier::BulkMemory;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A contiguous buffer-protocol object exposed as bulk memory.
pub(crate) struct PyBufferMemory {
    /// The export; `None` only once handed to the release queue on drop.
    buffer: Option<PyUntypedBuffer>,
    /// The export's memory, valid and pinned while `buffer` holds it.
    memory: PinnedMemory,
}

impl std::fmt::Debug for PyBufferMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyBufferMemory")
            .field("len", &self.memory.len)
            .field("writable", &self.memory.writable)
            .finish_non_exhaustive()
    }
}

impl PyBufferMemory {
    /// Exports `obj`'s buffer. Errors: `TypeError` if it has none,
    /// `ValueError` if its memory is not one contiguous block.
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        Self::export(obj, false)
    }

    /// Exports a `bytes` object's buffer as writable memory, as PyMargo
    /// does (the `pymargo` shim's `create_bulk`): peers may then write into
    /// an object Python holds immutable (docs/python.md names the hazard).
    /// Only `bytes` itself: its bytes are always in the object's own
    /// allocation, in the interpreter's writable memory, whereas another
    /// read-only export (a memoryview of a read-only `mmap`) may be mapped
    /// read-only, where a write would crash the process.
    pub(crate) fn writing_into_bytes(obj: &Bound<'_, PyBytes>) -> PyResult<Self> {
        Self::export(obj.as_any(), true)
    }

    fn export(obj: &Bound<'_, PyAny>, bytes_writable: bool) -> PyResult<Self> {
        let buffer = PyUntypedBuffer::get(obj).map_err(|e| {
            PyTypeError::new_err(format!(
                "a bulk region is made of objects that support the buffer protocol (bytes, \
                 bytearray, memoryview, array.array, numpy arrays, ...); {} does not: {e}",
                type_name(obj)
            ))
        })?;
        if buffer.suboffsets().is_some()
            || !(buffer.is_c_contiguous() || buffer.is_fortran_contiguous())
        {
            return Err(PyValueError::new_err(format!(
                "the memory of this {} is not contiguous (a strided view, such as a[::2]); \
                 expose a contiguous copy of it",
                type_name(obj)
            )));
        }
        // Only for an object that is exactly `bytes` (`writing_into_bytes`
        // takes nothing else; checked again here, where it matters).
        let bytes_writable = bytes_writable && obj.is_exact_instance_of::<PyBytes>();
        // SAFETY: a contiguous export is `len_bytes()` bytes from its
        // pointer, writable unless `readonly`, and stays valid and at one
        // address until the export is released (module comment). A `bytes`
        // object's export is read-only by Python's rule, not by its memory:
        // its bytes are inside the object's own allocation (or a static
        // singleton of the interpreter's), which is ordinary writable memory,
        // so writing them is sound for Rust; what breaks is Python's promise
        // that they never change, which the `pymargo` shim's caller accepted
        // (docs/python.md). The returned value keeps the export beside
        // `memory` and releases it only once dropped (its `Drop` queues
        // it), so it outlives `memory`.
        let memory = unsafe {
            PinnedMemory::new(
                buffer.buf_ptr() as usize,
                buffer.len_bytes(),
                !buffer.readonly() || bytes_writable,
            )
        };
        Ok(Self {
            buffer: Some(buffer),
            memory,
        })
    }

    /// Whether the memory may be written.
    pub(crate) fn is_writable(&self) -> bool {
        self.memory.writable
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "object".to_owned(), |n| n.to_string())
}

impl BulkMemory for PyBufferMemory {
    fn len(&self) -> usize {
        self.memory.len
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        self.memory.read_with(offset, len, f);
    }

    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.memory.write_with(offset, len, f);
    }

    fn writable(&self) -> bool {
        self.memory.writable
    }

    fn direct_addr(&self) -> Option<u64> {
        // Pinned while exported (module comment): a peer on the same host
        // may copy it directly once the engine granted the range.
        Some(self.memory.addr as u64)
    }
}

/// An access outside the memory: bytes `offset..offset + len` of
/// `memory_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfRange {
    offset: usize,
    len: usize,
    memory_len: usize,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes at offset {} of a {}-byte buffer, past its end",
            self.len, self.offset, self.memory_len
        )
    }
}

/// `Ok` if bytes `offset..offset + len` lie within `0..memory_len` (and the
/// sum does not overflow).
pub(crate) fn checked_range(
    offset: usize,
    len: usize,
    memory_len: usize,
) -> Result<(), OutOfRange> {
    match offset.checked_add(len) {
        Some(end) if end <= memory_len => Ok(()),
        _ => Err(OutOfRange {
            offset,
            len,
            memory_len,
        }),
    }
}

/// Memory at a fixed address, read and written without the GIL: the part
/// of [`PyBufferMemory`] that holds the unsafe accesses (and no Python
/// object, so its unit tests need no interpreter).
///
/// Every access checks its range against `len` itself, before it touches
/// the memory, rather than trust the engine's promise (the `BulkMemory`
/// contract) to stay inside. The trait's methods return nothing, so an
/// access outside is refused with a panic that names it: it reads and
/// writes nothing.
struct PinnedMemory {
    /// The memory's start, as an address (a pointer is not `Send`).
    addr: usize,
    /// Its length in bytes.
    len: usize,
    /// Whether it may be written (for an export: not `bytes`, not a
    /// read-only memoryview or array).
    writable: bool,
    /// Serialises the engine's own accesses: reads share it, writes take
    /// it alone.
    access: RwLock<()>,
}

impl PinnedMemory {
    /// # Safety
    /// `addr` points to `len` bytes that stay valid, and at that address,
    /// for as long as the returned value lives, and that may be written
    /// if `writable` (through this value only: the caller does not access
    /// them meanwhile, or accepts to see part of a transfer, as with Margo).
    unsafe fn new(addr: usize, len: usize, writable: bool) -> Self {
        Self {
            addr,
            len,
            writable,
            access: RwLock::new(()),
        }
    }

    /// Panics, naming the range, unless `offset..offset + len` is inside
    /// the memory; called before every access.
    fn check(&self, offset: usize, len: usize) {
        if let Err(e) = checked_range(offset, len, self.len) {
            panic!("courier-py: bulk memory access refused: {e}");
        }
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        self.check(offset, len);
        if len == 0 {
            return f(&[]);
        }
        let _shared = self.access.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the memory at `self.addr` is valid and pinned for
        // `self.len` bytes while `self` lives (`new`'s contract); `check`
        // above made sure that `offset + len <= self.len` without
        // overflow, so the `add` and the `len` bytes after it stay inside
        // it; `len > 0` here, so the pointer is non-null. Writes by the
        // engine are excluded by the lock held above.
        let bytes =
            unsafe { std::slice::from_raw_parts((self.addr as *const u8).add(offset), len) };
        f(bytes);
    }

    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        self.check(offset, len);
        if len == 0 || !self.writable {
            // A read-only export is never exposed writable (`writable()`
            // says so, and `expose` refuses it): nothing to write into.
            return;
        }
        let _alone = self.access.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `read_with`, the memory is valid and pinned for
        // `self.len` bytes, and `check` above made sure that the range is
        // inside it; it may be written (`self.writable`, `new`'s
        // contract); the lock held above excludes every other access by
        // the engine.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut((self.addr as *mut u8).add(offset), len) };
        f(bytes);
    }
}

impl Drop for PyBufferMemory {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            release_later(buffer);
        }
    }
}

/// Exports waiting to be released with the GIL, and the releasing thread's
/// wake-up.
static PENDING: Mutex<VecDeque<PyUntypedBuffer>> = Mutex::new(VecDeque::new());
static READY: Condvar = Condvar::new();
static RELEASER: Once = Once::new();

fn pending() -> MutexGuard<'static, VecDeque<PyUntypedBuffer>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues `buffer` for release; starts the releasing thread on first use.
fn release_later(buffer: PyUntypedBuffer) {
    RELEASER.call_once(|| {
        // If the thread cannot start, exports wait for the next `Bulk`
        // that Python drops (`release_pending`).
        let _ = std::thread::Builder::new()
            .name("courier-py-release".into())
            .spawn(releaser);
    });
    pending().push_back(buffer);
    READY.notify_one();
}

/// Releases the queued exports; the caller holds the GIL.
pub(crate) fn release_pending(_py: Python<'_>) {
    let drained: Vec<PyUntypedBuffer> = pending().drain(..).collect();
    // Dropped here, attached: `PyBuffer_Release` at once.
    drop(drained);
}

/// The releasing thread: waits for exports without the GIL, then attaches
/// and takes the queue with it held (so a Python thread that drops a
/// `Bulk` and calls `release_pending` before letting the GIL go releases
/// its own export itself, synchronously).
fn releaser() {
    loop {
        {
            let mut q = pending();
            while q.is_empty() {
                q = READY.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
        // Not while the interpreter shuts down: the exports are left to
        // the end of the process.
        if Python::try_attach(release_pending).is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{checked_range, OutOfRange, PinnedMemory};

    /// `PinnedMemory` over a buffer of the test's: the accesses of a
    /// `PyBufferMemory`, with no interpreter.
    fn over(bytes: &mut [u8]) -> PinnedMemory {
        // SAFETY: in every test below `bytes` outlives the returned value
        // (declared before it, read again only after the value's scope),
        // and nothing else touches it meanwhile.
        unsafe { PinnedMemory::new(bytes.as_mut_ptr() as usize, bytes.len(), true) }
    }

    #[test]
    fn ranges_inside_the_memory_pass_and_others_are_refused() {
        for (offset, len) in [(0, 8), (8, 0), (3, 5), (0, 0)] {
            assert_eq!(checked_range(offset, len, 8), Ok(()), "{offset}+{len}");
        }
        for (offset, len) in [
            (0, 9),
            (8, 1),
            (9, 0),
            (4, 5),
            (1, usize::MAX),
            (usize::MAX, 1),
        ] {
            assert_eq!(
                checked_range(offset, len, 8),
                Err(OutOfRange {
                    offset,
                    len,
                    memory_len: 8
                }),
                "{offset}+{len}"
            );
        }
    }

    #[test]
    fn in_range_accesses_read_and_write_the_memory() {
        let mut bytes = *b"abcdefgh";
        let mut seen = Vec::new();
        {
            let memory = over(&mut bytes);
            memory.read_with(2, 3, &mut |b| seen.extend_from_slice(b));
            memory.read_with(8, 0, &mut |b| assert!(b.is_empty()));
            memory.write_with(6, 2, &mut |b| b.copy_from_slice(b"XY"));
        }
        assert_eq!(seen, b"cde");
        assert_eq!(&bytes, b"abcdefXY");
    }

    #[test]
    #[should_panic(
        expected = "access refused: 3 bytes at offset 6 of a 8-byte buffer, past its end"
    )]
    fn an_out_of_range_read_is_refused() {
        let mut bytes = [0u8; 8];
        over(&mut bytes).read_with(6, 3, &mut |_| unreachable!("read past the end"));
    }

    #[test]
    #[should_panic(expected = "access refused: 2 bytes at offset")]
    fn an_overflowing_write_is_refused() {
        let mut bytes = [0u8; 8];
        over(&mut bytes).write_with(usize::MAX, 2, &mut |_| unreachable!("wrote past the end"));
    }
}
