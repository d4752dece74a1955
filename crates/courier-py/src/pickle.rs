//! Python values to bytes and back, with the `pickle` module (as PyMargo).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::errors;

static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Pickle's highest protocol in every Python this binding supports (3.11+).
const PROTOCOL: u8 = 5;

fn function<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    let f = cell.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("pickle")?.getattr(name)?.unbind())
    })?;
    Ok(f.bind(py))
}

/// `pickle.dumps(value)` as bytes.
pub(crate) fn dumps(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let out = function(py, &DUMPS, "dumps")?.call1((value, PROTOCOL))?;
    Ok(out.cast_into::<PyBytes>()?.as_bytes().to_vec())
}

/// `pickle.loads(data)`.
pub(crate) fn loads<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    function(py, &LOADS, "loads")?.call1((PyBytes::new(py, data),))
}

/// The request payload of a call of `rpc`: the pickled pair `(args,
/// kwargs)`. A value pickle refuses raises `courier.SerializationError`,
/// naming where it is and its type (nothing is sent).
pub(crate) fn dump_arguments(
    py: Python<'_>,
    rpc: &str,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<u8>> {
    let kwargs = match kwargs {
        Some(k) => k.clone(),
        None => PyDict::new(py),
    };
    let pair = PyTuple::new(py, [args.as_any(), kwargs.as_any()])?.into_any();
    dumps(py, &pair).map_err(|e| errors::pickling_error(py, "arguments", rpc, &pair, e))
}

/// A response of `rpc`, pickled; a value pickle refuses raises
/// `courier.SerializationError`, naming its type.
pub(crate) fn dump_response(
    py: Python<'_>,
    rpc: &str,
    value: &Bound<'_, PyAny>,
) -> PyResult<Vec<u8>> {
    dumps(py, value).map_err(|e| errors::pickling_error(py, "response", rpc, value, e))
}

/// A stream item of `rpc`, pickled (the `bytes` pickle made, sent as it
/// is); a value pickle refuses raises `courier.SerializationError`,
/// naming its type (nothing is sent, the stream goes on).
pub(crate) fn dump_item<'py>(
    py: Python<'py>,
    rpc: &str,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    function(py, &DUMPS, "dumps")?
        .call1((value, PROTOCOL))
        .and_then(|out| Ok(out.cast_into::<PyBytes>()?))
        .map_err(|e| errors::pickling_error(py, "item", rpc, value, e))
}

/// Reads a request payload back into `(args, kwargs)`; what cannot be read
/// is a `CourierError` saying what was expected.
pub(crate) fn load_arguments<'py>(
    py: Python<'py>,
    data: &[u8],
) -> PyResult<(Bound<'py, PyTuple>, Bound<'py, PyDict>)> {
    let read = || -> PyResult<_> {
        let pair = loads(py, data)?;
        let (args, kwargs): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
        Ok((args.cast_into::<PyTuple>()?, kwargs.cast_into::<PyDict>()?))
    };
    read().map_err(|e| {
        errors::courier_error(
            py,
            format!(
                "cannot decode the arguments (a pickled (args, kwargs) pair, as courier and \
                 pymargo send): {e}"
            ),
        )
    })
}
