//! Python binding of Courier: the native half of the `courier` package
//! (`courier._native`), on the engine's raw-bytes layer.
//!
//! The Python packages (`python/courier`, `python/pymargo`) add PyMargo's
//! names, the exception classes and the decorators; everything that moves
//! bytes or waits lives here:
//!
//! * `shared::Shared` owns the tokio runtime and the engine, and has the
//!   ways a Python thread waits (`Shared::wait`, `Shared::wait_idle`):
//!   with the GIL released, in slices, checking for signals (Ctrl-C)
//!   between them.
//! * Python handlers never run on a tokio thread, nor on a thread of the
//!   program's that waits in the engine. The engine's raw handler queues a
//!   `jobs::Job`; a handler thread of the engine's own runs it, with the
//!   GIL held for the Python call only, outside any runtime, so a handler
//!   may make blocking calls itself. Without a progress thread (PyMargo's
//!   default) that is the engine's own thread, `courier-py-progress`,
//!   started with the first handler registered: it drives the runtime
//!   while it waits for requests and leaves it to run a handler, when a
//!   thread waiting in a call takes the runtime over (so timeouts fire
//!   whatever a handler does). With a progress thread or RPC threads,
//!   `num_rpc_threads + 1` threads `courier-py-rpc` (at least 2) take
//!   turns: each waits for requests inside the runtime, the one holding it
//!   drives it and runs the handler of a request it read, at most
//!   `num_rpc_threads` at once, so one always drives the engine.
//!   A handler that waits inside an engine lends its place to the next
//!   request (`jobs::Jobs::lend`), so handlers that call their own engine
//!   or call back their caller complete.
//! * Deadlines and cancellation (`handle.rs`, `remote.rs`): a Python
//!   handler sees its request's deadline and cancellation through its
//!   `Handle`; the thread running it records the request
//!   (`CancelToken::serve_here`), so the calls it makes inherit both; a
//!   non-blocking call's `Request` can be cancelled (dropping it cancels
//!   it too), which tells the server.
//!
//! * asyncio (`aio.rs`): awaitable calls (`call_async`, ...) and `async
//!   def` handlers; the engine hands an event loop what it completes
//!   through the loop's mailbox, so only the loop's thread touches Python.
//!
//! * Streams (`stream.rs`): a caller's `StreamCall`, a handler's
//!   `send_item`, `recv_item` and `items()`, and generator handlers,
//!   whose yielded items are the response stream; items are pickled.
//!
//! * Bulk transfers (`bulk.rs`: `Engine.create_bulk`, `Engine.transfer`,
//!   `Bulk`) expose buffer-protocol objects to the engine through
//!   `buffer::PyBufferMemory`, which reads and writes them on the
//!   engine's reader threads without the GIL.
//!
//! * Groups (`group.rs`, issue 21): a membership (`Group`, its `View`)
//!   and calls to a group's members (`GroupFunction`), over the
//!   `courier-group` crate.
//!
//! * The engine's warnings and errors (its `tracing` events) go to
//!   Python's `logging`, logger `courier.engine` (`log.rs`), from a thread
//!   of their own: the engine's threads never wait for the GIL.
//!
//! `unsafe` is denied everywhere but in `buffer.rs`, which reads a buffer's
//! memory through its pinned pointer (its module comment says why that is
//! sound); nothing else may use it.

#![deny(unsafe_code)]

use pyo3::prelude::*;

mod address;
mod aio;
mod buffer;
mod bulk;
mod engine;
mod errors;
mod group;
mod handle;
mod jobs;
mod log;
mod pickle;
mod protocols;
mod remote;
mod shared;
mod stream;

/// The `courier._native` module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    log::install();
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::InstanceId>()?;
    m.add_class::<address::Address>()?;
    m.add_class::<handle::Handle>()?;
    m.add_class::<remote::RemoteFunction>()?;
    m.add_class::<remote::CallableRemoteFunction>()?;
    m.add_class::<remote::Request>()?;
    m.add_class::<stream::StreamCall>()?;
    m.add_class::<stream::HandleItems>()?;
    m.add_class::<bulk::Bulk>()?;
    m.add_class::<group::Group>()?;
    m.add_class::<group::View>()?;
    m.add_class::<group::Member>()?;
    m.add_class::<group::Change>()?;
    m.add_class::<group::GroupFunction>()?;
    m.add_function(wrap_pyfunction!(bulk::_bulk_from_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(protocols::_protocol_table, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<aio::Mailbox>()?;
    m.add("PROTOCOL_OVERRIDE_ENV", engine::PROTOCOL_OVERRIDE_ENV)?;
    Ok(())
}
