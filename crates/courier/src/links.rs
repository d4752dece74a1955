//! Opening and accepting connections: dial a peer (within
//! `timeouts.connect_ms`) and introduce this engine with a Hello; accept
//! peers up to `max_connections`; and for each connection, start its
//! reader (`reader.rs`), which dispatches what arrives.

use std::sync::{Arc, Weak};

use courier_transport::{Address as WireAddr, BoxFuture, DynConnection, DynListener};
use tokio::sync::{oneshot, watch};

use crate::conn::Conn;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::frame::{Header, Kind};
use crate::limits::{ConnLimits, ConnectionSlot};
use crate::paths::{AddressSet, Route};
use crate::peer::Dial;
use crate::reader::read_loop;
use crate::state::EngineState;
use crate::timeouts;

/// An engine's way to connections: it dials, accepts, and starts readers.
pub(crate) struct Links {
    dispatch: Arc<Dispatcher>,
}

impl Links {
    pub(crate) fn new(dispatch: Arc<Dispatcher>) -> Self {
        Self { dispatch }
    }

    fn state(&self) -> &Arc<EngineState> {
        &self.dispatch.state
    }

    /// Opens a connection to `set` by the first of its paths that
    /// connects (`paths.rs` orders them), introduces this engine, and
    /// starts its reader. Each path has `timeouts.connect_ms`.
    ///
    /// # Errors
    /// [`Error::Finalized`]; with one path to try, its error
    /// ([`Error::ConnectTimeout`], the transport's connect errors); with
    /// several, [`Error::NoPath`] saying how each failed.
    pub(crate) async fn connect(&self, set: &AddressSet) -> Result<Arc<Conn>> {
        let state = self.state();
        if state.is_finalizing() {
            return Err(Error::Finalized);
        }
        let order = state.paths.order(set);
        if order.is_empty() {
            // A set announced by a peer may have no part this engine speaks.
            state.canonical(set)?;
            return Err(Error::NoPath {
                address: set.to_string(),
                tried: "no part is of a protocol this engine speaks".into(),
            });
        }
        let several = order.len() > 1;
        let mut tried = Vec::new();
        for (path, route) in order {
            match self.connect_path(set, path, route).await {
                Ok(conn) => {
                    if several {
                        tracing::debug!(peer = %set, %path, "path chosen");
                    }
                    return Ok(conn);
                }
                Err(Error::Finalized) => return Err(Error::Finalized),
                Err(e) if !several => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = %set, %path, "path failed, trying the next: {e}");
                    tried.push(format!("{path}: {e}"));
                }
            }
        }
        Err(Error::NoPath {
            address: set.to_string(),
            tried: tried.join("; "),
        })
    }

    /// Opens a connection to `set` by `path`, one of its parts, and sends
    /// the Hello.
    async fn connect_path(
        &self,
        set: &AddressSet,
        path: &WireAddr,
        route: &Route,
    ) -> Result<Arc<Conn>> {
        let state = self.state();
        let transport = route.transport.clone();
        let target = path.clone();
        // The socket is created on the engine's runtime, so that its I/O is
        // driven there (the progress thread, when there is one).
        let dial = state
            .rt
            .spawn(async move { transport.connect_dyn(&target).await });
        let raw = timeouts::connect(&state.config.timeouts)
            .bound(
                async {
                    match dial.await {
                        Ok(r) => Ok(r?),
                        Err(join) => Err(Error::Config(format!("connect task failed: {join}"))),
                    }
                },
                timeouts::expired_connect(path),
            )
            .await?;
        let conn = self.start(raw, Some(path.clone()), false, None);
        conn.announce(set.clone());
        let hello_addr = state
            .self_addr
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        if let Err(e) = conn
            .send(&[&Header::new(Kind::Hello).encode(), hello_addr.as_bytes()])
            .await
        {
            conn.kill("the Hello could not be sent");
            return Err(e);
        }
        Ok(conn)
    }

    /// Registers a new connection and spawns its reader.
    fn start(
        &self,
        raw: Box<dyn DynConnection>,
        dialed: Option<WireAddr>,
        expect_hello: bool,
        slot: Option<ConnectionSlot>,
    ) -> Arc<Conn> {
        let state = self.state();
        let peer = dialed.unwrap_or_else(|| raw.peer_addr().clone());
        let capabilities = raw.capabilities_dyn();
        let (tx, rx) = raw.split_dyn();
        let limits = ConnLimits::new(&state.config);
        let conn = Conn::new(
            state.next_conn_id(),
            peer,
            tx,
            state.progress.clone(),
            limits,
            state.rt.clone(),
            state.stats.counting,
        );
        let _ = conn.capabilities.set(capabilities);
        state.add_conn(conn.clone());
        let task = state.rt.spawn(read_loop(
            self.dispatch.clone(),
            conn.clone(),
            rx,
            expect_hello,
            slot,
        ));
        conn.set_reader(task.abort_handle());
        conn
    }
}

impl Dial for Links {
    fn dial<'a>(&'a self, addr: &'a AddressSet) -> BoxFuture<'a, Result<Arc<Conn>>> {
        Box::pin(self.connect(addr))
    }
}

/// Starts accepting connections on `listener` (server mode; once per
/// protocol the engine listens on).
pub(crate) fn listen(links: &Arc<Links>, listener: Box<dyn DynListener>) {
    let state = links.state();
    let (done_tx, done_rx) = oneshot::channel();
    let stop = state.listener_stop();
    let task = state
        .rt
        .spawn(accept_loop(Arc::downgrade(links), listener, stop, done_tx));
    state.add_listener(task.abort_handle(), done_rx);
}

/// Accepts connections until told to stop. It holds only a weak reference
/// while idle, so a dropped engine is not kept alive by its own listener.
async fn accept_loop(
    links: Weak<Links>,
    mut listener: Box<dyn DynListener>,
    mut stop: watch::Receiver<bool>,
    done: oneshot::Sender<()>,
) {
    loop {
        tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept_dyn() => {
                let Some(links) = links.upgrade() else { break };
                let state = links.state();
                match accepted {
                    Ok(raw) => match state.conn_slots.admit() {
                        Some(slot) => {
                            tracing::debug!(peer = %raw.peer_addr(), "accepted a connection");
                            links.start(raw, None, true, Some(slot));
                        }
                        None => {
                            tracing::warn!(
                                peer = %raw.peer_addr(),
                                "closing an accepted connection: max_connections ({}) reached",
                                state.conn_slots.max()
                            );
                            drop(raw);
                        }
                    },
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        // Typically out of file descriptors: let some close
                        // before trying again.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = done.send(());
}
