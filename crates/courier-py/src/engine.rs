//! `Engine`: PyMargo's engine on a Courier engine.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::address::{self, Address};
use crate::bulk;
use crate::errors;
use crate::jobs::Job;
use crate::remote::{RemoteFunction, Request};
use crate::shared::Shared;

/// When set, every engine this process builds for a bare protocol name
/// (`Engine("tcp")`) uses this protocol instead: the seed's scripts, which
/// name "tcp", run unchanged over unix, quic or shm.
pub(crate) const PROTOCOL_OVERRIDE_ENV: &str = "COURIER_PROTOCOL_OVERRIDE";

/// PyMargo's `mode`: `pymargo.client` (0), `pymargo.server` (1), or the
/// strings "client" and "server".
fn parse_mode(mode: &Bound<'_, PyAny>) -> PyResult<courier::Mode> {
    if let Ok(s) = mode.extract::<String>() {
        return match s.as_str() {
            "client" => Ok(courier::Mode::Client),
            "server" => Ok(courier::Mode::Server),
            other => Err(PyValueError::new_err(format!(
                "mode '{other}': expected 'client' or 'server' (or pymargo.client, pymargo.server)"
            ))),
        };
    }
    match mode.extract::<i64>() {
        Ok(0) => Ok(courier::Mode::Client),
        Ok(1) => Ok(courier::Mode::Server),
        _ => Err(PyValueError::new_err(format!(
            "mode {mode}: expected pymargo.client or pymargo.server"
        ))),
    }
}

/// The JSON configuration from a dict or a JSON string ("" or None: none).
fn parse_config(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Value>> {
    let Some(config) = config.filter(|c| !c.is_none()) else {
        return Ok(None);
    };
    let text: String = if let Ok(s) = config.cast::<PyString>() {
        s.to_string()
    } else {
        py.import("json")?
            .getattr("dumps")?
            .call1((config,))?
            .extract()?
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut value: Value = serde_json::from_str(&text)
        .map_err(|e| errors::courier_error(py, format!("invalid engine configuration: {e}")))?;
    if let Value::Object(m) = &mut value {
        // `engine.config` describes the threads as Margo's Argobots section
        // (`argobots_section`); Courier has no Argobots, so one given back
        // (a configuration read from an engine and reused) is read, not
        // applied: the threads follow `use_progress_thread` and
        // `num_rpc_threads`.
        m.remove(ARGOBOTS);
        mercury_section(m)
            .map_err(|e| errors::courier_error(py, format!("invalid engine configuration: {e}")))?;
    }
    Ok(Some(value))
}

/// The key of Margo's Mercury section.
const MERCURY: &str = "mercury";

/// Reads Margo's `mercury` section (`{"mercury": {"auto_sm": true}}`) into
/// Courier's settings: its `auto_sm` is `paths.auto_sm` (the engine also
/// listens on shm, and its address is a set). Courier has no other Mercury
/// setting: another key is refused, naming it, as the engine refuses a key
/// it does not know.
fn mercury_section(config: &mut Map<String, Value>) -> Result<(), String> {
    let Some(section) = config.remove(MERCURY) else {
        return Ok(());
    };
    let Value::Object(section) = section else {
        return Err(format!(
            "`{MERCURY}` must be an object (Margo's Mercury section), not {section}"
        ));
    };
    for (key, value) in section {
        if key != "auto_sm" {
            return Err(format!(
                "`{MERCURY}.{key}`: Courier reads only `auto_sm` from Margo's Mercury \
                 section (as `paths.auto_sm`)"
            ));
        }
        let Value::Bool(on) = value else {
            return Err(format!(
                "`{MERCURY}.auto_sm` must be true or false, not {value}"
            ));
        };
        let paths = config
            .entry("paths")
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(paths) = paths else {
            return Err(format!("`paths` must be an object, not {paths}"));
        };
        match paths.get("auto_sm") {
            Some(given) if *given != Value::Bool(on) => {
                return Err(format!(
                    "`{MERCURY}.auto_sm` ({on}) and `paths.auto_sm` ({given}) are the same \
                     setting: give one of them"
                ));
            }
            _ => {
                paths.insert("auto_sm".into(), Value::Bool(on));
            }
        }
    }
    Ok(())
}

/// The key of Margo's Argobots section in `engine.config`.
const ARGOBOTS: &str = "argobots";

/// Margo's `argobots` section, describing Courier's threads in its terms
/// (read-only: Courier has no Argobots). Each thread that runs something is
/// an "xstream" with one "pool" of the work it takes: `__primary__` is the
/// program's own thread; `__progress__` the engine's own thread (no
/// progress thread asked for); `__rpc_N__` the threads that share the
/// engine's progress and its handlers (with a progress thread or RPC
/// threads).
fn argobots_section(progress_thread: bool, rpc_threads: usize) -> Value {
    let mut pools = vec![serde_json::json!({
        "name": "__primary__", "kind": "fifo_wait", "access": "mpmc",
        "runs": "the program (a thread waiting in a call drives the engine meanwhile, and runs no handler)",
    })];
    let mut xstreams = vec![serde_json::json!({
        "name": "__primary__",
        "scheduler": {"type": "basic_wait", "pools": ["__primary__"]},
    })];
    if progress_thread {
        let pool = "__rpc__";
        pools.push(serde_json::json!({
            "name": pool, "kind": "fifo_wait", "access": "mpmc",
            "runs": "the engine's progress and its handlers (courier-py-rpc threads: one more \
                     than the handlers that may run at once)",
        }));
        for i in 0..=rpc_threads.max(1) {
            xstreams.push(serde_json::json!({
                "name": format!("__rpc_{i}__"),
                "scheduler": {"type": "basic_wait", "pools": [pool]},
            }));
        }
    } else {
        pools.push(serde_json::json!({
            "name": "__progress__", "kind": "fifo_wait", "access": "mpmc",
            "runs": "the engine's progress and its handlers (the courier-py-progress thread, \
                     started by the first handler registered)",
        }));
        xstreams.push(serde_json::json!({
            "name": "__progress__",
            "scheduler": {"type": "basic_wait", "pools": ["__progress__"]},
        }));
    }
    serde_json::json!({
        "courier": "read-only: Courier has no Argobots; these are its threads, in Margo's terms",
        "pools": pools,
        "xstreams": xstreams,
    })
}

/// A Courier engine with PyMargo's API (the Python class `courier.Engine`
/// adds `register`, `registered`, `deregister` and providers on top).
#[pyclass(module = "courier._native", name = "Engine", subclass, frozen)]
pub(crate) struct Engine {
    shared: Arc<Shared>,
    /// Whether dropping this object finalizes the engine: false for one
    /// made by `Engine.from_margo_instance_id` over another's engine.
    owns: bool,
}

/// What `engine.mid` gives (PyMargo's `margo_instance_id`): an opaque
/// token naming the engine, which `Engine.from_margo_instance_id` takes
/// back. It is not a Margo instance (C code expecting one cannot use it),
/// and it does not keep the engine alive.
#[pyclass(module = "courier._native", name = "InstanceId", frozen)]
pub(crate) struct InstanceId {
    shared: Weak<Shared>,
}

#[pymethods]
impl InstanceId {
    fn __repr__(&self) -> String {
        match self.shared.upgrade() {
            Some(shared) => format!("InstanceId('{}')", shared.engine.address()),
            None => "InstanceId(<dropped engine>)".to_owned(),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // PyMargo finalizes an engine that is garbage collected. Objects
        // made from it (addresses, functions) outlive it safely: their calls
        // then raise CourierError ("the engine is finalized").
        if !self.owns || self.shared.engine.is_finalized() {
            return;
        }
        let shared = &self.shared;
        if Python::try_attach(|py| py.detach(|| shared.finalize_quietly())).is_none() {
            shared.finalize_quietly();
        }
    }
}

#[pymethods]
impl Engine {
    /// `Engine(protocol, mode=server, use_progress_thread=False,
    /// num_rpc_threads=0, config=None)`, as PyMargo's (`options=` is
    /// accepted for `config=`), and Courier's keywords `stats`,
    /// `stats_timing` and `serve_stats` (`"stats": {"counters": ...,
    /// "timing": ..., "serve": ...}` in `config`). The keyword arguments, when given, take precedence over
    /// the same settings in `config`.
    ///
    /// `_instance` (an `InstanceId`, for `from_margo_instance_id`) makes
    /// another object over that engine instead of a new engine.
    #[new]
    #[pyo3(signature = (addr, mode=None, use_progress_thread=None, num_rpc_threads=None, config=None, *, options=None, stats=None, stats_timing=None, serve_stats=None, _instance=None))]
    // PyMargo's signature, and the two keywords of Courier's.
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        py: Python<'_>,
        addr: &str,
        mode: Option<&Bound<'_, PyAny>>,
        use_progress_thread: Option<bool>,
        num_rpc_threads: Option<usize>,
        config: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyAny>>,
        stats: Option<bool>,
        stats_timing: Option<bool>,
        serve_stats: Option<bool>,
        _instance: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        if let Some(instance) = _instance {
            return Self::adopt(py, instance);
        }
        let mode = mode.map(parse_mode).transpose()?;
        let json = parse_config(py, config.or(options))?;
        let from_json = |keys: &[&str]| {
            json.as_ref()
                .and_then(|v| keys.iter().find_map(|k| v.get(*k).cloned()))
        };
        let progress_thread = match use_progress_thread {
            Some(p) => p,
            None => from_json(&["use_progress_thread"])
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        let rpc_threads = match num_rpc_threads {
            Some(n) => n,
            None => from_json(&["rpc_thread_count", "num_rpc_threads"])
                .and_then(|v| v.as_u64())
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        // Handler threads without a progress thread would wait for a thread
        // to drive the engine (Margo's way); here they get one.
        let progress_thread = progress_thread || rpc_threads > 0;
        let target = match std::env::var(PROTOCOL_OVERRIDE_ENV) {
            // Only a bare protocol name: not a listen address, nor a set.
            Ok(p) if !p.is_empty() && !addr.contains("://") && !addr.contains(',') => p,
            _ => addr.to_owned(),
        };

        // The binding runs the handlers (on Python threads), so the engine
        // itself gets neither a progress thread nor RPC threads: the
        // runtime built here is the progress thread when one is asked for.
        // The shm transport keeps its own spin: no thread that spins in the
        // engine's reader is one that handlers wait for (the reader hands a
        // request to the engine's thread before it spins).
        let mut builder = courier::Engine::builder(&target)
            .use_progress_thread(false)
            .num_rpc_threads(0);
        if let Some(v) = json {
            builder = builder.config_value(v);
        }
        if let Some(m) = mode {
            builder = builder.mode(m);
        }
        if let Some(on) = stats {
            builder = builder.stats(on);
        }
        if let Some(on) = stats_timing {
            builder = builder.stats_timing(on);
        }
        if let Some(on) = serve_stats {
            builder = builder.serve_stats(on);
        }
        // One runtime for every mode, driven by the handler threads
        // (`Shared::start_handlers`) and by the threads waiting in it.
        let rt = courier::runtime::caller_driven().map_err(|e| errors::to_py(py, &e))?;
        let built = py.detach(|| rt.block_on(builder.build()));
        let engine = built.map_err(|e| errors::to_py(py, &e))?;
        let spellings = address::spellings_of(&target, engine.protocol());
        let shared = Shared::new(engine, rt, progress_thread, rpc_threads);
        if !spellings.is_empty() {
            let _ = shared.spellings.set(spellings);
        }
        if progress_thread {
            // The progress thread is there from the start, as PyMargo's.
            shared.start_handlers();
        }
        Ok(Self { shared, owns: true })
    }

    /// PyMargo's `mid`: the token `Engine.from_margo_instance_id` takes
    /// (not a Margo instance: see `InstanceId`).
    #[getter]
    fn mid(&self) -> InstanceId {
        InstanceId {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// PyMargo's name for `mid`.
    fn get_internal_mid(&self) -> InstanceId {
        self.mid()
    }

    /// This engine's address (`str()` of it is what `lookup` takes): of an
    /// engine of several protocols, an address set (`tcp://…,shm://…`).
    #[getter]
    fn address(&self) -> Address {
        Address::new(self.shared.engine.address(), self.shared.clone())
    }

    /// PyMargo's method form of `address`.
    fn addr(&self) -> Address {
        self.address()
    }

    /// The canonical protocol name ("tcp" for an engine built as "ofi+tcp");
    /// of an engine of several protocols, their names as listed ("tcp,shm").
    #[getter]
    fn protocol(&self) -> &str {
        self.shared.engine.protocol()
    }

    /// "server" or "client".
    #[getter]
    fn _mode(&self) -> &'static str {
        match self.shared.engine.mode() {
            courier::Mode::Client => "client",
            _ => "server",
        }
    }

    /// Whether the engine accepts requests (server mode, not finalized).
    #[getter]
    fn listening(&self) -> bool {
        self.shared.engine.mode() == courier::Mode::Server && !self.shared.engine.is_finalized()
    }

    /// Whether the engine is finalized (or finalizing).
    #[getter]
    fn finalized(&self) -> bool {
        self.shared.engine.is_finalized()
    }

    /// The effective configuration, as a dict: every setting with its value.
    /// Also Margo's `argobots` section, describing the engine's threads in
    /// its terms (read-only: Courier has no Argobots).
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut v = self.shared.engine.config();
        if let Value::Object(m) = &mut v {
            m.insert(
                "use_progress_thread".into(),
                Value::Bool(self.shared.progress_thread),
            );
            m.insert("rpc_thread_count".into(), self.shared.rpc_threads.into());
            m.insert(
                ARGOBOTS.into(),
                argobots_section(self.shared.progress_thread, self.shared.rpc_threads),
            );
        }
        py.import("json")?.getattr("loads")?.call1((v.to_string(),))
    }

    /// This engine's statistics, as a dict: the JSON schema of
    /// docs/observability.md (counts, errors by kind and, with
    /// `stats_timing`, latency phases per RPC and provider; peers;
    /// providers' limits; bulk transfers; the progress loop). Its
    /// `settings` give the handler threads as `config` does.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = self.shared.engine.stats();
        let mut v = serde_json::to_value(&stats)
            .map_err(|e| errors::courier_error(py, format!("statistics: {e}")))?;
        // The binding runs the handlers on threads of its own: the engine
        // underneath was built with neither (see `py_new`).
        if let Some(Value::Object(settings)) = v.get_mut("settings") {
            settings.insert(
                "use_progress_thread".into(),
                Value::Bool(self.shared.progress_thread),
            );
            settings.insert("rpc_thread_count".into(), self.shared.rpc_threads.into());
        }
        py.import("json")?.getattr("loads")?.call1((v.to_string(),))
    }

    /// Lets peers shut this engine down with `address.shutdown()`.
    fn enable_remote_shutdown(&self) {
        self.shared.engine.enable_remote_shutdown();
    }

    /// Resolves an address string and connects to it.
    fn lookup(&self, py: Python<'_>, address: &str) -> PyResult<Address> {
        let engine = self.shared.engine.clone();
        let text = address.to_owned();
        let addr = self
            .shared
            .wait(py, "lookup", async move { engine.lookup(&text).await })?
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(Address::new(addr, self.shared.clone()))
    }

    /// Registers `func(handle, *args, **kwargs)` as the handler of `name`
    /// at `provider_id`.
    fn _register(
        &self,
        py: Python<'_>,
        name: &str,
        func: Bound<'_, PyAny>,
        provider_id: u16,
        disable_response: bool,
    ) -> PyResult<()> {
        if !func.is_callable() {
            return Err(PyValueError::new_err(format!(
                "the handler of RPC '{name}' is not callable"
            )));
        }
        self.shared.start_handlers();
        let jobs = self.shared.jobs.clone();
        let func = Arc::new(func.unbind());
        let mut options = courier::RpcOptions::provider(provider_id);
        options.disable_response = disable_response;
        self.shared
            .engine
            .register_raw(
                name,
                options,
                move |handle: courier::Handle, payload: Bytes| {
                    let (done, result) = oneshot::channel();
                    let token = handle.cancel_token();
                    // It waits for a handler thread: a `waiting` request
                    // in the statistics until one takes it up (`run_job`).
                    handle.mark_queued();
                    let queued = jobs
                        .push(Job {
                            handle,
                            payload,
                            func: func.clone(),
                            done,
                        })
                        .is_ok();
                    async move {
                        if !queued {
                            return Err("the engine is finalizing".to_owned());
                        }
                        let out = result.await.unwrap_or_else(|_| {
                            Err("the handler did not run: the engine was finalized".to_owned())
                        });
                        if token.is_cancelled() {
                            // Cancelled while the Python handler ran (its
                            // deadline may have passed before the engine
                            // noticed): its caller gave up, so nothing is
                            // sent back ("finished without responding", an
                            // error); the engine ends the request as
                            // cancelled, as it ends a Rust handler's.
                            std::future::pending::<()>().await;
                        }
                        out
                    }
                },
            )
            .map_err(|e| errors::to_py(py, &e))
    }

    /// Whether a handler for `name` is registered at `provider_id`.
    fn _registered(&self, name: &str, provider_id: u16) -> bool {
        self.shared.engine.registered(name, provider_id)
    }

    /// Removes the handler of `name` at `provider_id`.
    fn _deregister(&self, py: Python<'_>, name: &str, provider_id: u16) -> PyResult<()> {
        self.shared
            .engine
            .deregister(name, provider_id)
            .map_err(|e| errors::to_py(py, &e))
    }

    /// A remote function for `name`.
    fn _remote(
        slf: &Bound<'_, Self>,
        name: &str,
        provider_id: u16,
        disable_response: bool,
    ) -> RemoteFunction {
        let this = slf.get();
        RemoteFunction::new(
            this.shared.clone(),
            slf.clone().into_any().unbind(),
            name,
            provider_id,
            disable_response,
        )
    }

    /// Exposes `array` for bulk transfers and returns its `Bulk` handle
    /// (PyMargo's `create_bulk`). `array` is any object with a contiguous
    /// buffer (bytes, bytearray, memoryview, array.array, numpy arrays), or
    /// a list or tuple of them exposed end to end; `mode` is
    /// `courier.bulk.read_only`, `write_only` or `read_write`. Read-only
    /// memory (bytes) can only be exposed `read_only`. The object stays
    /// alive and exported (a bytearray cannot resize) while the handle
    /// lives.
    fn create_bulk(
        &self,
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        mode: &Bound<'_, PyAny>,
    ) -> PyResult<bulk::Bulk> {
        bulk::create_bulk(py, &self.shared, array, mode, false)
    }

    /// `create_bulk` as PyMargo's: a `bytes` object may also be exposed
    /// `write_only` or `read_write`, and peers then write into it, although
    /// bytes are immutable (the `pymargo` shim's; see docs/python.md for
    /// the hazard). Other read-only memory is refused as by `create_bulk`.
    fn _create_bulk_pymargo(
        &self,
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        mode: &Bound<'_, PyAny>,
    ) -> PyResult<bulk::Bulk> {
        bulk::create_bulk(py, &self.shared, array, mode, true)
    }

    /// Copies `size` bytes between `origin_handle` (a region of the engine
    /// at `origin_addr`, from `origin_offset`) and `local_handle` (a region
    /// of this engine, from `local_offset`): `courier.bulk.pull` copies
    /// from the origin into the local region, `push` the other way
    /// (PyMargo's `transfer`). With `blocking=False` it returns a `Request`
    /// at once (`wait()`, `test()`). `timeout` is in milliseconds (0: none).
    /// Raises `courier.BulkError` when the transfer is refused or invalid.
    #[pyo3(signature = (op, origin_addr, origin_handle, origin_offset, local_handle, local_offset, size, blocking=true, timeout=None))]
    // PyMargo's signature, argument for argument.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        py: Python<'_>,
        op: &Bound<'_, PyAny>,
        origin_addr: &Bound<'_, PyAny>,
        origin_handle: &Bound<'_, PyAny>,
        origin_offset: usize,
        local_handle: &Bound<'_, PyAny>,
        local_offset: usize,
        size: usize,
        blocking: bool,
        timeout: Option<f64>,
    ) -> PyResult<Option<Request>> {
        let args = bulk::TransferArgs {
            op,
            origin_addr,
            origin_handle,
            origin_offset,
            local_handle,
            local_offset,
            size,
            blocking,
            timeout,
        };
        bulk::transfer(py, &self.shared, args)
    }

    /// Finalizes the engine: it stops listening, its connections close
    /// (calls in flight raise CourierError), handlers stop being run.
    /// Finalizing twice is harmless.
    fn finalize(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.shared.engine.clone();
        // Spawned, so that an interrupted wait does not leave it half done.
        let join = self.shared.spawn(async move { engine.finalize().await });
        let _ = self.shared.wait(py, "finalize", join)?;
        Ok(())
    }

    /// Blocks until the engine is finalized (by `finalize()` from another
    /// thread, a remote `shutdown()`), serving RPCs meanwhile. Ctrl-C
    /// raises KeyboardInterrupt here.
    fn wait_for_finalize(&self, py: Python<'_>) -> PyResult<()> {
        let engine = self.shared.engine.clone();
        self.shared.wait_idle(py, "wait_for_finalize", async move {
            engine.wait_for_finalize().await;
        })
    }

    /// Waits `seconds` while the engine makes progress (PyMargo's `sleep`).
    fn sleep(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let d = std::time::Duration::try_from_secs_f64(seconds)
            .map_err(|e| PyValueError::new_err(format!("sleep({seconds}): {e}")))?;
        // The timer is made inside the runtime (where `wait` polls it): made
        // here, on a Python thread, it would find no runtime and panic.
        self.shared
            .wait_idle(py, "sleep", async move { tokio::time::sleep(d).await })
    }

    /// Calls `callback()` when finalize starts, before anything stops.
    fn on_prefinalize(&self, callback: Bound<'_, PyAny>) {
        self.shared.engine.on_prefinalize(python_callback(callback));
    }

    /// Calls `callback()` at the end of finalize.
    fn on_finalize(&self, callback: Bound<'_, PyAny>) {
        self.shared.engine.on_finalize(python_callback(callback));
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Finalizes the engine (and lets any exception go on); an object made
    /// by `from_margo_instance_id` leaves it running, as PyMargo's does.
    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        if self.owns {
            self.finalize(py)?;
        }
        Ok(false)
    }

    // asyncio (`aio.rs`).

    /// `lookup` as an asyncio awaitable: `await engine.lookup_async(address)`.
    fn lookup_async<'py>(&self, py: Python<'py>, address: &str) -> PyResult<Bound<'py, PyAny>> {
        crate::aio::lookup(py, &self.shared, address)
    }

    /// `wait_for_finalize` as an asyncio awaitable: an asyncio server's
    /// `await engine.wait_for_finalize_async()`.
    fn wait_for_finalize_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        crate::aio::wait_for_finalize(py, &self.shared)
    }

    /// Makes sure the engine moves while an event loop waits for it (a
    /// thread drives it when it has no progress thread): called for an
    /// engine made while an event loop runs in its thread.
    fn _drive_for_asyncio(&self) -> PyResult<()> {
        crate::aio::drive(&self.shared)
    }

    /// Registers `func`, a coroutine function `async def func(handle,
    /// *args, **kwargs)`, as the handler of `name` at `provider_id`, run on
    /// `event_loop`, whose mailbox is `mailbox` (`courier/_aio.py` chooses
    /// the loop and makes its mailbox).
    #[allow(clippy::too_many_arguments)] // `register`'s, the loop's and its mailbox
    fn _register_async(
        &self,
        py: Python<'_>,
        name: &str,
        func: Bound<'_, PyAny>,
        event_loop: Bound<'_, PyAny>,
        mailbox: Bound<'_, PyAny>,
        provider_id: u16,
        disable_response: bool,
    ) -> PyResult<()> {
        crate::aio::register(
            py,
            &self.shared,
            name,
            func,
            event_loop,
            mailbox,
            provider_id,
            disable_response,
        )
    }

    fn __repr__(&self) -> String {
        format!("Engine('{}', mode={})", self.address().text(), self._mode())
    }
}

impl Engine {
    /// The engine's shared state (for `group.rs`).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Another object over the engine `instance` names (an `InstanceId`);
    /// dropping it does not finalize the engine.
    fn adopt(py: Python<'_>, instance: &Bound<'_, PyAny>) -> PyResult<Self> {
        let Ok(id) = instance.cast::<InstanceId>() else {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "from_margo_instance_id: expected the `mid` of a Courier engine, got {}: \
                 Courier cannot adopt a Margo instance",
                instance.get_type().name()?
            )));
        };
        let Some(shared) = id.get().shared.upgrade() else {
            return Err(errors::courier_error(
                py,
                "from_margo_instance_id: the engine of this mid was dropped".to_owned(),
            ));
        };
        Ok(Self {
            shared,
            owns: false,
        })
    }
}

/// A finalize callback calling a Python callable; an exception it raises
/// is printed (finalize goes on).
fn python_callback(callback: Bound<'_, PyAny>) -> impl FnOnce() + Send + 'static {
    let callback = callback.unbind();
    move || {
        Python::try_attach(|py| {
            if let Err(e) = callback.call0(py) {
                e.print(py);
            }
        });
    }
}
