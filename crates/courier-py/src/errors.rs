//! Courier's errors as Python exceptions (the classes live in
//! `courier/_errors.py`, where the Python package defines them).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("courier._errors")?.unbind())
    })?;
    Ok(m.bind(py))
}

/// Calls `courier._errors.<factory>(*args)` for an exception instance;
/// falls back to RuntimeError if the package is broken.
fn make<'py, A>(py: Python<'py>, factory: &str, args: A, text: &str) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    match module(py).and_then(|m| m.getattr(factory)?.call1(args)) {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => PyRuntimeError::new_err(format!("{text} (and courier._errors failed: {e})")),
    }
}

/// A `courier.CourierError` with `message`.
pub(crate) fn courier_error(py: Python<'_>, message: String) -> PyErr {
    make(py, "_courier_error", (message.as_str(),), &message)
}

/// A `courier.BulkError` with `message`; `address` is the peer's, when the
/// peer refused.
pub(crate) fn bulk_error(py: Python<'_>, message: String, address: Option<&str>) -> PyErr {
    make(
        py,
        "_bulk_error",
        (message.as_str(), address, message.as_str()),
        &message,
    )
}

/// The Python exception for a Courier error: `courier.BulkError` for bulk
/// transfers (`courier.BulkTimeoutError` past their timeout),
/// `courier.TimeoutError` for other timeouts, `courier.RemoteError` (or its subclass for the remote
/// exception's builtin type) for a handler's failure, `courier.CourierError`
/// for the rest.
pub(crate) fn to_py(py: Python<'_>, e: &courier::Error) -> PyErr {
    let text = e.to_string();
    match e {
        courier::Error::Timeout { .. } | courier::Error::ConnectTimeout { .. } => {
            make(py, "_timeout_error", (text.as_str(),), &text)
        }
        courier::Error::Remote {
            rpc,
            address,
            message,
        } => make(
            py,
            "_remote_error",
            (
                text.as_str(),
                rpc.as_str(),
                address.as_str(),
                message.as_str(),
            ),
            &text,
        ),
        courier::Error::RemotePanic {
            rpc,
            address,
            message,
        } => make(
            py,
            "_remote_error",
            (
                text.as_str(),
                rpc.as_str(),
                address.as_str(),
                format!("panic: {message}"),
            ),
            &text,
        ),
        courier::Error::BulkRefused { address, reason } => make(
            py,
            "_bulk_error",
            (text.as_str(), Some(address.as_str()), reason.as_str()),
            &text,
        ),
        courier::Error::BulkInvalid(reason) => make(
            py,
            "_bulk_error",
            (text.as_str(), None::<&str>, reason.as_str()),
            &text,
        ),
        courier::Error::BulkTimeout { address, .. } => make(
            py,
            "_bulk_timeout_error",
            (text.as_str(), address.as_str()),
            &text,
        ),
        _ => courier_error(py, text),
    }
}

/// What the caller of a failed Python handler is told (its exception's
/// type and message, `courier._errors` decides the format); also logs it.
pub(crate) fn describe_handler_error(py: Python<'_>, rpc: &str, err: &PyErr) -> String {
    let described = module(py).and_then(|m| {
        m.getattr("_describe_handler_error")?
            .call1((rpc, err.value(py)))?
            .extract::<String>()
    });
    described.unwrap_or_else(|_| format!("Python exception {}", err.value(py)))
}
