//! `Address`: a peer engine, from `Engine.lookup` or `Handle.address`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors;
use crate::shared::Shared;

/// The address of an engine: prints as the string `lookup` takes, compares
/// and hashes by it. Calls through it share one connection.
#[pyclass(module = "courier._native", name = "Address", frozen)]
pub(crate) struct Address {
    pub(crate) inner: courier::Address,
    pub(crate) shared: Arc<Shared>,
}

impl Address {
    pub(crate) fn new(inner: courier::Address, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

#[pymethods]
impl Address {
    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Address('{}')", self.inner)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Self>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.inner.to_string().hash(&mut h);
        // Python reserves -1; keep the value in i64's positive range.
        h.finish() >> 1
    }

    /// Another reference to this address (PyMargo's `copy`).
    fn copy(slf: &Bound<'_, Self>) -> Py<Self> {
        slf.clone().unbind()
    }

    /// Asks that engine to finalize; it must have called
    /// `enable_remote_shutdown()` (else `CourierError`).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let addr = self.inner.clone();
        self.shared
            .wait(py, "Address.shutdown", async move { addr.shutdown().await })?
            .map_err(|e| errors::to_py(py, &e))
    }

    /// One engine-level round trip (no handler runs); returns seconds.
    #[pyo3(signature = (timeout=None))]
    fn ping(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<f64> {
        let after = crate::remote::timeout_from_ms(timeout)?;
        let addr = self.inner.clone();
        self.shared
            .wait(py, "Address.ping", async move { addr.ping(after).await })?
            .map(|d| d.as_secs_f64())
            .map_err(|e| errors::to_py(py, &e))
    }
}
