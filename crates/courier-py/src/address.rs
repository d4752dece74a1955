//! `Address`: a peer engine, from `Engine.lookup` or `Handle.address`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;

use crate::errors;
use crate::shared::Shared;

/// The address of an engine: prints as the string `lookup` takes, compares
/// and hashes by it. Calls through it share one connection.
#[pyclass(module = "courier._native", name = "Address", frozen)]
pub(crate) struct Address {
    pub(crate) inner: courier::Address,
    pub(crate) shared: Arc<Shared>,
}

impl Address {
    pub(crate) fn new(inner: courier::Address, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The address as `str()` gives it: the engine's own spelling of its
    /// protocol when it was made with a Mercury alias (`na+sm://…` for an
    /// `na+sm` engine, where the engine itself says `shm://…`), as PyMargo
    /// prints what it was given. `lookup` takes either spelling.
    pub(crate) fn text(&self) -> String {
        let canonical = self.inner.to_string();
        spelled(
            &canonical,
            self.shared.engine.protocol(),
            self.shared.spelling.get(),
        )
    }
}

/// `address` (canonical, `<protocol>://rest`) with its scheme replaced by
/// `spelling`, when there is one and the address is of `protocol`.
pub(crate) fn spelled(address: &str, protocol: &str, spelling: Option<&String>) -> String {
    let Some(spelling) = spelling else {
        return address.to_owned();
    };
    match address
        .strip_prefix(protocol)
        .and_then(|rest| rest.strip_prefix("://"))
    {
        Some(rest) => format!("{spelling}://{rest}"),
        None => address.to_owned(),
    }
}

/// The spelling an engine made for `target` (a protocol name or a listen
/// address) keeps for its addresses: the scheme as given, when it is an
/// alias rather than `protocol`, the canonical name.
pub(crate) fn spelling_of(target: &str, protocol: &str) -> Option<String> {
    let scheme = target.split("://").next().unwrap_or(target).trim();
    (!scheme.is_empty() && scheme != protocol).then(|| scheme.to_owned())
}

#[pymethods]
impl Address {
    fn __str__(&self) -> String {
        self.text()
    }

    fn __repr__(&self) -> String {
        format!("Address('{}')", self.text())
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Self>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __hash__(&self) -> u64 {
        let mut h = DefaultHasher::new();
        // The canonical form: equal addresses hash alike, whatever their
        // engines' spellings.
        self.inner.to_string().hash(&mut h);
        // Python reserves -1; keep the value in i64's positive range.
        h.finish() >> 1
    }

    /// Another reference to this address (PyMargo's `copy`).
    fn copy(slf: &Bound<'_, Self>) -> Py<Self> {
        slf.clone().unbind()
    }

    /// Asks that engine to finalize; it must have called
    /// `enable_remote_shutdown()` (else `CourierError`).
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let addr = self.inner.clone();
        self.shared
            .wait(py, "Address.shutdown", async move { addr.shutdown().await })?
            .map_err(|e| errors::to_py(py, &e))
    }

    /// The statistics of the engine at this address, as a dict (the JSON
    /// schema of docs/observability.md), read through its built-in
    /// statistics RPC: it must serve them (`Engine(..., serve_stats=True)`,
    /// `"stats": {"serve": true}`, `courier serve --stats`), else
    /// `RemoteError`. `BusyError` while it answers another such request;
    /// `TimeoutError` past `timeout` (milliseconds; None or 0: the
    /// engine's call timeout, if any); `CourierError` for the rest.
    #[pyo3(signature = (timeout=None))]
    fn stats<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let after = crate::remote::timeout_from_ms(timeout)?;
        let addr = self.inner.clone();
        let stats = self
            .shared
            .wait(py, "Address.stats", async move {
                let Some(after) = after else {
                    return addr.stats().await;
                };
                match tokio::time::timeout(after, addr.stats()).await {
                    Ok(read) => read,
                    Err(_) => Err(courier::Error::Timeout {
                        rpc: courier::stats::STATS_RPC.to_owned(),
                        address: addr.to_string(),
                        after,
                    }),
                }
            })?
            .map_err(|e| errors::to_py(py, &e))?;
        py.import("json")?
            .getattr("loads")?
            .call1((stats.to_json(),))
    }

    /// `ping` as an asyncio awaitable: `await address.ping_async()`.
    #[pyo3(signature = (timeout=None))]
    fn ping_async<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        crate::aio::ping(py, &self.shared, self.inner.clone(), timeout)
    }

    /// One engine-level round trip (no handler runs); returns seconds.
    #[pyo3(signature = (timeout=None))]
    fn ping(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<f64> {
        let after = crate::remote::timeout_from_ms(timeout)?;
        let addr = self.inner.clone();
        self.shared
            .wait(py, "Address.ping", async move { addr.ping(after).await })?
            .map(|d| d.as_secs_f64())
            .map_err(|e| errors::to_py(py, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::{spelled, spelling_of};

    #[test]
    fn an_alias_is_kept_and_the_canonical_name_is_not() {
        assert_eq!(spelling_of("na+sm", "shm").as_deref(), Some("na+sm"));
        assert_eq!(
            spelling_of("ofi+tcp://127.0.0.1:0", "tcp").as_deref(),
            Some("ofi+tcp")
        );
        assert_eq!(spelling_of("tcp", "tcp"), None);
        assert_eq!(spelling_of("shm://", "shm"), None);
    }

    #[test]
    fn only_the_engines_own_scheme_is_respelled() {
        let na = Some("na+sm".to_owned());
        assert_eq!(spelled("shm://12-0", "shm", na.as_ref()), "na+sm://12-0");
        assert_eq!(spelled("shm://12-0", "shm", None), "shm://12-0");
        // Another protocol's address, or a prefix that is not the scheme.
        assert_eq!(
            spelled("tcp://1.2.3.4:5", "shm", na.as_ref()),
            "tcp://1.2.3.4:5"
        );
        assert_eq!(spelled("shmx://a", "shm", na.as_ref()), "shmx://a");
    }
}
