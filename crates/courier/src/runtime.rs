//! The tokio runtimes Courier starts for itself, built in this one place:
//! the progress thread, the RPC threads, and the runtime a blocking engine
//! drives from the threads that call into it.
//!
//! The async [`Engine`](crate::Engine) runs on its caller's runtime and
//! starts the first two when its configuration asks for them; the blocking
//! [`Engine`](crate::blocking::Engine) and bindings (the Python one) start
//! their own runtime with [`progress_thread`] or [`caller_driven`].

use tokio::runtime::{Builder, Runtime};

use crate::error::{Error, Result};

/// The name of the progress thread.
pub const PROGRESS_THREAD_NAME: &str = "courier-progress";

/// The name of RPC threads.
pub const RPC_THREAD_NAME: &str = "courier-rpc";

fn started(what: &'static str, built: std::io::Result<Runtime>) -> Result<Runtime> {
    built.map_err(|source| Error::Runtime { what, source })
}

/// A runtime with one worker thread, `courier-progress`, that makes
/// progress all the time (PyMargo's `use_progress_thread=True`).
///
/// # Errors
/// [`Error::Runtime`] if the thread cannot be started.
pub fn progress_thread() -> Result<Runtime> {
    started(
        "the progress thread",
        Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(PROGRESS_THREAD_NAME)
            .enable_all()
            .build(),
    )
}

/// A runtime with `threads` worker threads, `courier-rpc`, that run
/// handlers (Margo's `rpc_thread_count`).
///
/// # Errors
/// [`Error::Runtime`] if the threads cannot be started.
pub fn rpc_threads(threads: usize) -> Result<Runtime> {
    started(
        "the RPC threads",
        Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(RPC_THREAD_NAME)
            .enable_all()
            .build(),
    )
}

/// A current-thread runtime: it makes progress only while a thread is
/// inside its `block_on` (Margo's default, without a progress thread).
///
/// # Errors
/// [`Error::Runtime`] if the runtime cannot be built.
pub fn caller_driven() -> Result<Runtime> {
    started(
        "the engine's runtime",
        Builder::new_current_thread().enable_all().build(),
    )
}
