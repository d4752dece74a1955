//! Bulk transfers: `Bulk` handles, `Engine.create_bulk` and
//! `Engine.transfer` (PyMargo's `pymargo.bulk`), on the engine's bulk API.
//!
//! A region is one or several buffer-protocol objects ([`PyBufferMemory`]),
//! exposed with [`courier::Engine::expose`]; the engine reads and writes
//! them on its reader threads without the GIL. A `Bulk` made by
//! `create_bulk` is *local*: the region stays exposed while it lives (or
//! until `free()`). Pickled — as an RPC argument — it travels as its
//! serialized form and arrives as a *remote* handle.

use std::sync::{Arc, Mutex, MutexGuard};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::address::Address;
use crate::buffer::{self, PyBufferMemory};
use crate::errors;
use crate::remote::{self, Request};
use crate::shared::Shared;

/// PyMargo's access modes (Mercury's `HG_BULK_*` values), as
/// `courier.bulk.read_only` / `write_only` / `read_write` carry them.
const READ_ONLY: i64 = 1;
const WRITE_ONLY: i64 = 2;
const READ_WRITE: i64 = 3;
/// PyMargo's transfer operations (`HG_BULK_PUSH`, `HG_BULK_PULL`).
const PUSH: i64 = 0;
const PULL: i64 = 1;

/// A mode from `courier.bulk.read_only`, ... (an int) or its name.
fn parse_mode(mode: &Bound<'_, PyAny>) -> PyResult<courier::BulkMode> {
    let known = |v: i64| match v {
        READ_ONLY => Some(courier::BulkMode::ReadOnly),
        WRITE_ONLY => Some(courier::BulkMode::WriteOnly),
        READ_WRITE => Some(courier::BulkMode::ReadWrite),
        _ => None,
    };
    let parsed = if let Ok(s) = mode.extract::<String>() {
        match s.as_str() {
            "read_only" => Some(courier::BulkMode::ReadOnly),
            "write_only" => Some(courier::BulkMode::WriteOnly),
            "read_write" => Some(courier::BulkMode::ReadWrite),
            _ => None,
        }
    } else {
        mode.extract::<i64>().ok().and_then(known)
    };
    parsed.ok_or_else(|| {
        PyValueError::new_err(format!(
            "bulk mode {mode}: expected courier.bulk.read_only, write_only or read_write \
             (pymargo.bulk's names work too)"
        ))
    })
}

/// An operation from `courier.bulk.push` / `pull` (an int) or its name.
fn parse_op(op: &Bound<'_, PyAny>) -> PyResult<courier::BulkOp> {
    let parsed = if let Ok(s) = op.extract::<String>() {
        match s.as_str() {
            "push" => Some(courier::BulkOp::Push),
            "pull" => Some(courier::BulkOp::Pull),
            _ => None,
        }
    } else {
        match op.extract::<i64>() {
            Ok(PUSH) => Some(courier::BulkOp::Push),
            Ok(PULL) => Some(courier::BulkOp::Pull),
            _ => None,
        }
    };
    parsed.ok_or_else(|| {
        PyValueError::new_err(format!(
            "bulk operation {op}: expected courier.bulk.push or courier.bulk.pull"
        ))
    })
}

fn mode_value(mode: courier::BulkMode) -> i64 {
    match mode {
        courier::BulkMode::ReadOnly => READ_ONLY,
        courier::BulkMode::WriteOnly => WRITE_ONLY,
        courier::BulkMode::ReadWrite => READ_WRITE,
    }
}

fn mode_name(mode: courier::BulkMode) -> &'static str {
    match mode {
        courier::BulkMode::ReadOnly => "read_only",
        courier::BulkMode::WriteOnly => "write_only",
        courier::BulkMode::ReadWrite => "read_write",
    }
}

static BULK_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `courier.bulk` (the Python module with the enums and the unpickler).
fn bulk_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = BULK_MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("courier.bulk")?.unbind())
    })?;
    Ok(m.bind(py))
}

/// A handle on a memory region (PyMargo's `pymargo.bulk.Bulk`).
///
/// From `Engine.create_bulk`, it is *local*: the region stays exposed
/// while the object lives, or until `free()`. Passed as an RPC argument it
/// is pickled (only its id, key, mode and range travel); the receiver gets
/// a *remote* handle naming the sender's region, which its transfers use.
#[pyclass(module = "courier._native", name = "Bulk", frozen)]
pub(crate) struct Bulk {
    /// `None` once freed.
    inner: Mutex<Option<courier::Bulk>>,
    /// The engine that exposed it (local handles only).
    owner: Option<Arc<Shared>>,
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Withdraw the region, then release its buffers at once if nothing
        // else (a transfer in flight, a peer's grant) still holds them.
        let taken = match self.inner.get_mut() {
            Ok(inner) => inner.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(taken);
        Python::try_attach(buffer::release_pending);
    }
}

impl Bulk {
    fn new(inner: courier::Bulk, owner: Option<Arc<Shared>>) -> Self {
        Self {
            inner: Mutex::new(Some(inner)),
            owner,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<courier::Bulk>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The engine handle, or `BulkError` if freed.
    fn handle(&self, py: Python<'_>) -> PyResult<courier::Bulk> {
        self.lock().clone().ok_or_else(|| {
            errors::bulk_error(
                py,
                "this Bulk was freed (free() withdrew its region)".into(),
                None,
            )
        })
    }

    fn from_serialized(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let inner = courier::Bulk::from_bytes(data).map_err(|e| errors::to_py(py, &e))?;
        Ok(Self::new(inner, None))
    }
}

#[pymethods]
impl Bulk {
    /// Bytes the handle covers (Margo's `margo_bulk_get_size`).
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.len())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.size(py)
    }

    /// `courier.bulk.read_only`, `write_only` or `read_write`.
    #[getter]
    fn mode<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mode = self.handle(py)?.mode();
        bulk_module(py)?
            .getattr("Access")?
            .call1((mode_value(mode),))
    }

    /// Whether this is a region of this process (from `create_bulk`),
    /// rather than a handle received from a peer.
    #[getter]
    fn is_local(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.handle(py)?.is_local())
    }

    /// A handle on bytes `offset..offset + size` of this one (a local
    /// selection keeps the region exposed too).
    fn select(&self, py: Python<'_>, offset: usize, size: usize) -> PyResult<Self> {
        let inner = self
            .handle(py)?
            .select(offset, size)
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(Self::new(inner, self.owner.clone()))
    }

    /// Withdraws the region now (a local handle): later accesses by peers
    /// are refused, and the buffer is released once no transfer uses it.
    /// On a remote handle it only forgets the handle. Freeing twice is
    /// harmless.
    fn free(&self, py: Python<'_>) {
        let taken = self.lock().take();
        drop(taken);
        buffer::release_pending(py);
    }

    /// The handle's serialized form (PyMargo's `to_bytes`). `eager` is
    /// accepted for compatibility: the data itself never travels in the
    /// handle.
    #[pyo3(signature = (eager=false))]
    fn to_bytes<'py>(&self, py: Python<'py>, eager: bool) -> PyResult<Bound<'py, PyBytes>> {
        let _ = eager;
        let bytes = self
            .handle(py)?
            .to_bytes()
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The serialized form as a base64 string (PyMargo's `to_base64`).
    #[pyo3(signature = (eager=false))]
    fn to_base64(&self, py: Python<'_>, eager: bool) -> PyResult<String> {
        let bytes = self.to_bytes(py, eager)?;
        py.import("base64")?
            .getattr("b64encode")?
            .call1((bytes,))?
            .call_method1("decode", ("ascii",))?
            .extract()
    }

    /// A remote handle from `to_bytes`'s form (PyMargo's
    /// `Bulk.from_bytes(engine, data)`; `engine` is not needed and may be
    /// None).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, engine: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<Self> {
        let _ = engine;
        Self::from_serialized(py, data)
    }

    /// A remote handle from `to_base64`'s form (PyMargo's
    /// `Bulk.from_base64(engine, text)`).
    #[staticmethod]
    fn from_base64(py: Python<'_>, engine: &Bound<'_, PyAny>, text: &str) -> PyResult<Self> {
        let _ = engine;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("validate", true)?;
        let decoded = py
            .import("base64")?
            .getattr("b64decode")?
            .call((text,), Some(&kwargs))
            .map_err(|e| errors::bulk_error(py, format!("not a base64 bulk handle: {e}"), None))?;
        let data: Vec<u8> = decoded.extract()?;
        Self::from_serialized(py, &data)
    }

    /// Pickling sends the serialized handle; unpickled, it is a remote
    /// handle on the same region.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let data = self.to_bytes(py, false)?;
        let unpickle = bulk_module(py)?.getattr("_unpickle")?;
        PyTuple::new(py, [unpickle, PyTuple::new(py, [data])?.into_any()])
    }

    fn __repr__(&self) -> String {
        match &*self.lock() {
            None => "Bulk(freed)".to_owned(),
            Some(b) => format!(
                "Bulk(size={}, mode={}, {})",
                b.len(),
                mode_name(b.mode()),
                if b.is_local() { "local" } else { "remote" }
            ),
        }
    }
}

/// `Engine.create_bulk(array, mode)`: exposes `array` (a buffer-protocol
/// object, or a list or tuple of them, end to end).
/// With `write_into_bytes` (the `pymargo` shim), a `bytes` object may be
/// exposed writable, as PyMargo allows.
pub(crate) fn create_bulk(
    py: Python<'_>,
    shared: &Arc<Shared>,
    array: &Bound<'_, PyAny>,
    mode: &Bound<'_, PyAny>,
    write_into_bytes: bool,
) -> PyResult<Bulk> {
    let mode = parse_mode(mode)?;
    let objects: Vec<Bound<'_, PyAny>> =
        if array.is_instance_of::<PyList>() || array.is_instance_of::<PyTuple>() {
            array.try_iter()?.collect::<PyResult<_>>()?
        } else {
            vec![array.clone()]
        };
    let mut segments = Vec::with_capacity(objects.len());
    for obj in &objects {
        let memory = match obj.cast_exact::<PyBytes>() {
            Ok(bytes) if write_into_bytes && mode.writable() => {
                PyBufferMemory::writing_into_bytes(bytes)?
            }
            _ => PyBufferMemory::new(obj)?,
        };
        if mode.writable() && !memory.is_writable() {
            return Err(errors::bulk_error(
                py,
                format!(
                    "cannot expose a read-only {} as {}: Courier never writes into read-only \
                     memory; expose it read_only, or expose a bytearray, a writable \
                     memoryview or a numpy array",
                    obj.get_type().name()?,
                    mode_name(mode)
                ),
                None,
            ));
        }
        segments.push(memory);
    }
    let inner = shared
        .engine
        .expose(segments, mode)
        .map_err(|e| errors::to_py(py, &e))?;
    buffer::release_pending(py);
    Ok(Bulk::new(inner, Some(shared.clone())))
}

/// The arguments of `Engine.transfer(op, origin_addr, origin_handle,
/// origin_offset, local_handle, local_offset, size, blocking=True,
/// timeout=None)`, as PyMargo names them.
pub(crate) struct TransferArgs<'a, 'py> {
    pub(crate) op: &'a Bound<'py, PyAny>,
    pub(crate) origin_addr: &'a Bound<'py, PyAny>,
    pub(crate) origin_handle: &'a Bound<'py, PyAny>,
    pub(crate) origin_offset: usize,
    pub(crate) local_handle: &'a Bound<'py, PyAny>,
    pub(crate) local_offset: usize,
    pub(crate) size: usize,
    pub(crate) blocking: bool,
    pub(crate) timeout: Option<f64>,
}

/// `Engine.transfer`: PyMargo's offsets and size become the ranges of the
/// two handles of an engine transfer.
pub(crate) fn transfer(
    py: Python<'_>,
    shared: &Arc<Shared>,
    args: TransferArgs<'_, '_>,
) -> PyResult<Option<Request>> {
    let op = parse_op(args.op)?;
    let size = args.size;
    let after = remote::timeout_from_ms(args.timeout)?;
    let address = remote::resolve(py, shared, args.origin_addr)?;
    if let Ok(a) = args.origin_addr.cast::<Address>() {
        if !Arc::ptr_eq(&a.get().shared, shared) {
            return Err(errors::bulk_error(
                py,
                format!(
                    "the address {} belongs to another engine: look it up on this one \
                     (engine.lookup(str(address)))",
                    a.get().inner
                ),
                None,
            ));
        }
    }
    let remote = bulk_arg(py, args.origin_handle, "origin_handle")?;
    let local_obj = args.local_handle.cast::<Bulk>().map_err(|_| {
        PyTypeError::new_err(format!(
            "local_handle must be a Bulk from this engine's create_bulk, not {}",
            args.local_handle
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    let local = local_obj.get().handle(py)?;
    match &local_obj.get().owner {
        Some(owner) if Arc::ptr_eq(owner, shared) => {}
        Some(_) => {
            return Err(errors::bulk_error(
                py,
                "local_handle was created by another engine: expose the memory on the engine \
                 that runs the transfer"
                    .into(),
                None,
            ))
        }
        None => {
            return Err(errors::bulk_error(
                py,
                "local_handle came from a peer: a transfer's local handle must be a region \
                 of this process (create_bulk)"
                    .into(),
                None,
            ))
        }
    }
    // PyMargo's offsets and size become the ranges of the two handles.
    let part = |handle: &courier::Bulk, offset: usize, which: &str| {
        handle.select(offset, size).map_err(|_| {
            errors::bulk_error(
                py,
                format!(
                    "bytes {offset}+{size} are past the end of the {which} handle ({} bytes)",
                    handle.len()
                ),
                None,
            )
        })
    };
    let remote = part(&remote, args.origin_offset, "remote")?;
    let local = part(&local, args.local_offset, "local")?;
    let engine = shared.engine.clone();
    let work = async move {
        let mut run = engine.transfer(op, &address, &remote, &local);
        if let Some(after) = after {
            run = run.timeout(after);
        }
        run.await.map(|()| None::<bytes::Bytes>)
    };
    if args.blocking {
        let out = shared.wait(py, "Engine.transfer", work)?;
        buffer::release_pending(py);
        out.map(|_| None).map_err(|e| errors::to_py(py, &e))
    } else {
        let join = shared.spawn(work);
        shared.tick(py, "Engine.transfer")?;
        Ok(Some(Request::new(join, shared.clone())))
    }
}

/// The engine handle of a `Bulk` argument.
fn bulk_arg(py: Python<'_>, obj: &Bound<'_, PyAny>, what: &str) -> PyResult<courier::Bulk> {
    let bulk =
        obj.cast::<Bulk>().map_err(|_| {
            PyTypeError::new_err(format!(
            "{what} must be a Bulk (from create_bulk, or received in an RPC's arguments), not {}",
            obj.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
        ))
        })?;
    bulk.get().handle(py)
}

/// `courier.bulk._unpickle(data)`'s native half.
#[pyfunction]
pub(crate) fn _bulk_from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Bulk> {
    Bulk::from_serialized(py, data)
}
