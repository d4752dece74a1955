//! Addresses of peers, as `Engine::lookup` returns them.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_transport::Address as WireAddr;

use crate::conn::Conn;
use crate::engine::Inner;
use crate::frame::{Header, Kind, Status};
use crate::{Error, Result};

/// A peer's connection state: the current connection, re-established on
/// demand after it died.
pub(crate) struct Peer {
    pub(crate) addr: WireAddr,
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Peer {
    pub(crate) fn new(addr: WireAddr, conn: Option<Arc<Conn>>) -> Self {
        Self {
            addr,
            conn: Mutex::new(conn),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    fn live(&self) -> Option<Arc<Conn>> {
        let slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().filter(|c| !c.is_dead()).cloned()
    }

    /// The live connection to this peer, connecting if there is none.
    pub(crate) async fn connection(&self, inner: &Arc<Inner>) -> Result<Arc<Conn>> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let c = inner.connect(&self.addr).await?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        Ok(c)
    }
}

/// The address of a peer engine, obtained from [`Engine::lookup`](crate::Engine::lookup)
/// or from [`Handle::address`](crate::Handle::address).
///
/// It prints as the string that `lookup` takes (`tcp://127.0.0.1:41235`),
/// compares and hashes by that string, and is cheap to clone. Calls made
/// through it share one connection, opened again if it dies.
#[derive(Clone)]
pub struct Address {
    pub(crate) inner: Arc<Inner>,
    pub(crate) peer: Arc<Peer>,
}

impl Address {
    /// The transport-level address.
    pub fn wire(&self) -> &WireAddr {
        &self.peer.addr
    }

    /// Asks the peer engine to finalize (PyMargo's `address.shutdown()`).
    ///
    /// # Errors
    /// [`Error::ShutdownRefused`] when the peer did not enable remote
    /// shutdown; connection errors.
    pub async fn shutdown(&self) -> Result<()> {
        let (header, payload) = self.exchange(Header::new(Kind::Shutdown), None).await?;
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
    /// Connection errors, or [`Error::Timeout`] after `timeout`.
    pub async fn ping(&self, timeout: Option<Duration>) -> Result<Duration> {
        let start = Instant::now();
        self.exchange(Header::new(Kind::Ping), timeout).await?;
        Ok(start.elapsed())
    }

    /// Sends a control frame and waits for the frame that answers it.
    async fn exchange(
        &self,
        mut header: Header,
        timeout: Option<Duration>,
    ) -> Result<(Header, bytes::Bytes)> {
        let name = match header.kind {
            Kind::Shutdown => "<shutdown>",
            _ => "<ping>",
        };
        let work = async {
            let conn = self.inner.connection_for(&self.peer).await?;
            let (seq, rx) = conn.register_call()?;
            let _forget = crate::remote::ForgetOnDrop { conn: &conn, seq };
            header.seq = seq;
            conn.send(&[&header.encode()]).await?;
            rx.await.map_err(|_| conn.lost())
        };
        match timeout {
            None => work.await,
            Some(after) => tokio::time::timeout(after, work)
                .await
                .map_err(|_| Error::Timeout {
                    rpc: name.to_owned(),
                    address: self.to_string(),
                    after,
                })?,
        }
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
