//! Streams (docs/python.md, "Streams"): a caller's `StreamCall`, the
//! stream methods of a handler's `Handle` (`send_item`, `recv_item`,
//! `items()`), and generator handlers, whose yielded items are sent as the
//! response stream.
//!
//! Items are pickled, as arguments and responses are. A pickled item is
//! sent straight from the `bytes` pickle made (no copy into a buffer of
//! ours) by the blocking methods; the awaitable ones hand the engine's
//! task a copy (it outlives the call that made it). A received item is
//! unpickled from the engine's buffer.
//!
//! **Waiting.** Every blocking method waits as a call does
//! (`Shared::wait`: GIL released, Ctrl-C checked; in a handler, its place
//! lent to the next request if the wait lasts), so a slow consumer holds a
//! producer in `send` without holding the GIL or the engine. The awaitable
//! forms run on the engine's runtime and complete through the loop's
//! mailbox (`aio.rs`).
//!
//! **A caller's call.** Its two halves (`courier::stream::RawStreamSender`,
//! `RawStreamReceiver`) sit behind async locks of their own, so one
//! thread (or task) may send while another receives. `cancel()` (and
//! leaving a `with` block before the end, and dropping the object) drops
//! them, which tells the handler unless its answer came already; an
//! operation waiting on another thread at that moment ends with
//! `CancelledError` and drops the half it holds.
//!
//! **A generator handler** (or one that returns an iterator) is driven by
//! the thread that runs it ([`serve_returned`]): the next item is asked
//! for only once the one before was sent, so a consumer that does not
//! read holds the generator at its `yield` once the window is used (one
//! item waits for credit, as in any producer). Its return value, if not
//! None, is the answer; its exception is the call's error, after the items
//! before it; when the caller leaves, the generator is closed
//! (`GeneratorExit` at its `yield`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::exceptions::{PyStopAsyncIteration, PyValueError};
use pyo3::prelude::*;
use pyo3::types::iterator::PySendResult;
use pyo3::types::{PyBytes, PyIterator};
use tokio::sync::Notify;

use crate::aio::OnCancel;
use crate::errors;
use crate::handle::Handle;
use crate::pickle;
use crate::shared::Shared;

// ---------------------------------------------------------------------
// Items.

/// An item unpickled; an empty payload (an answer of a handler that sent
/// none) is None.
fn load(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    if data.is_empty() {
        return Ok(py.None());
    }
    Ok(pickle::loads(py, data)?.unbind())
}

/// The next item as Python: the unpickled item, `default` at the end.
fn item_or(
    py: Python<'_>,
    out: courier::Result<Option<Bytes>>,
    default: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    match out {
        Ok(Some(b)) => Ok(pickle::loads(py, &b)?.unbind()),
        Ok(None) => Ok(default.unwrap_or_else(|| py.None())),
        Err(e) => Err(errors::to_py(py, &e)),
    }
}

/// The next item for `__next__`: `None` (StopIteration) at the end.
fn next_item(py: Python<'_>, out: courier::Result<Option<Bytes>>) -> PyResult<Option<Py<PyAny>>> {
    match out {
        Ok(Some(b)) => Ok(Some(pickle::loads(py, &b)?.unbind())),
        Ok(None) => Ok(None),
        Err(e) => Err(errors::to_py(py, &e)),
    }
}

/// The next item for `__anext__`: StopAsyncIteration at the end.
fn anext_item(py: Python<'_>, out: courier::Result<Option<Bytes>>) -> PyResult<Py<PyAny>> {
    match next_item(py, out)? {
        Some(item) => Ok(item),
        None => Err(PyStopAsyncIteration::new_err(())),
    }
}

/// `None` for an awaitable that returns nothing, or its error.
fn unit(py: Python<'_>, out: courier::Result<()>) -> PyResult<Py<PyAny>> {
    out.map(|()| py.None()).map_err(|e| errors::to_py(py, &e))
}

// ---------------------------------------------------------------------
// The caller's side.

/// Set once, by `cancel()`: the operations waiting on the call end.
#[derive(Default)]
struct CancelFlag {
    set: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    fn fire(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_set() {
                return;
            }
            notified.await;
        }
    }
}

/// What a caller's `StreamCall` and its awaitables' tasks share.
struct CallState {
    rpc: String,
    address: String,
    /// `None` once finished or cancelled.
    sender: tokio::sync::Mutex<Option<courier::stream::RawStreamSender>>,
    /// `None` once finished or cancelled.
    receiver: tokio::sync::Mutex<Option<courier::stream::RawStreamReceiver>>,
    cancel: CancelFlag,
    /// Set when `finish` took the answer.
    finished: AtomicBool,
}

/// What an operation that raced `cancel()` did.
enum Raced<T> {
    Done(T),
    Cancelled,
}

/// The message of the abort a cancelled call's request stream ends with
/// (the Rust blocking API's `StreamCall::cancel` sends the same): a
/// handler that reads it waits for the cancel that follows it.
const CANCELLED: &str = "the caller cancelled the call";

/// Gives a call's halves up: its request stream, if still open, is
/// aborted (so a handler reading items never takes the end of a cancelled
/// call for a clean end: dropped, a sender would close its stream
/// cleanly), then the halves are dropped, which tells the handler unless
/// its answer came already.
async fn give_up(
    sender: Option<courier::stream::RawStreamSender>,
    receiver: Option<courier::stream::RawStreamReceiver>,
) {
    if let Some(mut sender) = sender {
        let _ = sender.abort(CANCELLED).await;
    }
    drop(receiver);
}

impl CallState {
    fn cancelled(&self) -> courier::Error {
        courier::Error::Cancelled {
            rpc: self.rpc.clone(),
            address: self.address.clone(),
        }
    }

    /// The error of a send on a call whose request stream is gone.
    fn no_sender(&self) -> courier::Error {
        if self.cancel.is_set() {
            return self.cancelled();
        }
        courier::Error::StreamEnded {
            rpc: self.rpc.clone(),
            side: "request",
            why: "the call is finished",
        }
    }

    async fn send(&self, item: &[u8]) -> courier::Result<()> {
        let mut guard = self.sender.lock().await;
        let raced = {
            let Some(sender) = guard.as_mut().filter(|_| !self.cancel.is_set()) else {
                return Err(self.no_sender());
            };
            tokio::select! {
                biased;
                () = self.cancel.wait() => Raced::Cancelled,
                out = sender.send(item) => Raced::Done(out),
            }
        };
        match raced {
            Raced::Done(out) => out,
            Raced::Cancelled => {
                give_up(guard.take(), None).await;
                Err(self.cancelled())
            }
        }
    }

    /// Closes the request stream (cleanly, or aborted with a message).
    async fn end_requests(&self, aborted: Option<&str>) -> courier::Result<()> {
        let mut guard = self.sender.lock().await;
        let Some(sender) = guard.as_mut().filter(|_| !self.cancel.is_set()) else {
            return Err(self.no_sender());
        };
        match aborted {
            None => sender.close().await,
            Some(message) => sender.abort(message).await,
        }
    }

    async fn recv(&self) -> courier::Result<Option<Bytes>> {
        let mut guard = self.receiver.lock().await;
        if self.cancel.is_set() {
            guard.take();
            return Err(self.cancelled());
        }
        let raced = {
            let Some(receiver) = guard.as_mut() else {
                // Finished: its items were dropped, its end has come.
                return Ok(None);
            };
            tokio::select! {
                biased;
                () = self.cancel.wait() => Raced::Cancelled,
                out = receiver.recv() => Raced::Done(out),
            }
        };
        match raced {
            Raced::Done(out) => out,
            Raced::Cancelled => {
                guard.take();
                Err(self.cancelled())
            }
        }
    }

    /// Closes the request stream if it is open, drops the items not
    /// read, and returns the answer.
    async fn finish(&self) -> courier::Result<Bytes> {
        let sender = self.sender.lock().await.take();
        if let Some(mut sender) = sender {
            if !self.cancel.is_set() {
                sender.close().await?;
            }
        }
        let receiver = self.receiver.lock().await.take();
        let Some(receiver) = receiver.filter(|_| !self.cancel.is_set()) else {
            if self.cancel.is_set() {
                return Err(self.cancelled());
            }
            return Err(courier::Error::StreamEnded {
                rpc: self.rpc.clone(),
                side: "response",
                why: "the call was finished already (its answer went to that finish)",
            });
        };
        self.finished.store(true, Ordering::Release);
        tokio::select! {
            biased;
            () = self.cancel.wait() => Err(self.cancelled()),
            out = receiver.finish() => out,
        }
    }

    /// Drops both halves if no operation holds them (one that does drops
    /// its half when it sees the flag): the handler is told, unless its
    /// answer came already. The halves are returned, to be dropped where
    /// the caller likes.
    fn cancel(
        &self,
    ) -> (
        Option<courier::stream::RawStreamSender>,
        Option<courier::stream::RawStreamReceiver>,
    ) {
        self.cancel.fire();
        let sender = self.sender.try_lock().ok().and_then(|mut s| s.take());
        let receiver = self.receiver.try_lock().ok().and_then(|mut r| r.take());
        (sender, receiver)
    }
}

/// A stream call in progress, from `CallableRemoteFunction.stream(...)`
/// (or `await ....stream_async(...)`): `send(item)` request items,
/// `close()` (or `abort(message)`) the request stream, iterate over the
/// response items (`for item in call`, `async for item in call`, or
/// `recv()`), and `finish()` for the handler's answer. A context manager
/// (`with`, `async with`): leaving the block before the end cancels the
/// call, and so does dropping it, or `cancel()`.
#[pyclass(module = "courier._native", name = "StreamCall", frozen)]
pub(crate) struct StreamCall {
    state: Arc<CallState>,
    shared: Arc<Shared>,
    /// The answer, once `finish` took it (again on each `finish`).
    answer: Mutex<Option<PyResult<Py<PyAny>>>>,
}

impl StreamCall {
    pub(crate) fn new(
        call: courier::stream::RawStreamCall,
        rpc: &str,
        address: String,
        shared: Arc<Shared>,
    ) -> Self {
        let (sender, receiver) = call.split();
        Self {
            state: Arc::new(CallState {
                rpc: rpc.to_owned(),
                address,
                sender: tokio::sync::Mutex::new(Some(sender)),
                receiver: tokio::sync::Mutex::new(Some(receiver)),
                cancel: CancelFlag::default(),
                finished: AtomicBool::new(false),
            }),
            shared,
            answer: Mutex::new(None),
        }
    }

    fn cached_answer(&self, py: Python<'_>) -> Option<PyResult<Py<PyAny>>> {
        let answer = self.answer.lock().unwrap_or_else(|e| e.into_inner());
        answer.as_ref().map(|r| match r {
            Ok(v) => Ok(v.clone_ref(py)),
            Err(e) => Err(e.clone_ref(py)),
        })
    }

    fn keep_answer(&self, py: Python<'_>, out: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let copy = match &out {
            Ok(v) => Ok(v.clone_ref(py)),
            Err(e) => Err(e.clone_ref(py)),
        };
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
        copy
    }

    /// Cancels the call (see `cancel`), without waiting.
    fn give_up(&self) {
        let (sender, receiver) = self.state.cancel();
        if sender.is_some() || receiver.is_some() {
            self.shared.start(give_up(sender, receiver));
        }
    }

    /// `item` pickled, for a send.
    fn pickled<'py>(
        &self,
        py: Python<'py>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        pickle::dump_item(py, &self.state.rpc, item)
    }
}

impl Drop for StreamCall {
    fn drop(&mut self) {
        // Nothing can use the call any more: given up, unless finished.
        if !self.state.finished.load(Ordering::Acquire) {
            self.give_up();
        }
    }
}

#[pymethods]
impl StreamCall {
    /// Sends `item` (pickled) on the request stream, once the handler's
    /// side has credit for it: a handler that does not read holds the
    /// caller here. Raises `courier.CourierError` once the request stream
    /// is closed or the handler has answered.
    fn send(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<()> {
        let pickled = self.pickled(py, item)?;
        let data = pickled.as_bytes();
        self.shared
            .wait(
                py,
                "StreamCall.send",
                self.shared.flushed(self.state.send(data)),
            )?
            .map_err(|e| errors::to_py(py, &e))
    }

    /// Ends the request stream: the handler's next read sees its end.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.shared
            .wait(
                py,
                "StreamCall.close",
                self.shared.flushed(self.state.end_requests(None)),
            )?
            .map_err(|e| errors::to_py(py, &e))
    }

    /// Ends the request stream with an error: the handler's next read
    /// raises `courier.StreamAbortedError` with `message`.
    #[pyo3(signature = (message="aborted by the caller"))]
    fn abort(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        self.shared
            .wait(
                py,
                "StreamCall.abort",
                self.shared.flushed(self.state.end_requests(Some(message))),
            )?
            .map_err(|e| errors::to_py(py, &e))
    }

    /// The next response item; `default` (None) once the handler has
    /// answered (`finish()` then returns the answer). Raises the
    /// handler's error, after the items it sent before it.
    #[pyo3(signature = (default=None))]
    fn recv(&self, py: Python<'_>, default: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let out = self.shared.wait(py, "StreamCall.recv", self.state.recv())?;
        item_or(py, out, default)
    }

    /// Ends the call and returns the handler's answer (None if it sent
    /// none): closes the request stream if it is open and drops the
    /// response items not read. Raises the handler's error. Again on each
    /// call.
    fn finish(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(answer) = self.cached_answer(py) {
            return answer;
        }
        let out = self
            .shared
            .wait(py, "StreamCall.finish", self.state.finish())?;
        let out = match out {
            Ok(answer) => load(py, &answer),
            Err(e) => Err(errors::to_py(py, &e)),
        };
        self.keep_answer(py, out)
    }

    /// Gives the call up: the handler is told (its next stream operation
    /// raises `courier.CancelledError`, a generator handler is closed)
    /// unless its answer came already; operations waiting on other
    /// threads raise `courier.CancelledError`, and so does every later
    /// one. Leaving a `with` block, or dropping the object, does the same.
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        self.give_up();
        // Without a progress thread, the engine sends what is left now.
        self.shared.tick(py, "StreamCall.cancel")
    }

    /// Whether `finish()` took the answer.
    #[getter]
    fn finished(&self) -> bool {
        self.state.finished.load(Ordering::Acquire)
    }

    /// Whether `cancel()` (or leaving a `with` block early) cancelled it.
    #[getter]
    fn cancelled(&self) -> bool {
        self.state.cancel.is_set() && !self.finished()
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let out = self
            .shared
            .wait(py, "StreamCall.__next__", self.state.recv())?;
        next_item(py, out)
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// Cancels the call unless `finish()` ended it.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        if !self.finished() {
            self.cancel(py)?;
        }
        Ok(false)
    }

    // asyncio (aio.rs): the awaitable forms.

    /// `send` as an awaitable. Cancelling the awaiting task does not take
    /// the item back: it is sent once there is credit.
    fn send_async<'py>(
        &self,
        py: Python<'py>,
        item: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = self.pickled(py, item)?.as_bytes().to_vec();
        let state = self.state.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "StreamCall.send_async",
            async move { state.send(&data).await },
            OnCancel::Finish,
            unit,
        )
    }

    /// `close` as an awaitable.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "StreamCall.close_async",
            async move { state.end_requests(None).await },
            OnCancel::Finish,
            unit,
        )
    }

    /// `abort` as an awaitable.
    #[pyo3(signature = (message="aborted by the caller"))]
    fn abort_async<'py>(&self, py: Python<'py>, message: &str) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        let message = message.to_owned();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "StreamCall.abort_async",
            async move { state.end_requests(Some(&message)).await },
            OnCancel::Finish,
            unit,
        )
    }

    /// `recv` as an awaitable. Cancelling the awaiting task loses no
    /// item.
    #[pyo3(signature = (default=None))]
    fn recv_async<'py>(
        &self,
        py: Python<'py>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "StreamCall.recv_async",
            async move { state.recv().await },
            OnCancel::Abort,
            move |py, out| item_or(py, out, default),
        )
    }

    /// `finish` as an awaitable (cancelling the awaiting task lets the
    /// call end all the same; its answer is then lost).
    fn finish_async<'py>(slf: &Bound<'py, Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        if let Some(answer) = this.cached_answer(py) {
            let value = answer?;
            return crate::aio::awaitable_with(
                py,
                &this.shared,
                "StreamCall.finish_async",
                async {},
                OnCancel::Abort,
                move |_, ()| Ok(value),
            );
        }
        let state = this.state.clone();
        let call: Py<Self> = slf.clone().unbind();
        crate::aio::awaitable_with(
            py,
            &this.shared,
            "StreamCall.finish_async",
            async move { state.finish().await },
            OnCancel::Finish,
            move |py, out| {
                let out = match out {
                    Ok(answer) => load(py, &answer),
                    Err(e) => Err(errors::to_py(py, &e)),
                };
                call.get().keep_answer(py, out)
            },
        )
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let state = self.state.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "StreamCall.__anext__",
            async move { state.recv().await },
            OnCancel::Abort,
            anext_item,
        )
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let call = slf.clone().unbind().into_any();
        crate::aio::ready(py, call)
    }

    /// Cancels the call unless `finish()` ended it (at once: nothing to
    /// wait for).
    #[pyo3(signature = (*_exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        _exc: &Bound<'py, pyo3::types::PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !self.finished() {
            self.give_up();
        }
        crate::aio::ready(py, false.into_pyobject(py)?.to_owned().into_any().unbind())
    }

    fn __repr__(&self) -> String {
        let what = if self.finished() {
            "finished"
        } else if self.state.cancel.is_set() {
            "cancelled"
        } else {
            "in progress"
        };
        format!(
            "StreamCall('{}' at {}, {what})",
            self.state.rpc, self.state.address
        )
    }
}

/// Opens a stream call of `callable` with `payload` (the pickled
/// arguments), as part of the request `serving` if any (it inherits its
/// deadline, as a call does).
pub(crate) async fn open(
    callable: courier::RawCallable,
    payload: Vec<u8>,
    serving: Option<courier::CancelToken>,
) -> courier::Result<courier::stream::RawStreamCall> {
    match &serving {
        Some(token) => token.in_scope(callable.stream(&payload)).await,
        None => callable.stream(&payload).await,
    }
}

// ---------------------------------------------------------------------
// The handler's side.

/// The error of a stream operation of a cancelled request.
fn request_cancelled(handle: &courier::Handle) -> courier::Error {
    courier::Error::Cancelled {
        rpc: handle.rpc_name().to_owned(),
        address: handle.address().to_string(),
    }
}

/// Whether the request is cancelled, as a handler sees it before each
/// item: without a progress thread, the engine first reads what arrived
/// (a caller's cancellation), as `Handle.is_cancelled()` does.
fn is_cancelled(py: Python<'_>, shared: &Shared, handle: &courier::Handle) -> bool {
    if !handle.is_stream() {
        return false;
    }
    if handle.is_cancelled() {
        return true;
    }
    shared.nudge(py);
    handle.is_cancelled()
}

/// `handle.send_item(item)`: pickles it and sends it once the caller has
/// credit for it.
pub(crate) fn send_item(
    py: Python<'_>,
    shared: &Arc<Shared>,
    handle: &courier::Handle,
    item: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let pickled = pickle::dump_item(py, handle.rpc_name(), item)?;
    if is_cancelled(py, shared, handle) {
        return Err(errors::to_py(py, &request_cancelled(handle)));
    }
    let data = pickled.as_bytes();
    shared
        .wait(py, "Handle.send_item", handle.send_item_raw(data))?
        .map_err(|e| errors::to_py(py, &e))
}

/// The caller's next item, raw (`None` at the end).
fn recv_raw(
    py: Python<'_>,
    shared: &Arc<Shared>,
    handle: &courier::Handle,
) -> PyResult<courier::Result<Option<Bytes>>> {
    if is_cancelled(py, shared, handle) {
        return Ok(Err(request_cancelled(handle)));
    }
    let out = shared.wait(py, "Handle.recv_item", handle.recv_item_raw())?;
    if is_given_up(&out) {
        // Its cancel follows (or the connection's loss, or the deadline).
        shared.wait(py, "Handle.recv_item", handle.cancelled())?;
    }
    if ends_requests(&out) && is_cancelled(py, shared, handle) {
        return Ok(Err(request_cancelled(handle)));
    }
    Ok(out)
}

/// Whether a read ended with the abort of a caller that gave its call up
/// ([`give_up`]).
fn is_given_up(out: &courier::Result<Option<Bytes>>) -> bool {
    matches!(out, Err(courier::Error::StreamAborted { message, .. }) if message == CANCELLED)
}

/// Whether a read ended the request stream (closed or aborted): the end of
/// a request whose caller gave up is its cancellation (a caller whose
/// call is dropped ends its request stream first).
fn ends_requests(out: &courier::Result<Option<Bytes>>) -> bool {
    matches!(out, Ok(None) | Err(courier::Error::StreamAborted { .. }))
}

/// The caller's next item, awaited on the engine's runtime (see
/// [`recv_raw`]).
async fn recv_async(handle: &courier::Handle) -> courier::Result<Option<Bytes>> {
    let out = handle.recv_item_raw().await;
    if is_given_up(&out) {
        handle.cancelled().await;
    }
    if handle.is_stream() && ends_requests(&out) && handle.is_cancelled() {
        return Err(request_cancelled(handle));
    }
    out
}

/// `handle.recv_item(default=None)`.
pub(crate) fn recv_item(
    py: Python<'_>,
    shared: &Arc<Shared>,
    handle: &courier::Handle,
    default: Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>> {
    let out = recv_raw(py, shared, handle)?;
    item_or(py, out, default)
}

/// `await handle.send_item_async(item)`.
pub(crate) fn send_item_async<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    handle: &Arc<courier::Handle>,
    item: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let data = pickle::dump_item(py, handle.rpc_name(), item)?
        .as_bytes()
        .to_vec();
    let handle = handle.clone();
    crate::aio::awaitable_with(
        py,
        shared,
        "Handle.send_item_async",
        async move {
            if handle.is_stream() && handle.is_cancelled() {
                return Err(request_cancelled(&handle));
            }
            handle.send_item_raw(&data).await
        },
        OnCancel::Finish,
        unit,
    )
}

/// `await handle.recv_item_async(default=None)`.
pub(crate) fn recv_item_async<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    handle: &Arc<courier::Handle>,
    default: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let handle = handle.clone();
    crate::aio::awaitable_with(
        py,
        shared,
        "Handle.recv_item_async",
        async move { recv_async(&handle).await },
        OnCancel::Abort,
        move |py, out| item_or(py, out, default),
    )
}

/// The caller's items, from `handle.items()`: `for item in
/// handle.items()` (or `async for` in an `async def` handler) until the
/// caller closes its request stream. Raises `courier.StreamAbortedError`
/// if the caller aborts it, `courier.CancelledError` if it gives up.
#[pyclass(module = "courier._native", name = "HandleItems", frozen)]
pub(crate) struct HandleItems {
    handle: Arc<courier::Handle>,
    shared: Arc<Shared>,
}

impl HandleItems {
    pub(crate) fn new(handle: Arc<courier::Handle>, shared: Arc<Shared>) -> Self {
        Self { handle, shared }
    }
}

#[pymethods]
impl HandleItems {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let out = recv_raw(py, &self.shared, &self.handle)?;
        next_item(py, out)
    }

    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "HandleItems.__anext__",
            async move { recv_async(&handle).await },
            OnCancel::Abort,
            anext_item,
        )
    }

    fn __repr__(&self) -> String {
        format!("HandleItems(rpc='{}')", self.handle.rpc_name())
    }
}

/// Serves what a blocking handler returned: a generator or another
/// iterator is the response stream (see the module's comment); anything
/// else is ignored, as before.
pub(crate) fn serve_returned(
    py: Python<'_>,
    handle: &Bound<'_, Handle>,
    returned: Bound<'_, PyAny>,
) -> PyResult<()> {
    let Ok(iterator) = returned.cast::<PyIterator>() else {
        return Ok(());
    };
    let this = handle.get();
    let inner = this.inner();
    if !inner.is_stream() {
        if !is_generator(py, &returned)? {
            return Ok(()); // an iterator a unary handler returned: ignored
        }
        close(&returned);
        return Err(errors::courier_error(
            py,
            format!(
                "the handler of RPC '{}' is a generator, whose items make a response stream: \
                 call it with stream(), not as a plain call",
                inner.rpc_name()
            ),
        ));
    }
    let shared = this.shared();
    let none = py.None().into_bound(py);
    loop {
        match iterator.send(&none)? {
            PySendResult::Next(item) => {
                if let Err(e) = send_item(py, shared, inner, &item) {
                    close(&returned);
                    if inner.is_cancelled() {
                        // The caller gave up: nothing goes back.
                        return Ok(());
                    }
                    return Err(e);
                }
            }
            PySendResult::Return(value) => {
                if !value.is_none() {
                    handle.call_method1("respond", (value,))?;
                }
                return Ok(());
            }
        }
    }
}

/// Whether `value` is a generator (`inspect.isgenerator`).
fn is_generator(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    py.import("inspect")?
        .call_method1("isgenerator", (value,))?
        .is_truthy()
}

/// Closes a generator the stream no longer needs (`GeneratorExit` at its
/// `yield`, its `finally` blocks run); what that raises is printed, as
/// an exception in a `__del__` is.
fn close(iterator: &Bound<'_, PyAny>) {
    if !iterator.hasattr("close").unwrap_or(false) {
        return;
    }
    if let Err(e) = iterator.call_method0("close") {
        e.print(iterator.py());
    }
}

/// A `ValueError` for a one-way function asked to stream.
pub(crate) fn one_way_error(rpc: &str) -> PyErr {
    PyValueError::new_err(format!(
        "RPC '{rpc}' is one-way (disable_response): it cannot be called as a stream"
    ))
}
