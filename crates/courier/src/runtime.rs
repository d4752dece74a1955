//! The tokio runtimes Courier starts for itself, built in this one place:
//! the progress thread, the RPC threads, the providers' handler pools, and
//! the runtime a blocking engine drives from the threads that call into it.
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

/// The prefix of a handler pool's thread names: the threads of pool
/// `storage` are named `courier-pool-storage`.
pub const POOL_THREAD_PREFIX: &str = "courier-pool-";

/// The name of the threads of handler pool `pool` (see [`pool`]).
pub fn pool_thread_name(pool: &str) -> String {
    format!("{POOL_THREAD_PREFIX}{pool}")
}

/// A runtime with `threads` worker threads named after pool `name` (see
/// [`pool_thread_name`]) that run the handlers of the providers assigned to
/// it (the `pools` and `providers` keys of [`Config`](crate::Config)).
///
/// # Errors
/// [`Error::Runtime`] if the threads cannot be started.
pub fn pool(name: &str, threads: usize) -> Result<Runtime> {
    started(
        "a handler pool",
        Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(pool_thread_name(name))
            .enable_all()
            .build(),
    )
}

/// Runtimes started for an engine that is being built: if the build fails
/// part way (a pool cannot start, the address is in use), they are shut
/// down without waiting, which may be done from inside an async context
/// (dropping a runtime there panics).
#[derive(Debug, Default)]
pub(crate) struct Started(Vec<Runtime>);

impl Started {
    /// Keeps `rt`, and returns a handle on it.
    pub(crate) fn push(&mut self, rt: Runtime) -> tokio::runtime::Handle {
        let handle = rt.handle().clone();
        self.0.push(rt);
        handle
    }

    /// The runtimes, for the engine to own (once it is built).
    pub(crate) fn keep(mut self) -> Vec<Runtime> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for rt in self.0.drain(..) {
            rt.shutdown_background();
        }
    }
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
