//! `Handle`: the server's view of one request.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
///
/// The caller's patience: `remaining` (seconds left before its deadline,
/// or None), `deadline` (the same as a `time.monotonic()` instant),
/// `is_cancelled()` (the caller gave up, or the deadline passed) and
/// `cancel_reason`.
#[pyclass(module = "courier._native", name = "Handle", frozen)]
pub(crate) struct Handle {
    inner: Arc<courier::Handle>,
    shared: Arc<Shared>,
    /// Whether `respond` was called already: [`NOT_YET`], [`SENT`] (sent,
    /// or tried), [`DROPPED`] (not sent: the request was cancelled).
    responded: AtomicU8,
    /// What the caller is told if the handler returns without a response
    /// after `respond` could not pickle one (the error's text): shared with
    /// the thread that runs the handler (`unsent_response`).
    unsent: Arc<Mutex<Option<String>>>,
}

const NOT_YET: u8 = 0;
const SENT: u8 = 1;
const DROPPED: u8 = 2;

impl Handle {
    pub(crate) fn new(inner: courier::Handle, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            responded: AtomicU8::new(NOT_YET),
            unsent: Arc::new(Mutex::new(None)),
        }
    }

    /// The record of a response `respond` could not pickle: the thread
    /// that runs the handler reads it when the handler returns, so the
    /// caller gets that error rather than wait, even if the handler caught
    /// it (and kept its handle).
    pub(crate) fn unsent_response(&self) -> UnsentResponse {
        UnsentResponse(self.unsent.clone())
    }

    /// The engine's handle on the request.
    pub(crate) fn inner(&self) -> &Arc<courier::Handle> {
        &self.inner
    }

    /// The engine's objects.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn set_unsent(&self, text: Option<String>) {
        *self.unsent.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }
}

/// See [`Handle::unsent_response`].
pub(crate) struct UnsentResponse(Arc<Mutex<Option<String>>>);

impl UnsentResponse {
    /// The error's text, if the last `respond` could not pickle its value.
    pub(crate) fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Handle {
    /// The sending of `value` (or `data`) as a future to run on the
    /// engine's runtime; see `respond`.
    fn response(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
        data: Option<Bound<'_, PyAny>>,
    ) -> PyResult<
        impl std::future::Future<Output = courier::Result<Option<bytes::Bytes>>> + Send + 'static,
    > {
        let value = match (value, data) {
            (Some(v), _) | (None, Some(v)) => v,
            (None, None) => py.None().into_bound(py),
        };
        let payload = match pickle::dump_response(py, self.inner.rpc_name(), &value) {
            Ok(payload) => {
                self.set_unsent(None);
                payload
            }
            Err(e) => {
                if self.responded.load(Ordering::Acquire) == NOT_YET {
                    self.set_unsent(Some(errors::error_text(py, &e)));
                }
                return Err(e);
            }
        };
        let handle = self.inner.clone();
        let first = match self.responded.compare_exchange(
            NOT_YET,
            SENT,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(DROPPED) if handle.expects_response() => {
                // The engine never saw the first: it would send this one.
                let e = courier::Error::AlreadyResponded {
                    rpc: handle.rpc_name().to_owned(),
                };
                return Err(errors::to_py(py, &e));
            }
            Err(_) => false,
        };
        // Cancelled (the caller gave up, or the deadline passed, which the
        // engine may not have noticed yet): nobody waits for the answer, so
        // it is not sent, and a handler that finishes its work late is not
        // an error.
        let dropped = first && handle.expects_response() && handle.is_cancelled();
        if dropped {
            self.responded.store(DROPPED, Ordering::Release);
        }
        Ok(async move {
            if dropped {
                return Ok(None::<bytes::Bytes>);
            }
            match handle.respond_raw(&payload).await {
                Ok(()) => Ok(None),
                // The engine noticed the cancellation first.
                Err(courier::Error::Cancelled { .. }) if first => Ok(None),
                Err(e) => Err(e),
            }
        })
    }
}

#[pymethods]
impl Handle {
    /// Sends `value` (pickled) to the caller. With `blocking=False` it
    /// returns at once with a `Request` to `wait()` on. On a one-way RPC
    /// it does nothing, nor on a request that was cancelled (its caller
    /// gave up, or its deadline passed: `is_cancelled()`). Responding
    /// twice raises. `data=` is PyMargo's name for `value`. A value pickle
    /// refuses raises `courier.SerializationError` (naming its type), and
    /// the caller gets that error if the handler returns without
    /// responding.
    #[pyo3(signature = (value=None, blocking=true, *, data=None))]
    fn respond(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
        blocking: bool,
        data: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Option<Request>> {
        let send = self.response(py, value, data)?;
        if blocking {
            self.shared
                .wait(py, "Handle.respond", send)?
                .map_err(|e| errors::to_py(py, &e))?;
            Ok(None)
        } else {
            let join = self.shared.spawn(send);
            self.shared.tick(py, "Handle.respond")?;
            Ok(Some(Request::new(join, self.shared.clone())))
        }
    }

    /// The awaitable form of `respond`, for `async def` handlers: `await
    /// handle.respond_async(value)` sends `value` without blocking the
    /// event loop, and returns once it is sent (raising as `respond`
    /// does). Cancelling the awaiting task does not take the response
    /// back: it is sent all the same. See `aio.rs`.
    #[pyo3(signature = (value=None, *, data=None))]
    fn respond_async<'py>(
        &self,
        py: Python<'py>,
        value: Option<Bound<'py, PyAny>>,
        data: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let send = self.response(py, value, data)?;
        crate::aio::awaitable(
            py,
            &self.shared,
            "Handle.respond_async",
            send,
            crate::aio::OnCancel::Finish,
        )
    }

    /// Whether the caller opened streams with this request (called it with
    /// `stream()`, not as a plain call): only then may the handler send and
    /// read items.
    #[getter]
    fn is_stream(&self) -> bool {
        self.inner.is_stream()
    }

    /// Sends `item` (pickled) on the response stream, once the caller has
    /// credit for it: a caller that does not read holds the handler here
    /// (GIL released). Raises `courier.CancelledError` once the caller
    /// gave up (or the deadline passed), `courier.CourierError` on a
    /// request that is not a stream or after `respond()`.
    fn send_item(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        crate::stream::send_item(py, &self.shared, &self.inner, item)
    }

    /// The caller's next item (unpickled); `default` (None) once the
    /// caller closed its request stream. Raises
    /// `courier.StreamAbortedError` if the caller aborted it,
    /// `courier.CancelledError` once it gave up (or the deadline passed).
    #[pyo3(signature = (default=None))]
    fn recv_item(&self, py: Python<'_>, default: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        crate::stream::recv_item(py, &self.shared, &self.inner, default)
    }

    /// The caller's items, an iterator (`for item in handle.items()`, or
    /// `async for` in an `async def` handler) that ends when the caller
    /// closes its request stream.
    fn items(&self) -> crate::stream::HandleItems {
        crate::stream::HandleItems::new(self.inner.clone(), self.shared.clone())
    }

    /// `send_item` as an awaitable, for `async def` handlers. Cancelling
    /// the awaiting task does not take the item back.
    fn send_item_async<'py>(
        &self,
        py: Python<'py>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stream::send_item_async(py, &self.shared, &self.inner, item)
    }

    /// `recv_item` as an awaitable, for `async def` handlers.
    #[pyo3(signature = (default=None))]
    fn recv_item_async<'py>(
        &self,
        py: Python<'py>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::stream::recv_item_async(py, &self.shared, &self.inner, default)
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

    /// The seconds left before the caller's deadline (0.0 once it passed),
    /// or None if the caller set none. A call made from the handler
    /// inherits it unless given a `timeout=` of its own.
    #[getter]
    fn remaining(&self) -> Option<f64> {
        self.inner.remaining().map(|d| d.as_secs_f64())
    }

    /// The caller's deadline as a `time.monotonic()` instant, or None if
    /// the caller set none. It is the budget the caller sent, counted from
    /// when the request arrived here.
    #[getter]
    fn deadline(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let Some(at) = self.inner.deadline() else {
            return Ok(None);
        };
        let monotonic: f64 = py
            .import("time")?
            .getattr("monotonic")?
            .call0()?
            .extract()?;
        let now = Instant::now();
        Ok(Some(if at >= now {
            monotonic + at.duration_since(now).as_secs_f64()
        } else {
            monotonic - now.duration_since(at).as_secs_f64()
        }))
    }

    /// Whether the request was cancelled: its caller gave up (cancelled the
    /// call, or its timeout passed there), the connection to it was lost,
    /// or its deadline passed here. A handler that works for long polls
    /// this between steps and stops early. Without a progress thread it
    /// also lets the engine read what arrived (a caller's cancellation).
    fn is_cancelled(&self, py: Python<'_>) -> bool {
        if self.inner.is_cancelled() {
            return true;
        }
        self.shared.nudge(py);
        self.inner.is_cancelled()
    }

    /// Why the request was cancelled: None (it was not), "caller" (the
    /// caller gave up), "deadline" (its deadline passed) or
    /// "connection_lost".
    #[getter]
    fn cancel_reason(&self) -> Option<&'static str> {
        self.inner
            .cancel_token()
            .reason()
            .map(|reason| match reason {
                courier::CancelReason::Caller => "caller",
                courier::CancelReason::Deadline => "deadline",
                courier::CancelReason::ConnectionLost => "connection_lost",
            })
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
