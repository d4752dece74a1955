//! A peer's connection state: its address and current connection, opened
//! again on demand after it died.
//!
//! Opening a connection starts its reader, which dispatches to handlers, so
//! it is done above this module: by whatever implements [`Dial`] (the
//! engine's `links.rs`).

use std::sync::{Arc, Mutex};

use courier_transport::BoxFuture;

use crate::conn::Conn;
use crate::error::Result;
use crate::paths::AddressSet;
use crate::sync::lock;

/// Opens connections to peers.
pub(crate) trait Dial: Send + Sync {
    /// Connects to `addr` by the first of its paths that connects,
    /// introduces this engine, starts the reader.
    fn dial<'a>(&'a self, addr: &'a AddressSet) -> BoxFuture<'a, Result<Arc<Conn>>>;
}

/// A peer, by address, and its connection.
pub(crate) struct Peer {
    pub(crate) addr: AddressSet,
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Peer {
    pub(crate) fn new(addr: AddressSet, conn: Option<Arc<Conn>>) -> Self {
        Self {
            addr,
            conn: Mutex::new(conn),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn live(&self) -> Option<Arc<Conn>> {
        lock(&self.conn).as_ref().filter(|c| !c.is_dead()).cloned()
    }

    /// The live connection to this peer, opened with `dial` if there is
    /// none (one dial at a time; callers look at [`Peer::live`] first).
    pub(crate) async fn connection(&self, dial: &dyn Dial) -> Result<Arc<Conn>> {
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let c = dial.dial(&self.addr).await?;
        *lock(&self.conn) = Some(c.clone());
        Ok(c)
    }
}
