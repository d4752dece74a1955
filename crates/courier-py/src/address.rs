//! `Address`: a peer engine, from `Engine.lookup` or `Handle.address`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use courier::transport::Address as WireAddr;

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

    /// The address as `str()` gives it: the address set (one part for a
    /// peer of one protocol), each part in the engine's own spelling of its
    /// protocol when it was made with a Mercury alias (`na+sm://…` for an
    /// `na+sm` engine, where the engine itself says `shm://…`), as PyMargo
    /// prints what it was given. `lookup` takes either spelling.
    pub(crate) fn text(&self) -> String {
        self.parts().join(",")
    }

    /// The parts of the address set, each as `text` spells it.
    fn parts(&self) -> Vec<String> {
        let spellings = self.spellings();
        self.inner
            .set()
            .parts()
            .iter()
            .map(|p| spelled(p, spellings))
            .collect()
    }

    fn spellings(&self) -> &[Spelling] {
        self.shared.spellings.get().map_or(&[], Vec::as_slice)
    }
}

/// A Mercury spelling an engine was made with: (canonical protocol name,
/// the alias it was given as), `("shm", "na+sm")`.
pub(crate) type Spelling = (String, String);

/// `address` (one transport address, `<protocol>://rest`) with its scheme
/// replaced by the spelling of its protocol, when `spellings` has one.
pub(crate) fn spelled(address: &WireAddr, spellings: &[Spelling]) -> String {
    match spellings
        .iter()
        .find(|(canonical, _)| canonical == address.protocol())
    {
        Some((_, spelling)) => format!("{spelling}://{}", address.rest()),
        None => address.to_string(),
    }
}

/// The spellings an engine made for `target` keeps for its addresses:
/// `target` is a protocol name, a listen address, or a comma-separated
/// list of them (`"ofi+tcp,na+sm"`), and `protocols` the engine's
/// canonical names in the same order (`Engine::protocol`, `"tcp,shm"`).
/// A part's scheme is kept when it is an alias rather than the canonical
/// name.
pub(crate) fn spellings_of(target: &str, protocols: &str) -> Vec<Spelling> {
    target
        .split(',')
        .zip(protocols.split(','))
        .filter_map(|(part, protocol)| {
            let scheme = part.split("://").next().unwrap_or(part).trim();
            (!scheme.is_empty() && scheme != protocol)
                .then(|| (protocol.to_owned(), scheme.to_owned()))
        })
        .collect()
}

#[pymethods]
impl Address {
    fn __str__(&self) -> String {
        self.text()
    }

    fn __repr__(&self) -> String {
        format!("Address('{}')", self.text())
    }

    /// The path the connection to this engine takes now: the part of its
    /// address set it was opened to (`shm://…` for a peer on the same host
    /// listening on `tcp,shm`), or, for a caller's address
    /// (`handle.address`), the transport's view of the connection it came
    /// by. None when there is no live connection: the next call opens one
    /// again, choosing the path anew.
    #[getter]
    fn path(&self) -> Option<String> {
        self.inner.path().map(|p| spelled(&p, self.spellings()))
    }

    /// The parts of the address set, in its order (one for an engine of
    /// one protocol): `str(address)` joins them with commas.
    #[getter(parts)]
    fn py_parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.parts())
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
    use super::{spelled, spellings_of, Spelling, WireAddr};

    fn spelling(canonical: &str, alias: &str) -> Spelling {
        (canonical.to_owned(), alias.to_owned())
    }

    fn wire(s: &str) -> WireAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_alias_is_kept_and_the_canonical_name_is_not() {
        assert_eq!(spellings_of("na+sm", "shm"), vec![spelling("shm", "na+sm")]);
        assert_eq!(
            spellings_of("ofi+tcp://127.0.0.1:0", "tcp"),
            vec![spelling("tcp", "ofi+tcp")]
        );
        assert!(spellings_of("tcp", "tcp").is_empty());
        assert!(spellings_of("shm://", "shm").is_empty());
    }

    #[test]
    fn each_part_of_a_set_keeps_its_own_spelling() {
        assert_eq!(
            spellings_of("ofi+tcp://127.0.0.1:0, shm", "tcp,shm"),
            vec![spelling("tcp", "ofi+tcp")]
        );
        assert_eq!(
            spellings_of("tcp,na+sm", "tcp,shm"),
            vec![spelling("shm", "na+sm")]
        );
        // auto_sm adds a protocol the target does not name: no spelling.
        assert_eq!(
            spellings_of("ofi+tcp", "tcp,shm"),
            vec![spelling("tcp", "ofi+tcp")]
        );
    }

    #[test]
    fn only_the_engines_own_scheme_is_respelled() {
        let na = [spelling("shm", "na+sm")];
        assert_eq!(spelled(&wire("shm://12-0"), &na), "na+sm://12-0");
        assert_eq!(spelled(&wire("shm://12-0"), &[]), "shm://12-0");
        // Another protocol's address.
        assert_eq!(spelled(&wire("tcp://1.2.3.4:5"), &na), "tcp://1.2.3.4:5");
    }
}
