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
    make_reaching(py, factory, args, text, None)
}

/// [`make`], with the exception's `reach` attribute set (`"not_reached"`,
/// `"unknown"` or `"reached"`: what `CourierError.is_retry_safe` reads).
fn make_reaching<'py, A>(
    py: Python<'py>,
    factory: &str,
    args: A,
    text: &str,
    reach: Option<courier::Reach>,
) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let made = module(py).and_then(|m| {
        let exc = m.getattr(factory)?.call1(args)?;
        if let Some(reach) = reach {
            exc.setattr("reach", reach_name(reach))?;
        }
        Ok(exc)
    });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => PyRuntimeError::new_err(format!("{text} (and courier._errors failed: {e})")),
    }
}

/// `Reach` as Python sees it.
fn reach_name(reach: courier::Reach) -> &'static str {
    match reach {
        courier::Reach::NotReached => "not_reached",
        courier::Reach::Unknown => "unknown",
        courier::Reach::Reached => "reached",
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
/// `courier.TimeoutError` for other timeouts (`courier.DeadlineExceededError`
/// for a call whose deadline had passed before it was sent),
/// `courier.CancelledError` for a cancelled call (or a stream operation of a
/// cancelled request), `courier.StreamAbortedError` for a request stream its
/// caller aborted, `courier.BusyError` for a
/// request the server refused as busy, `courier.RemoteError` (or its
/// subclass for the remote exception's builtin type) for a handler's
/// failure, `courier.CourierError` for the rest. Every one carries the
/// error's `reach` (whether its request can have reached the handler).
pub(crate) fn to_py(py: Python<'_>, e: &courier::Error) -> PyErr {
    let text = e.to_string();
    let reach = Some(e.reach());
    let t = text.as_str();
    match e {
        courier::Error::Timeout { .. } | courier::Error::ConnectTimeout { .. } => {
            make_reaching(py, "_timeout_error", (t,), t, reach)
        }
        courier::Error::DeadlineExceeded { rpc, address } => make_reaching(
            py,
            "_deadline_exceeded_error",
            (t, rpc.as_str(), address.as_str()),
            t,
            reach,
        ),
        courier::Error::Cancelled { rpc, address } => make_reaching(
            py,
            "_cancelled_error",
            (t, rpc.as_str(), address.as_str()),
            t,
            reach,
        ),
        courier::Error::Busy {
            rpc,
            address,
            reason,
            ..
        } => make_reaching(
            py,
            "_busy_error",
            (t, rpc.as_str(), address.as_str(), reason.as_str()),
            t,
            reach,
        ),
        courier::Error::Remote {
            rpc,
            address,
            message,
        } => make_reaching(
            py,
            "_remote_error",
            (t, rpc.as_str(), address.as_str(), message.as_str()),
            t,
            reach,
        ),
        courier::Error::RemotePanic {
            rpc,
            address,
            message,
        } => make_reaching(
            py,
            "_remote_error",
            (
                t,
                rpc.as_str(),
                address.as_str(),
                format!("panic: {message}"),
            ),
            t,
            reach,
        ),
        courier::Error::StreamAborted {
            rpc,
            address,
            message,
        } => make_reaching(
            py,
            "_stream_aborted_error",
            (t, rpc.as_str(), address.as_str(), message.as_str()),
            t,
            reach,
        ),
        courier::Error::BulkRefused { address, reason } => make_reaching(
            py,
            "_bulk_error",
            (t, Some(address.as_str()), reason.as_str()),
            t,
            reach,
        ),
        courier::Error::BulkInvalid(reason) => make_reaching(
            py,
            "_bulk_error",
            (t, None::<&str>, reason.as_str()),
            t,
            reach,
        ),
        courier::Error::BulkTimeout { address, .. } => {
            make_reaching(py, "_bulk_timeout_error", (t, address.as_str()), t, reach)
        }
        _ => make_reaching(py, "_courier_error", (t,), t, reach),
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

/// The `courier.SerializationError` for `value`, which pickle refused with
/// `err`: it names the RPC, where in `value` the refused object is and its
/// type. `what` is "arguments" (`value` is the call's `(args, kwargs)`) or
/// "response". Anything but an `Exception` (KeyboardInterrupt) goes on as
/// it is.
pub(crate) fn pickling_error(
    py: Python<'_>,
    what: &str,
    rpc: &str,
    value: &Bound<'_, PyAny>,
    err: PyErr,
) -> PyErr {
    if !err.is_instance_of::<pyo3::exceptions::PyException>(py) {
        return err;
    }
    let made = module(py).and_then(|m| {
        m.getattr("_pickling_error")?
            .call1((what, rpc, value, err.value(py)))
    });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => err,
    }
}

/// What the caller of a handler is told of `err` (as for a handler that
/// raised it), without logging it.
pub(crate) fn error_text(py: Python<'_>, err: &PyErr) -> String {
    let text = module(py).and_then(|m| {
        m.getattr("_error_text")?
            .call1((err.value(py),))?
            .extract::<String>()
    });
    text.unwrap_or_else(|_| format!("Python exception {}", err.value(py)))
}
