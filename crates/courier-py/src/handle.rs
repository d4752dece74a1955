//! `Handle`: the server's view of one request.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::address::Address;
use crate::errors;
use crate::pickle;
use crate::remote::Request;
use crate::shared::Shared;

/// Passed to a handler as its first argument: who sent the request
/// (`address`), and `respond(value)` to answer it. A handler may keep it
/// and respond later; if every reference is dropped without a response,
/// the caller gets an error instead of waiting forever.
#[pyclass(module = "courier._native", name = "Handle", frozen)]
pub(crate) struct Handle {
    inner: Arc<courier::Handle>,
    shared: Arc<Shared>,
}

impl Handle {
    pub(crate) fn new(inner: courier::Handle, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
        }
    }
}

#[pymethods]
impl Handle {
    /// Sends `value` (pickled) to the caller. With `blocking=False` it
    /// returns at once with a `Request` to `wait()` on. On a one-way RPC
    /// it does nothing. `data=` is PyMargo's name for `value`.
    #[pyo3(signature = (value=None, blocking=true, *, data=None))]
    fn respond(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
        blocking: bool,
        data: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<Request>> {
        let value = match (value, data) {
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => py.None().into_bound(py),
        };
        let payload = pickle::dumps(py, &value)?;
        let handle = self.inner.clone();
        let send = async move {
            handle
                .respond_raw(&payload)
                .await
                .map(|()| None::<bytes::Bytes>)
        };
        if blocking {
            self.shared
                .run(py, "Handle.respond", send)?
                .map_err(|e| errors::to_py(py, &e))?;
            Ok(None)
        } else {
            let join = self.shared.spawn(send);
            self.shared.tick(py, "Handle.respond")?;
            Ok(Some(Request::new(join, self.shared.clone())))
        }
    }

    /// The sender's address (its listening address if it is a server),
    /// on which the handler may call it back.
    #[getter]
    fn address(&self) -> Address {
        Address::new(self.inner.address(), self.shared.clone())
    }

    /// PyMargo's name for `address`.
    fn get_addr(&self) -> Address {
        self.address()
    }

    /// The provider id the request was sent to.
    #[getter]
    fn provider_id(&self) -> u16 {
        self.inner.provider_id()
    }

    /// The RPC's name.
    #[getter]
    fn rpc_name(&self) -> &str {
        self.inner.rpc_name()
    }

    /// The RPC's id (the hash of its name on the wire).
    fn get_id(&self) -> u64 {
        courier::frame::rpc_id(self.inner.rpc_name())
    }

    /// False for a one-way RPC (registered with `disable_response=True`).
    #[getter]
    fn expects_response(&self) -> bool {
        self.inner.expects_response()
    }

    fn __repr__(&self) -> String {
        format!(
            "Handle(rpc='{}', provider_id={}, address='{}')",
            self.inner.rpc_name(),
            self.inner.provider_id(),
            self.inner.address()
        )
    }
}
