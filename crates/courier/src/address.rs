//! Addresses of peers, as `Engine::lookup` returns them.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_transport::Address as WireAddr;

use crate::call::{self, Body};
use crate::error::{Error, Result};
use crate::frame::{Extensions, Header, Kind, Status};
use crate::paths::AddressSet;
use crate::peer::Peer;
use crate::state::EngineState;
use crate::timeouts;

/// The address of a peer engine, obtained from [`Engine::lookup`](crate::Engine::lookup)
/// or from [`Handle::address`](crate::Handle::address).
///
/// It prints as the string that `lookup` takes (`tcp://127.0.0.1:41235`,
/// or an address set, `tcp://127.0.0.1:41235,shm://courier-…`, for an
/// engine listening on several protocols), compares and hashes by that
/// string, and is cheap to clone. Calls made through it share one
/// connection, opened again if it dies; of a set, the connection takes
/// one path ([`Address::path`]), chosen anew each time it is opened
/// (`docs/transports.md`, "Address sets").
#[derive(Clone)]
pub struct Address {
    pub(crate) state: Arc<EngineState>,
    pub(crate) peer: Arc<Peer>,
}

impl Address {
    pub(crate) fn new(state: Arc<EngineState>, peer: Arc<Peer>) -> Self {
        Self { state, peer }
    }

    /// The transport-level address: of a set, its first part.
    pub fn wire(&self) -> &WireAddr {
        self.peer.addr.first()
    }

    /// The address set (one part for a peer that listens on one protocol).
    pub fn set(&self) -> &AddressSet {
        &self.peer.addr
    }

    /// The path the connection to the peer takes now: the part of the set
    /// it was opened to (`shm://courier-…`), or, for the address of a
    /// caller ([`Handle::address`](crate::Handle::address)) connected by
    /// another way, the transport's view of it. `None` when there is no
    /// live connection (it is opened again, maybe by another path, on the
    /// next call).
    pub fn path(&self) -> Option<WireAddr> {
        self.peer.live().map(|c| c.path().clone())
    }

    /// Asks the peer engine to finalize (PyMargo's `address.shutdown()`),
    /// waiting for its answer at most the engine's `timeouts.call_ms`.
    ///
    /// # Errors
    /// [`Error::ShutdownRefused`] when the peer did not enable remote
    /// shutdown; [`Error::Timeout`]; connection errors.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutdown_within(None).await
    }

    /// [`Address::shutdown`], waiting for the answer at most `timeout`
    /// (`None`: the engine's `timeouts.call_ms`).
    ///
    /// # Errors
    /// See [`Address::shutdown`].
    pub async fn shutdown_within(&self, timeout: Option<Duration>) -> Result<()> {
        let (header, payload) = self.control(Kind::Shutdown, "<shutdown>", timeout).await?;
        match (header.kind, header.status) {
            (Kind::Response, _) => Ok(()),
            (Kind::Error, Status::ShutdownRefused) => Err(Error::ShutdownRefused {
                address: self.to_string(),
            }),
            (Kind::Error, Status::Finalizing) => Ok(()),
            _ => Err(Error::Protocol {
                address: self.to_string(),
                reason: format!(
                    "unexpected {:?} frame answering a shutdown: {}",
                    header.kind,
                    String::from_utf8_lossy(&payload)
                ),
            }),
        }
    }

    /// Measures one round trip at the engine level (no handler runs).
    ///
    /// # Errors
    /// Connection errors, or [`Error::Timeout`] after `timeout` (`None`:
    /// the engine's `timeouts.call_ms`).
    pub async fn ping(&self, timeout: Option<Duration>) -> Result<Duration> {
        let start = Instant::now();
        self.control(Kind::Ping, "<ping>", timeout).await?;
        Ok(start.elapsed())
    }

    /// Sends a control frame and waits for the frame that answers it.
    async fn control(
        &self,
        kind: Kind,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<(Header, bytes::Bytes)> {
        let deadline = timeouts::control(&self.state.config.timeouts, timeout);
        let answer = call::exchange(
            &self.state,
            &self.peer,
            Header::new(kind),
            Body::EMPTY,
            deadline,
            timeouts::expired_call(name, &self.peer.addr),
            &Extensions::default(),
        )
        .await?;
        // A control frame always expects an answer (it has no one-way flag).
        answer.ok_or_else(|| Error::Protocol {
            address: self.to_string(),
            reason: format!("no answer to a {kind:?} frame"),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.peer.addr, f)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Address")
            .field(&self.peer.addr.to_string())
            .finish()
    }
}

impl PartialEq for Address {
    fn eq(&self, other: &Self) -> bool {
        self.peer.addr == other.peer.addr
    }
}

impl Eq for Address {}

impl Hash for Address {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.peer.addr.hash(state);
    }
}
