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
//!   taken once (a contiguous export is `len` bytes from its pointer), and
//!   the engine never asks for a range past `len`.
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

/// A contiguous buffer-protocol object exposed as bulk memory.
pub(crate) struct PyBufferMemory {
    /// The export; `None` only once handed to the release queue on drop.
    buffer: Option<PyUntypedBuffer>,
    /// The export's pointer, as an address (the pointer is not `Send`).
    addr: usize,
    /// The export's length in bytes.
    len: usize,
    /// Whether the exporter allows writes (not `bytes`, not a read-only
    /// memoryview or array).
    writable: bool,
    /// Serialises the engine's own accesses: reads share it, writes take
    /// it alone.
    access: RwLock<()>,
}

impl std::fmt::Debug for PyBufferMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyBufferMemory")
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl PyBufferMemory {
    /// Exports `obj`'s buffer. Errors: `TypeError` if it has none,
    /// `ValueError` if its memory is not one contiguous block.
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
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
        let addr = buffer.buf_ptr() as usize;
        let len = buffer.len_bytes();
        let writable = !buffer.readonly();
        Ok(Self {
            buffer: Some(buffer),
            addr,
            len,
            writable,
            access: RwLock::new(()),
        })
    }

    /// Whether the memory may be written.
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map_or_else(|_| "object".to_owned(), |n| n.to_string())
}

impl BulkMemory for PyBufferMemory {
    fn len(&self) -> usize {
        self.len
    }

    fn read_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&[u8])) {
        if len == 0 {
            return f(&[]);
        }
        let _shared = self.access.read().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `self.buffer` holds the export, so the memory at
        // `self.addr` is alive, pinned and `self.len` bytes long until this
        // value is dropped (module comment); the engine asks only for
        // ranges inside `0..self.len` (the `BulkMemory` contract), and
        // `len > 0` here, so the pointer is non-null. Writes by the engine
        // are excluded by the lock held above.
        let bytes =
            unsafe { std::slice::from_raw_parts((self.addr as *const u8).add(offset), len) };
        f(bytes);
    }

    fn write_with(&self, offset: usize, len: usize, f: &mut dyn FnMut(&mut [u8])) {
        if len == 0 || !self.writable {
            // A read-only export is never exposed writable (`writable()`
            // says so, and `expose` refuses it): nothing to write into.
            return;
        }
        let _alone = self.access.write().unwrap_or_else(|e| e.into_inner());
        // SAFETY: as in `read_with`, the memory is alive, pinned and
        // `self.len` bytes long, and the range is inside it; the exporter
        // allows writes (`self.writable`, its `readonly` flag is 0); the
        // lock held above excludes every other access by the engine.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut((self.addr as *mut u8).add(offset), len) };
        f(bytes);
    }

    fn writable(&self) -> bool {
        self.writable
    }

    fn direct_addr(&self) -> Option<u64> {
        // Pinned while exported (module comment): a peer on the same host
        // may copy it directly once the engine granted the range.
        Some(self.addr as u64)
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
