//! Groups of engines (issue 21) from Python: `Group` (the membership),
//! its `View` and `Member`s, and `GroupFunction` (a remote function bound
//! to a group and a provider id), over the `courier-group` crate.
//!
//! The membership runs as a task on the engine's runtime, so making a group
//! starts the engine's own thread (as registering a handler does): the
//! group keeps probing while the program does something else.
//! A group call's arguments and response are pickled as an ordinary
//! call's (`remote.rs`), and its blocking, non-blocking and asyncio forms
//! are those of `CallableRemoteFunction`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use courier_group::{
    Backoff, GroupClient, GroupOptions, Hedge, MembershipError, RawGroupFunction, RetryBudget,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::address::Address;
use crate::errors;
use crate::pickle;
use crate::remote::{outcome, timeout_from_ms, CallCancel, Request};
use crate::shared::Shared;

/// How long `Group.view_at` and `Group.view_from_file` wait for a member
/// when not told.
const VIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// A membership error as a Python exception: `ValueError` for options the
/// group refuses, `courier.CourierError` (with the Rust message, which
/// names the group, the address or the file) for the rest.
fn membership_error(py: Python<'_>, e: &MembershipError) -> PyErr {
    match e {
        MembershipError::Options(_) => PyValueError::new_err(e.to_string()),
        _ => errors::courier_error(py, e.to_string()),
    }
}

/// The engine behind a `courier.Engine` (or a subclass), and the object.
fn engine_of(engine: &Bound<'_, PyAny>) -> PyResult<(Arc<Shared>, Py<PyAny>)> {
    let Ok(native) = engine.cast::<crate::engine::Engine>() else {
        return Err(PyTypeError::new_err(format!(
            "expected a courier.Engine, got {}",
            engine.get_type().name()?
        )));
    };
    Ok((native.get().shared().clone(), engine.clone().unbind()))
}

/// Group options from a dict or a JSON string (the fields of
/// docs/groups.md, durations in milliseconds); `None`: the defaults.
fn options_of(py: Python<'_>, options: Option<&Bound<'_, PyAny>>) -> PyResult<GroupOptions> {
    let Some(options) = options.filter(|o| !o.is_none()) else {
        return Ok(GroupOptions::default());
    };
    let text: String = if let Ok(s) = options.cast::<PyString>() {
        s.to_string()
    } else {
        py.import("json")?
            .getattr("dumps")?
            .call1((options,))?
            .extract()?
    };
    GroupOptions::from_json(&text).map_err(|e| membership_error(py, &e))
}

/// An address as a string: an `Address`'s text, or a string.
fn address_text(address: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(a) = address.cast::<Address>() {
        return Ok(a.get().text());
    }
    address.extract::<String>().map_err(|_| {
        PyTypeError::new_err(format!(
            "expected an address (a str or a courier.Address), got {}",
            address
                .get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })
}

/// A timeout in milliseconds (None or 0: [`VIEW_TIMEOUT`]) for reading a
/// view, which always has one.
/// How a membership is made: `Group.create`, `join` or `open`, and their
/// asyncio forms.
enum Maker {
    Create {
        name: String,
    },
    Join {
        name: String,
        addresses: Vec<String>,
    },
    Open {
        path: PathBuf,
    },
}

impl Maker {
    async fn make(
        self,
        engine: courier::Engine,
        options: GroupOptions,
    ) -> Result<courier_group::Group, MembershipError> {
        match self {
            Self::Create { name } => courier_group::Group::create(&engine, &name, options).await,
            Self::Join { name, addresses } => {
                courier_group::Group::join_any(&engine, &name, &addresses, options).await
            }
            Self::Open { path } => courier_group::Group::open(&engine, &path, options).await,
        }
    }
}

/// One address (str or Address) or an iterable of them, as text.
fn addresses_of(via: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if via.cast::<PyString>().is_ok() || via.cast::<Address>().is_ok() {
        Ok(vec![address_text(via)?])
    } else {
        via.try_iter()?.map(|a| address_text(&a?)).collect()
    }
}

fn view_timeout(timeout: Option<f64>) -> PyResult<Duration> {
    Ok(timeout_from_ms(timeout)?.unwrap_or(VIEW_TIMEOUT))
}

/// One member in a view: its address, its state (`"alive"`, `"suspect"`,
/// `"down"` or `"left"`) and its generation.
#[pyclass(module = "courier._native", name = "Member", frozen, get_all)]
pub(crate) struct Member {
    /// Its engine's address (what `Engine.lookup` takes).
    address: String,
    /// `"alive"`, `"suspect"`, `"down"` or `"left"`.
    state: &'static str,
    /// Microseconds since the epoch when it started (or rejoined).
    generation: u64,
}

#[pymethods]
impl Member {
    /// Whether calls may go to it (alive or suspected).
    #[getter]
    fn live(&self) -> bool {
        matches!(self.state, "alive" | "suspect")
    }

    fn __repr__(&self) -> String {
        format!(
            "Member('{}', state='{}', generation={})",
            self.address, self.state, self.generation
        )
    }
}

/// How one member changed between two views (`View.changes_since`): its
/// address, its state before and after (None: not in that view) and
/// whether it came back as a newer generation at its address.
#[pyclass(module = "courier._native", name = "Change", frozen, get_all)]
pub(crate) struct Change {
    /// The member's address.
    address: String,
    /// Its state in the earlier view; None when it is new.
    before: Option<&'static str>,
    /// Its state in the later view; None when the view forgot it.
    after: Option<&'static str>,
    /// Whether it is a newer generation at the same address (a restart).
    rejoined: bool,
    /// The change as `courier group view --watch` prints it.
    line: String,
}

#[pymethods]
impl Change {
    fn __str__(&self) -> &str {
        &self.line
    }

    fn __repr__(&self) -> String {
        format!("Change('{}')", self.line)
    }
}

/// A member's view of its group: the group, whose view it is, its version
/// (grows at each change; versions of two members are not comparable) and
/// the members, sorted by address.
#[pyclass(module = "courier._native", name = "View", frozen)]
pub(crate) struct View {
    inner: courier_group::View,
}

impl View {
    fn new(mut inner: courier_group::View) -> Self {
        inner.members.sort_by(|a, b| a.address.cmp(&b.address));
        Self { inner }
    }
}

#[pymethods]
impl View {
    /// The group's name.
    #[getter]
    fn group(&self) -> &str {
        &self.inner.group
    }

    /// The address of the member whose view this is.
    #[getter]
    fn viewer(&self) -> &str {
        &self.inner.viewer
    }

    /// The view's version.
    #[getter]
    fn version(&self) -> u64 {
        self.inner.version
    }

    /// Every member it knows, departed ones included.
    #[getter]
    fn members(&self) -> Vec<Member> {
        self.inner
            .members
            .iter()
            .map(|m| Member {
                address: m.address.clone(),
                state: m.state.as_str(),
                generation: m.generation,
            })
            .collect()
    }

    /// The addresses of the live members (alive or suspected).
    fn live(&self) -> Vec<String> {
        self.inner.live().map(|m| m.address.clone()).collect()
    }

    /// The state of the member at `address`, None if the view has none.
    fn state_of(&self, address: &Bound<'_, PyAny>) -> PyResult<Option<&'static str>> {
        let address = address_text(address)?;
        Ok(self.inner.state_of(&address).map(|s| s.as_str()))
    }

    /// What changed from `earlier` (an older view, maybe another
    /// member's) to this one, one `Change` per member that is new, changed
    /// state or generation, or was forgotten, sorted by address.
    fn changes_since(&self, earlier: PyRef<'_, Self>) -> Vec<Change> {
        self.inner
            .changes_since(&earlier.inner)
            .into_iter()
            .map(|c| Change {
                address: c.address().to_owned(),
                before: c.before.as_ref().map(|m| m.state.as_str()),
                after: c.after.as_ref().map(|m| m.state.as_str()),
                rejoined: c.rejoined(),
                line: c.to_string(),
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        let members: Vec<String> = self
            .inner
            .members
            .iter()
            .map(|m| format!("{} {}", m.address, m.state.as_str()))
            .collect();
        format!(
            "View('{}' by {}, version={}, [{}])",
            self.inner.group,
            self.inner.viewer,
            self.inner.version,
            members.join(", ")
        )
    }
}

/// This engine's membership of a group (docs/groups.md, docs/python.md
/// "Groups"): made by `Group.create`, `Group.join` or `Group.open`, read
/// with `view()` and `wait_for_change()`, ended by `leave()` (or by the
/// engine's finalize, which leaves first; a membership whose last
/// reference is dropped stops as a death would).
#[pyclass(module = "courier._native", name = "Group", frozen)]
pub(crate) struct Group {
    inner: courier_group::Group,
    shared: Arc<Shared>,
    engine: Py<PyAny>,
    /// What the group's functions share (calls in flight per member,
    /// connections, the retry budget), made with the first.
    client: OnceLock<GroupClient>,
}

impl Group {
    /// Makes the membership (`maker`) on the engine's runtime, and starts
    /// the engine's thread so that the membership runs from then on,
    /// whatever the program does.
    fn start(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        what: &str,
        maker: Maker,
        options: GroupOptions,
    ) -> PyResult<Self> {
        let (shared, engine) = engine_of(engine)?;
        shared.start_handlers();
        let inner = shared
            .wait(py, what, maker.make(shared.engine.clone(), options))?
            .map_err(|e| membership_error(py, &e))?;
        Ok(Self {
            inner,
            shared,
            engine,
            client: OnceLock::new(),
        })
    }

    /// `start` as an asyncio awaitable: the membership is made on the
    /// engine's runtime, the coroutine gives the `Group`.
    fn start_async<'py>(
        py: Python<'py>,
        engine: &Bound<'py, PyAny>,
        what: &'static str,
        maker: Maker,
        options: GroupOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (shared, engine) = engine_of(engine)?;
        shared.start_handlers();
        let made = maker.make(shared.engine.clone(), options);
        let keep = shared.clone();
        crate::aio::awaitable_with(
            py,
            &shared,
            what,
            made,
            crate::aio::OnCancel::Abort,
            move |py, out| match out {
                Ok(inner) => Ok(Py::new(
                    py,
                    Self {
                        inner,
                        shared: keep,
                        engine,
                        client: OnceLock::new(),
                    },
                )?
                .into_any()),
                Err(e) => Err(membership_error(py, &e)),
            },
        )
    }

    fn client(&self) -> &GroupClient {
        self.client
            .get_or_init(|| GroupClient::new(&self.shared.engine, Arc::new(self.inner.clone())))
    }
}

#[pymethods]
impl Group {
    /// Starts a new group named `name`, with `engine` (a server-mode
    /// engine) its only member.
    #[staticmethod]
    #[pyo3(signature = (engine, name, options=None))]
    fn create(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        name: &str,
        options: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = options_of(py, options)?;
        let name = name.to_owned();
        Self::start(py, engine, "Group.create", Maker::Create { name }, options)
    }

    /// Joins group `name` through the member at `via` (an address), or
    /// through the first of a list of addresses that answers; returns once
    /// a member has taken this engine in.
    #[staticmethod]
    #[pyo3(signature = (engine, name, via, options=None))]
    fn join(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        name: &str,
        via: &Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = options_of(py, options)?;
        let addresses = addresses_of(via)?;
        let name = name.to_owned();
        Self::start(
            py,
            engine,
            "Group.join",
            Maker::Join { name, addresses },
            options,
        )
    }

    /// Creates or joins the group of the group file at `path`: without a
    /// file, creates a group named after it and writes it; with one, joins
    /// through the members it lists. The file is kept up to date while
    /// this member runs.
    #[staticmethod]
    #[pyo3(signature = (engine, path, options=None))]
    fn open(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        path: PathBuf,
        options: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let options = options_of(py, options)?;
        Self::start(py, engine, "Group.open", Maker::Open { path }, options)
    }

    /// `create` as an asyncio awaitable.
    #[staticmethod]
    #[pyo3(signature = (engine, name, options=None))]
    fn create_async<'py>(
        py: Python<'py>,
        engine: &Bound<'py, PyAny>,
        name: &str,
        options: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = options_of(py, options)?;
        let name = name.to_owned();
        let maker = Maker::Create { name };
        Self::start_async(py, engine, "Group.create_async", maker, options)
    }

    /// `join` as an asyncio awaitable.
    #[staticmethod]
    #[pyo3(signature = (engine, name, via, options=None))]
    fn join_async<'py>(
        py: Python<'py>,
        engine: &Bound<'py, PyAny>,
        name: &str,
        via: &Bound<'py, PyAny>,
        options: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = options_of(py, options)?;
        let addresses = addresses_of(via)?;
        let name = name.to_owned();
        let maker = Maker::Join { name, addresses };
        Self::start_async(py, engine, "Group.join_async", maker, options)
    }

    /// `open` as an asyncio awaitable.
    #[staticmethod]
    #[pyo3(signature = (engine, path, options=None))]
    fn open_async<'py>(
        py: Python<'py>,
        engine: &Bound<'py, PyAny>,
        path: PathBuf,
        options: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = options_of(py, options)?;
        Self::start_async(
            py,
            engine,
            "Group.open_async",
            Maker::Open { path },
            options,
        )
    }

    /// Membership messages this engine received and did not apply, by
    /// reason, since its first group started: `other_group` (for a group
    /// it is not in), `wire_version` (another version), `malformed`,
    /// `refused` (by the protocol, or while the group's inbox was full).
    fn dropped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = self.inner.dropped();
        let out = PyDict::new(py);
        out.set_item("other_group", d.other_group)?;
        out.set_item("wire_version", d.wire_version)?;
        out.set_item("malformed", d.malformed)?;
        out.set_item("refused", d.refused)?;
        Ok(out)
    }

    /// Reads the view of the member at `address` (`group`: which of its
    /// groups; None: its first), waiting at most `timeout` milliseconds
    /// (None or 0: 5000), as a tool would: `engine` need not be a member.
    #[staticmethod]
    #[pyo3(signature = (engine, address, group=None, timeout=None))]
    fn view_at(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        address: &Bound<'_, PyAny>,
        group: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<View> {
        let (shared, _) = engine_of(engine)?;
        let address = address_text(address)?;
        let timeout = view_timeout(timeout)?;
        let native = shared.engine.clone();
        let view = shared.wait(py, "Group.view_at", async move {
            courier_group::Group::view_at(&native, &address, group.as_deref(), timeout).await
        })?;
        view.map(View::new).map_err(|e| membership_error(py, &e))
    }

    /// Reads the view of the group of the group file at `path` from the
    /// first member it lists that answers, waiting at most `timeout`
    /// milliseconds (None or 0: 5000) for each.
    #[staticmethod]
    #[pyo3(signature = (engine, path, timeout=None))]
    fn view_from_file(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        path: PathBuf,
        timeout: Option<f64>,
    ) -> PyResult<View> {
        let (shared, _) = engine_of(engine)?;
        let timeout = view_timeout(timeout)?;
        let native = shared.engine.clone();
        let view = shared.wait(py, "Group.view_from_file", async move {
            courier_group::Group::view_from_file(&native, &path, timeout).await
        })?;
        view.map(View::new).map_err(|e| membership_error(py, &e))
    }

    /// The group's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// This member's address (its engine's).
    #[getter]
    fn address(&self) -> String {
        self.inner.address()
    }

    /// The engine it belongs to.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.engine.clone_ref(py)
    }

    /// Whether the membership still runs (not left, engine not finalized).
    #[getter]
    fn running(&self) -> bool {
        self.inner.is_running()
    }

    /// This member's view now.
    fn view(&self) -> View {
        View::new(self.inner.view())
    }

    /// Waits until the view's version is no longer `version` (default: the
    /// version now), at most `timeout` milliseconds (None or 0: no
    /// limit), and returns the view then: a view of the same version if
    /// the timeout passed or the membership stopped.
    #[pyo3(signature = (version=None, timeout=None))]
    fn wait_for_change(
        &self,
        py: Python<'_>,
        version: Option<u64>,
        timeout: Option<f64>,
    ) -> PyResult<View> {
        let changed = self.changed(version, timeout)?;
        Ok(View::new(self.shared.wait(
            py,
            "Group.wait_for_change",
            changed,
        )?))
    }

    /// `wait_for_change` as an asyncio awaitable.
    #[pyo3(signature = (version=None, timeout=None))]
    fn wait_for_change_async<'py>(
        &self,
        py: Python<'py>,
        version: Option<u64>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let changed = self.changed(version, timeout)?;
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "wait_for_change_async",
            changed,
            crate::aio::OnCancel::Abort,
            |py, view| Ok(Py::new(py, View::new(view))?.into_any()),
        )
    }

    /// Leaves the group: the members it knows see it `"left"`, and the
    /// group file (if any) is rewritten without it. Raises CourierError
    /// when the membership had stopped already.
    fn leave(&self, py: Python<'_>) -> PyResult<()> {
        let inner = self.inner.clone();
        self.shared
            .wait(py, "Group.leave", async move { inner.leave().await })?
            .map_err(|e| membership_error(py, &e))
    }

    /// `leave` as an asyncio awaitable.
    fn leave_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::aio::awaitable_with(
            py,
            &self.shared,
            "leave_async",
            async move { inner.leave().await },
            crate::aio::OnCancel::Finish,
            |py, out| match out {
                Ok(()) => Ok(py.None()),
                Err(e) => Err(membership_error(py, &e)),
            },
        )
    }

    /// A function calling RPC `name` at `provider_id` of the group's live
    /// members (see `GroupFunction`); the functions of one group share
    /// its members' connections, their counts of calls in flight and the
    /// retry budget.
    #[pyo3(signature = (name, provider_id=0, *, timeout=None, idempotent=false, max_attempts=None, hedge_after=None, hedge_percentile=None, retry_budget=None, retry_backoff=None))]
    #[allow(clippy::too_many_arguments)] // the function's settings, as keywords
    fn remote(
        slf: &Bound<'_, Self>,
        name: &str,
        provider_id: u16,
        timeout: Option<f64>,
        idempotent: bool,
        max_attempts: Option<u32>,
        hedge_after: Option<f64>,
        hedge_percentile: Option<f64>,
        retry_budget: Option<&Bound<'_, PyAny>>,
        retry_backoff: Option<(f64, f64)>,
    ) -> PyResult<GroupFunction> {
        let this = slf.get();
        let settings = Settings {
            provider_id,
            timeout,
            idempotent,
            max_attempts,
            hedge_after,
            hedge_percentile,
            retry_budget: retry_budget.map(budget_of).transpose()?,
            retry_backoff: retry_backoff.map(backoff_of).transpose()?,
        };
        GroupFunction::make(
            this.client().raw_function(name),
            settings,
            this.shared.clone(),
            this.engine.clone_ref(slf.py()),
            slf.clone().into_any().unbind(),
            format!("group '{}'", this.inner.name()),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Group('{}' at {}{})",
            self.inner.name(),
            self.inner.address(),
            if self.inner.is_running() {
                ""
            } else {
                ", stopped"
            }
        )
    }
}

impl Group {
    /// The wait for a view whose version is not `version`, bounded by
    /// `timeout` ms: the view then.
    fn changed(
        &self,
        version: Option<u64>,
        timeout: Option<f64>,
    ) -> PyResult<impl std::future::Future<Output = courier_group::View> + Send + 'static> {
        let timeout = timeout_from_ms(timeout)?;
        let mut watch = self.inner.watch();
        let from = version.unwrap_or_else(|| watch.borrow().version);
        Ok(async move {
            let changed = async {
                // Err: the membership stopped; its last view stands.
                let _ = watch.wait_for(|v| v.version != from).await;
            };
            match timeout {
                Some(after) => {
                    let _ = tokio::time::timeout(after, changed).await;
                }
                None => changed.await,
            }
            let view = watch.borrow().clone();
            view
        })
    }
}

/// A group function's settings, as Python passes them.
struct Settings {
    provider_id: u16,
    timeout: Option<f64>,
    idempotent: bool,
    max_attempts: Option<u32>,
    hedge_after: Option<f64>,
    hedge_percentile: Option<f64>,
    /// A budget of the function's own, instead of its group's.
    retry_budget: Option<RetryBudget>,
    retry_backoff: Option<Backoff>,
}

/// `retry_budget=`: a dict of `ratio`, `min_per_second`, `max_tokens`
/// (each optional, the others keep their defaults), or 0 / False for no
/// retries nor hedges at all.
fn budget_of(value: &Bound<'_, PyAny>) -> PyResult<RetryBudget> {
    if let Ok(dict) = value.cast::<PyDict>() {
        let mut budget = RetryBudget::default();
        for (key, v) in dict.iter() {
            let key: String = key.extract()?;
            let n: f64 = v.extract().map_err(|_| {
                PyValueError::new_err(format!("retry_budget['{key}']: a number, not {v}"))
            })?;
            if !(n.is_finite() && n >= 0.0) {
                return Err(PyValueError::new_err(format!(
                    "retry_budget['{key}']={n}: a number of at least 0"
                )));
            }
            budget = match key.as_str() {
                "ratio" => budget.ratio(n),
                "min_per_second" => budget.min_per_second(n),
                "max_tokens" => budget.max_tokens(n),
                other => {
                    return Err(PyValueError::new_err(format!(
                        "retry_budget: unknown key '{other}' (ratio, min_per_second, max_tokens)"
                    )))
                }
            };
        }
        return Ok(budget);
    }
    match value.extract::<f64>() {
        Ok(0.0) => Ok(RetryBudget::none()),
        _ => Err(PyValueError::new_err(format!(
            "retry_budget={value}: a dict of ratio, min_per_second, max_tokens, or 0 for none"
        ))),
    }
}

/// `retry_backoff=(base_ms, cap_ms)`: how long a retry waits when every
/// member has been tried, doubling from `base_ms` to at most `cap_ms`.
fn backoff_of((base, cap): (f64, f64)) -> PyResult<Backoff> {
    let ms = |what: &str, v: f64| match timeout_from_ms(Some(v)) {
        Ok(Some(d)) => Ok(d),
        _ => Err(PyValueError::new_err(format!(
            "retry_backoff: {what} {v}: milliseconds, more than 0"
        ))),
    };
    let (base, cap) = (ms("base", base)?, ms("cap", cap)?);
    if cap < base {
        return Err(PyValueError::new_err(format!(
            "retry_backoff: the cap ({} ms) is below the base ({} ms)",
            cap.as_millis(),
            base.as_millis()
        )));
    }
    Ok(Backoff::new(base, cap))
}

/// A remote function bound to a group and a provider id: each call goes
/// to one live member, chosen by the power of two choices; an idempotent
/// one is retried elsewhere when that is safe, and hedged if asked, all
/// within its timeout (docs/groups.md, "Calling a group"). Called as a
/// `CallableRemoteFunction` is: arguments and response pickled,
/// `timeout=` (milliseconds) and `blocking=` keywords, `call_async`.
#[pyclass(module = "courier._native", name = "GroupFunction", frozen)]
pub(crate) struct GroupFunction {
    raw: RawGroupFunction,
    shared: Arc<Shared>,
    engine: Py<PyAny>,
    /// The `Group`, or the tuple of addresses, it calls.
    members: Py<PyAny>,
    /// What errors name as the callee ("group 'kv'", "3 members").
    callee: String,
    provider_id: u16,
    idempotent: bool,
}

impl GroupFunction {
    fn make(
        raw: RawGroupFunction,
        settings: Settings,
        shared: Arc<Shared>,
        engine: Py<PyAny>,
        members: Py<PyAny>,
        callee: String,
    ) -> PyResult<Self> {
        let mut raw = raw.provider(settings.provider_id);
        if let Some(after) = timeout_from_ms(settings.timeout)? {
            raw = raw.timeout(after);
        }
        if settings.idempotent {
            raw = raw.idempotent();
        }
        if let Some(n) = settings.max_attempts {
            raw = raw.max_attempts(n);
        }
        match (settings.hedge_after, settings.hedge_percentile) {
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "hedge_after and hedge_percentile: give one of them",
                ))
            }
            (Some(ms), None) => match timeout_from_ms(Some(ms))? {
                Some(after) => raw = raw.hedge_after(after),
                None => {
                    return Err(PyValueError::new_err(format!(
                        "hedge_after={ms}: a delay in milliseconds, more than 0"
                    )))
                }
            },
            (None, Some(p)) if p > 0.0 && p < 100.0 => raw = raw.hedge_after(Hedge::Percentile(p)),
            (None, Some(p)) => {
                return Err(PyValueError::new_err(format!(
                    "hedge_percentile={p}: a percentile between 0 and 100 (exclusive)"
                )))
            }
            (None, None) => {}
        }
        if let Some(budget) = settings.retry_budget {
            raw = raw.retry_budget(budget);
        }
        if let Some(backoff) = settings.retry_backoff {
            raw = raw.retry_backoff(backoff);
        }
        Ok(Self {
            raw,
            shared,
            engine,
            members,
            callee,
            provider_id: settings.provider_id,
            idempotent: settings.idempotent,
        })
    }

    /// The call of `args` and `kwargs` as a future to run on the engine's
    /// runtime; `serving` is the request it is part of, if any.
    fn prepare(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'_, PyDict>>,
        serving: Option<courier::CancelToken>,
    ) -> PyResult<impl std::future::Future<Output = courier::Result<Option<Bytes>>> + Send + 'static>
    {
        let payload = pickle::dump_arguments(py, self.raw.name(), args, kwargs)?;
        let mut raw = self.raw.clone();
        if let Some(after) = timeout_from_ms(timeout)? {
            raw = raw.timeout(after);
        }
        Ok(async move {
            let out = match &serving {
                Some(token) => token.in_scope(raw.call(&payload)).await,
                None => raw.call(&payload).await,
            };
            out.map(Some)
        })
    }
}

#[pymethods]
impl GroupFunction {
    /// `GroupFunction(engine, members, name, provider_id=0, *,
    /// timeout=None, idempotent=False, max_attempts=None,
    /// hedge_after=None, hedge_percentile=None, retry_budget=None,
    /// retry_backoff=None)`: calls RPC `name` at
    /// `provider_id` of `members` (a `Group`: its live members, followed
    /// as its view changes; or a list of addresses) from `engine`.
    #[new]
    #[pyo3(signature = (engine, members, name, provider_id=0, *, timeout=None, idempotent=false, max_attempts=None, hedge_after=None, hedge_percentile=None, retry_budget=None, retry_backoff=None))]
    #[allow(clippy::too_many_arguments)] // the function's settings, as keywords
    fn py_new(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        members: &Bound<'_, PyAny>,
        name: &str,
        provider_id: u16,
        timeout: Option<f64>,
        idempotent: bool,
        max_attempts: Option<u32>,
        hedge_after: Option<f64>,
        hedge_percentile: Option<f64>,
        retry_budget: Option<&Bound<'_, PyAny>>,
        retry_backoff: Option<(f64, f64)>,
    ) -> PyResult<Self> {
        let (shared, engine) = engine_of(engine)?;
        let (list, callee, kept): (Arc<dyn courier_group::Members>, String, Py<PyAny>) =
            if let Ok(group) = members.cast::<Group>() {
                let g = group.get();
                (
                    Arc::new(g.inner.clone()),
                    format!("group '{}'", g.inner.name()),
                    members.clone().unbind(),
                )
            } else if members.cast::<PyString>().is_ok() {
                return Err(PyTypeError::new_err(
                    "members: a courier.Group or a list of addresses, not one address string",
                ));
            } else {
                let addresses: Vec<String> = members
                    .try_iter()?
                    .map(|a| address_text(&a?))
                    .collect::<PyResult<_>>()?;
                let callee = format!("{} members", addresses.len());
                let kept = PyTuple::new(py, &addresses)?.into_any().unbind();
                (
                    Arc::new(courier_group::StaticMembers::new(addresses)),
                    callee,
                    kept,
                )
            };
        let client = GroupClient::new(&shared.engine, list);
        let settings = Settings {
            provider_id,
            timeout,
            idempotent,
            max_attempts,
            hedge_after,
            hedge_percentile,
            retry_budget: retry_budget.map(budget_of).transpose()?,
            retry_backoff: retry_backoff.map(backoff_of).transpose()?,
        };
        Self::make(
            client.raw_function(name),
            settings,
            shared,
            engine,
            kept,
            callee,
        )
    }

    /// Calls the RPC on a member of the group with `args` and `kwargs` and
    /// returns the handler's response. With `blocking=False`, returns a
    /// `Request` at once. Raises as a `CallableRemoteFunction` does
    /// (`courier.TimeoutError`, `courier.RemoteError`, ...), with the
    /// error of the last request sent; `CourierError` when the group has
    /// no live member.
    #[pyo3(signature = (*args, timeout=None, blocking=true, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        blocking: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let serving = crate::shared::serving();
        let call = self.prepare(py, args, timeout, kwargs, serving)?;
        if blocking {
            let out = self.shared.wait(py, "group call", call)?;
            outcome(py, out)
        } else {
            let join = self.shared.spawn(call);
            self.shared.tick(py, "group call")?;
            let cancel = CallCancel::new(
                self.raw.name().to_owned(),
                self.callee.clone(),
                join.abort_handle(),
            );
            Ok(Py::new(
                py,
                Request::with_cancel(join, self.shared.clone(), Some(cancel)),
            )?
            .into_any())
        }
    }

    /// The awaitable form of a call, for asyncio, as
    /// `CallableRemoteFunction.call_async`.
    #[pyo3(signature = (*args, timeout=None, **kwargs))]
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let serving = crate::aio::serving(py)?.or_else(crate::shared::serving);
        let call = self.prepare(py, args, timeout, kwargs, serving)?;
        crate::aio::awaitable(
            py,
            &self.shared,
            "call_async",
            call,
            crate::aio::OnCancel::Abort,
        )
    }

    /// The function's counters, as a dict: `calls`, `succeeded`,
    /// `failed`, `retries`, `hedges`, `hedge_wins`, `budget_exhausted`,
    /// `connect_failures` (docs/groups.md, "What to read").
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.raw.stats();
        let d = PyDict::new(py);
        d.set_item("calls", s.calls)?;
        d.set_item("succeeded", s.succeeded)?;
        d.set_item("failed", s.failed)?;
        d.set_item("retries", s.retries)?;
        d.set_item("hedges", s.hedges)?;
        d.set_item("hedge_wins", s.hedge_wins)?;
        d.set_item("budget_exhausted", s.budget_exhausted)?;
        d.set_item("connect_failures", s.connect_failures)?;
        Ok(d)
    }

    /// What the caller knows of each member it has met, as a list of
    /// dicts: `address`, `in_flight`, `connects`, `failures`,
    /// `backed_off_for` (seconds, None when not backed off).
    fn member_status<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.raw
            .group()
            .members()
            .into_iter()
            .map(|m| {
                let d = PyDict::new(py);
                d.set_item("address", m.address)?;
                d.set_item("in_flight", m.in_flight)?;
                d.set_item("connects", m.connects)?;
                d.set_item("failures", m.failures)?;
                d.set_item("backed_off_for", m.backed_off_for.map(|b| b.as_secs_f64()))?;
                Ok(d)
            })
            .collect()
    }

    /// The RPC's name.
    #[getter]
    fn name(&self) -> &str {
        self.raw.name()
    }

    /// The provider id it calls.
    #[getter]
    fn provider_id(&self) -> u16 {
        self.provider_id
    }

    /// Whether it is declared idempotent (retried, and hedged if asked).
    #[getter]
    fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// The `Group`, or the tuple of addresses, it calls.
    #[getter]
    fn members(&self, py: Python<'_>) -> Py<PyAny> {
        self.members.clone_ref(py)
    }

    /// The engine it calls from.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.engine.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "GroupFunction('{}' on {}, provider_id={}{})",
            self.raw.name(),
            self.callee,
            self.provider_id,
            if self.idempotent { ", idempotent" } else { "" }
        )
    }
}
