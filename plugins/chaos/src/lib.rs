//! The `chaos` layer for Courier: a transport over another transport that
//! injects faults, replayably from a seed.
//!
//! `chaos+tcp` is the `tcp` transport seen through this layer (it stacks
//! over any protocol: `chaos+unix`, `chaos+mem`, ...). With no options it
//! changes nothing; its options (the `"chaos"` object of the engine's
//! `"transport"` config, or a `[layers.<name>]` preset in `protocols.toml`)
//! add latency and jitter, drop, duplicate and reorder messages, and reset
//! connections. See [`ChaosOptions`] and the section "The chaos layer" of
//! `docs/transports.md`.
//!
//! # Where faults happen
//!
//! A message's delivery faults (delay, drop, duplicate, reorder) are decided
//! and applied by the chaos transport that **receives** it: the receiving
//! side is the one always waiting in `recv`, so a delayed or held-back
//! message is handed on when its time comes, without a background task, and
//! latency is pipelined (ten messages sent at once all arrive one latency
//! later). Resets are decided by the side that **sends**: that send fails
//! and the peer sees the connection end. Both peers normally use the layer
//! (both engines are built for `chaos+tcp`); `direction` picks the messages
//! of one side only.
//!
//! # Replaying a run
//!
//! Every decision draws from a pseudo-random stream derived from `seed`,
//! the connection — the n-th connection the transport opened with
//! `connect`, or the n-th one its m-th listener accepted — and the
//! direction. The same seed therefore injects the same faults in the same
//! messages of the same connection, however tasks interleave across
//! connections. Each injected fault is logged at debug level (target
//! `courier_chaos`) with the seed, the connection and the message number,
//! and a transport built with faults logs its options, seed included, at
//! info level (`seed = "random"` draws a fresh seed: that line says which).
//!
//! ```
//! use std::sync::Arc;
//! use courier_chaos::ChaosLayer;
//! use courier_mem::MemPlugin;
//! use courier_transport::{PluginOptions, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let registry = Registry::new().with(MemPlugin).with_layer(ChaosLayer);
//! // Every message after the first of each direction is dropped.
//! let options: PluginOptions =
//!     serde_json::from_str(r#"{"chaos": {"drop": 1.0, "grace": 1}}"#).unwrap();
//! let (_, chaos) = registry.create("chaos+mem", &options, 1 << 20)?;
//! assert_eq!(chaos.protocol(), "chaos+mem");
//!
//! let mut listener = chaos.listen_dyn(&"chaos+mem://".parse()?).await?;
//! let addr = listener.local_addr().clone();
//! assert_eq!(addr.protocol(), "chaos+mem");
//! let (client, server) = tokio::join!(chaos.connect_dyn(&addr), listener.accept_dyn());
//! let (mut tx, _) = client?.split_dyn();
//! let (_, mut rx) = server?.split_dyn();
//! for m in [&b"hello"[..], b"lost", b"lost too"] {
//!     tx.send_dyn(&[m]).await?;
//! }
//! tx.close_dyn().await?;
//! assert_eq!(rx.recv_dyn().await?.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(rx.recv_dyn().await?, None);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod conn;
mod options;
mod rng;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use courier_transport::{
    Address, DynListener, DynTransport, Layer, Listener, PluginContext, Transport, TransportError,
};

pub use conn::{ChaosConnection, ChaosReceiver, ChaosSender, ConnectionId};
pub use options::{ChaosOptions, Direction, Role, DEFAULT_REORDER_WINDOW, DEFAULT_SEED};

/// The layer's name, as written before `+` (`chaos+tcp`).
pub const PLUGIN_NAME: &str = "chaos";

/// The `chaos` layer: wraps a transport in a [`ChaosTransport`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ChaosLayer;

impl Layer for ChaosLayer {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn wrap(
        &self,
        ctx: &PluginContext<'_>,
        inner: Arc<dyn DynTransport>,
    ) -> Result<Arc<dyn DynTransport>, TransportError> {
        let options = ChaosOptions::from_context(ctx)?;
        if options.is_passthrough() {
            tracing::debug!(protocol = ctx.protocol, "chaos layer: no faults configured");
        } else {
            tracing::info!(
                protocol = ctx.protocol,
                "chaos layer injects faults: {{{options}}} (the same options replay them)"
            );
        }
        Ok(Arc::new(ChaosTransport::new(ctx.protocol, inner, options)?))
    }
}

/// A transport that forwards to another one, injecting the faults of its
/// [`ChaosOptions`].
///
/// It serves the stacked protocol name (`chaos+tcp`): its addresses carry
/// that name, and the inner transport gets the same addresses under its own
/// name (`tcp`).
#[derive(Debug)]
pub struct ChaosTransport {
    /// `<protocol>://`: the stacked protocol name.
    base: Address,
    inner: Arc<dyn DynTransport>,
    options: Arc<ChaosOptions>,
    /// Connections opened so far (the index of the next one).
    connects: AtomicU64,
    /// Listeners opened so far (the index of the next one).
    listens: AtomicU64,
}

impl ChaosTransport {
    /// Wraps `inner`, serving `protocol` (the stacked name, e.g.
    /// `chaos+tcp`).
    ///
    /// # Errors
    /// [`TransportError::InvalidAddress`] when `protocol` is not a valid
    /// protocol name.
    pub fn new(
        protocol: &str,
        inner: Arc<dyn DynTransport>,
        options: ChaosOptions,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            base: Address::new(protocol, "")?,
            inner,
            options: Arc::new(options),
            connects: AtomicU64::new(0),
            listens: AtomicU64::new(0),
        })
    }

    /// The faults it injects.
    pub fn options(&self) -> &ChaosOptions {
        &self.options
    }

    /// `addr` under the inner transport's protocol name.
    fn inner_addr(&self, addr: &Address) -> Address {
        addr.with_protocol(self.inner.protocol())
    }
}

impl Transport for ChaosTransport {
    type Listener = ChaosListener;
    type Connection = ChaosConnection;

    fn protocol(&self) -> &str {
        self.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max_message_size()
    }

    async fn listen(&self, addr: &Address) -> Result<ChaosListener, TransportError> {
        let inner = self.inner.listen_dyn(&self.inner_addr(addr)).await?;
        let local = inner.local_addr().with_protocol(self.base.protocol());
        Ok(ChaosListener {
            inner,
            local,
            index: self.listens.fetch_add(1, Ordering::Relaxed),
            accepted: 0,
            options: self.options.clone(),
            max: self.inner.max_message_size(),
        })
    }

    async fn connect(&self, addr: &Address) -> Result<ChaosConnection, TransportError> {
        let inner = self.inner.connect_dyn(&self.inner_addr(addr)).await?;
        // Numbered once connected: a refused attempt (a server not up yet)
        // does not shift the numbers of the connections that follow.
        let index = self.connects.fetch_add(1, Ordering::Relaxed);
        let peer = inner.peer_addr().with_protocol(self.base.protocol());
        Ok(ChaosConnection::new(
            inner,
            peer,
            ConnectionId::Connected { index },
            self.options.clone(),
            self.inner.max_message_size(),
        ))
    }
}

/// A listener whose connections go through the chaos layer.
#[derive(Debug)]
pub struct ChaosListener {
    inner: Box<dyn DynListener>,
    local: Address,
    /// Its index among the transport's listeners.
    index: u64,
    /// Connections accepted so far.
    accepted: u64,
    options: Arc<ChaosOptions>,
    max: usize,
}

impl Listener for ChaosListener {
    type Connection = ChaosConnection;

    fn local_addr(&self) -> &Address {
        &self.local
    }

    async fn accept(&mut self) -> Result<ChaosConnection, TransportError> {
        let inner = self.inner.accept_dyn().await?;
        let index = self.accepted;
        self.accepted += 1;
        let peer = inner.peer_addr().with_protocol(self.local.protocol());
        Ok(ChaosConnection::new(
            inner,
            peer,
            ConnectionId::Accepted {
                listener: self.index,
                index,
            },
            self.options.clone(),
            self.max,
        ))
    }
}
