//! The client side: `RemoteFunction`, `CallableRemoteFunction`, `Request`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::errors;
use crate::pickle;
use crate::shared::Shared;

/// A timeout in milliseconds (PyMargo's unit) as a duration; `None` or 0:
/// no timeout.
pub(crate) fn timeout_from_ms(ms: Option<f64>) -> PyResult<Option<Duration>> {
    match ms {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(ms) if ms > 0.0 => Duration::try_from_secs_f64(ms / 1000.0)
            .map(Some)
            .map_err(|e| PyValueError::new_err(format!("timeout={ms} ms: {e}"))),
        Some(ms) => Err(PyValueError::new_err(format!(
            "timeout={ms}: a timeout is a number of milliseconds, 0 for none"
        ))),
    }
}

/// An RPC by name, as `Engine.register` returns it; `on(address)` makes it
/// callable.
#[pyclass(module = "courier._native", name = "RemoteFunction", frozen)]
pub(crate) struct RemoteFunction {
    raw: courier::RawRemoteFunction,
    shared: Arc<Shared>,
    engine: Py<PyAny>,
    /// The provider id it was registered at (for `deregister`).
    provider_id: u16,
    one_way: AtomicBool,
}

impl RemoteFunction {
    pub(crate) fn new(
        shared: Arc<Shared>,
        engine: Py<PyAny>,
        name: &str,
        provider_id: u16,
        one_way: bool,
    ) -> Self {
        Self {
            raw: shared.engine.remote_raw(name),
            shared,
            engine,
            provider_id,
            one_way: AtomicBool::new(one_way),
        }
    }
}

/// An address given as an `Address` or as a string to look up.
pub(crate) fn resolve(
    py: Python<'_>,
    shared: &Arc<Shared>,
    address: &Bound<'_, PyAny>,
) -> PyResult<courier::Address> {
    if let Ok(a) = address.cast::<Address>() {
        return Ok(a.get().inner.clone());
    }
    let text: String = address.extract()?;
    let engine = shared.engine.clone();
    shared
        .run(py, "lookup", async move { engine.lookup(&text).await })?
        .map_err(|e| errors::to_py(py, &e))
}

#[pymethods]
impl RemoteFunction {
    /// Binds the function to `address` (an `Address`, or a string to look
    /// up) and `provider_id`.
    #[pyo3(signature = (address, provider_id=0))]
    fn on(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        provider_id: u16,
    ) -> PyResult<CallableRemoteFunction> {
        let this = slf.get();
        let addr = resolve(py, &this.shared, address)?;
        Ok(CallableRemoteFunction {
            function: slf.clone().unbind(),
            callable: this.raw.on_provider(&addr, provider_id),
            one_way: this
                .raw
                .clone()
                .disable_response()
                .on_provider(&addr, provider_id),
            address: Py::new(py, Address::new(addr, this.shared.clone()))?,
            provider_id,
            shared: this.shared.clone(),
        })
    }

    /// Makes calls one-way (or two-way again with `False`): they return
    /// `None` once the request is sent. The server must register the RPC
    /// with `disable_response=True`.
    #[pyo3(signature = (disable=true))]
    fn disable_response(&self, disable: bool) {
        self.one_way.store(disable, Ordering::Release);
    }

    /// Whether calls are one-way.
    fn disabled_response(&self) -> bool {
        self.one_way.load(Ordering::Acquire)
    }

    /// Removes the handler this function was registered with (server side).
    fn deregister(&self, py: Python<'_>) -> PyResult<()> {
        self.shared
            .engine
            .deregister(self.raw.name(), self.provider_id)
            .map_err(|e| errors::to_py(py, &e))
    }

    /// The RPC's name.
    #[getter]
    fn name(&self) -> &str {
        self.raw.name()
    }

    /// The RPC's id (the hash of its name on the wire).
    #[getter]
    fn rpc_id(&self) -> u64 {
        self.raw.id()
    }

    /// The engine it belongs to.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.engine.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("RemoteFunction('{}')", self.raw.name())
    }
}

/// A `RemoteFunction` bound to an address and provider: call it like a
/// function. `timeout=` (milliseconds) and `blocking=` are the call's own
/// keywords; every other argument goes to the remote handler, pickled.
#[pyclass(module = "courier._native", name = "CallableRemoteFunction", frozen)]
pub(crate) struct CallableRemoteFunction {
    function: Py<RemoteFunction>,
    callable: courier::RawCallable,
    one_way: courier::RawCallable,
    address: Py<Address>,
    provider_id: u16,
    shared: Arc<Shared>,
}

#[pymethods]
impl CallableRemoteFunction {
    /// Calls the RPC with `args` and `kwargs` and returns the value the
    /// handler responded with (`None` for a one-way RPC). With
    /// `blocking=False`, returns a `Request` at once.
    ///
    /// Raises `courier.TimeoutError` past `timeout` milliseconds (0: none),
    /// `courier.RemoteError` when the handler raised, `CourierError`
    /// otherwise.
    ///
    /// Made from inside a handler (on its thread), a call without a
    /// `timeout` inherits the deadline of the request being served, and is
    /// cancelled (`courier.CancelledError`) when that request is.
    #[pyo3(signature = (*args, timeout=None, blocking=true, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        blocking: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let payload = pickle::dump_arguments(py, args, kwargs)?;
        let one_way = self.function.get().one_way.load(Ordering::Acquire);
        let mut callable = if one_way {
            self.one_way.clone()
        } else {
            self.callable.clone()
        };
        if let Some(after) = timeout_from_ms(timeout)? {
            callable = callable.timeout(after);
        }
        // Made from a handler: the call is part of its request (read here,
        // on the thread that makes the call; see `shared::serving`).
        let serving = crate::shared::serving();
        let call = async move {
            let out = match &serving {
                Some(token) => token.scope(|| callable.call(&payload)).await,
                None => callable.call(&payload).await,
            };
            out.map(|out| (!one_way).then_some(out))
        };
        if blocking {
            let out = self.shared.run(py, "call", call)?;
            outcome(py, out)
        } else {
            let join = self.shared.spawn(call);
            self.shared.tick(py, "call")?;
            Ok(Py::new(py, Request::new(join, self.shared.clone()))?.into_any())
        }
    }

    /// The remote function.
    #[getter]
    fn remote_function(&self, py: Python<'_>) -> Py<RemoteFunction> {
        self.function.clone_ref(py)
    }

    /// The target address.
    #[getter]
    fn address(&self, py: Python<'_>) -> Py<Address> {
        self.address.clone_ref(py)
    }

    /// The target provider id.
    #[getter]
    fn provider_id(&self) -> u16 {
        self.provider_id
    }

    /// The engine it belongs to.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.function.get().engine.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "CallableRemoteFunction('{}' at {}, provider_id={})",
            self.function.get().raw.name(),
            self.callable.address(),
            self.provider_id
        )
    }
}

/// A call's result as Python: the unpickled response, `None` without one.
fn outcome(py: Python<'_>, out: courier::Result<Option<Bytes>>) -> PyResult<Py<PyAny>> {
    match out {
        Ok(Some(bytes)) => Ok(pickle::loads(py, &bytes)?.unbind()),
        Ok(None) => Ok(py.None()),
        Err(e) => Err(errors::to_py(py, &e)),
    }
}

type Pending = JoinHandle<courier::Result<Option<Bytes>>>;

enum State {
    Running(Pending),
    /// Another thread is in `wait()`.
    Waiting,
    Done(PyResult<Py<PyAny>>),
}

/// A call (or response) in flight, from `blocking=False`: `test()` whether
/// it completed, `wait()` for its result. Dropping it does not cancel it.
#[pyclass(module = "courier._native", name = "Request", frozen)]
pub(crate) struct Request {
    state: Mutex<State>,
    shared: Arc<Shared>,
}

impl Request {
    pub(crate) fn new(join: Pending, shared: Arc<Shared>) -> Self {
        Self {
            state: Mutex::new(State::Running(join)),
            shared,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl Request {
    /// Waits for completion and returns the result (the response of a
    /// call, `None` for a one-way call or a response); raises as the call
    /// would have. Waiting again returns the same.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let join = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Waiting) {
                State::Running(join) => join,
                State::Waiting => {
                    return Err(errors::courier_error(
                        py,
                        "another thread is already waiting on this request".into(),
                    ))
                }
                State::Done(r) => {
                    let copy = match &r {
                        Ok(v) => Ok(v.clone_ref(py)),
                        Err(e) => Err(e.clone_ref(py)),
                    };
                    *state = State::Done(r);
                    return copy;
                }
            }
        };
        let mut join = join;
        let waited = self.shared.wait(py, "Request.wait", &mut join);
        let out = match waited {
            Err(interrupted) => {
                // Ctrl-C: the request goes on; wait() may be called again.
                *self.lock() = State::Running(join);
                return Err(interrupted);
            }
            Ok(Ok(out)) => outcome(py, out),
            Ok(Err(_)) => Err(errors::courier_error(
                py,
                "the request was abandoned: its engine's runtime shut down".into(),
            )),
        };
        let copy = match &out {
            Ok(v) => Ok(v.clone_ref(py)),
            Err(e) => Err(e.clone_ref(py)),
        };
        *self.lock() = State::Done(out);
        copy
    }

    /// Whether it completed (so `wait()` returns at once). Without a
    /// progress thread, also lets the engine make a little progress.
    fn test(&self, py: Python<'_>) -> PyResult<bool> {
        let finished = |s: &State| match s {
            State::Running(j) => j.is_finished(),
            State::Waiting => false,
            State::Done(_) => true,
        };
        if finished(&self.lock()) {
            return Ok(true);
        }
        self.shared.tick(py, "Request.test")?;
        Ok(finished(&self.lock()))
    }

    fn __repr__(&self) -> String {
        let what = match &*self.lock() {
            State::Running(_) | State::Waiting => "in flight",
            State::Done(_) => "completed",
        };
        format!("Request({what})")
    }
}
