//! TCP transport plugin for Courier.
//!
//! Addresses are `tcp://<host>:<port>`, IPv4 or IPv6 (`tcp://[::1]:7000`).
//! Listening on `tcp://` (empty plugin part) binds `127.0.0.1` on an
//! ephemeral port: never another interface unless asked for by address.
//! Messages are length-prefixed on the stream (see
//! [`courier_transport::framing`]); `TCP_NODELAY` is on unless the option
//! `nodelay = false` is given.
//!
//! ```
//! use courier_tcp::TcpTransport;
//! use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let tcp = TcpTransport::new(1 << 20);
//! let mut listener = tcp.listen(&"tcp://".parse()?).await?;
//! let addr = listener.local_addr().clone();
//! let (client, server) = tokio::join!(tcp.connect(&addr), listener.accept());
//! let (mut tx, _rx) = client?.split();
//! let (_tx, mut rx) = server?.split();
//! tx.send(&[b"ping"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"ping");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::sync::Arc;

use courier_transport::stream::{StreamConnection, StreamListener};
use courier_transport::{Address, DynTransport, Plugin, PluginContext, Transport, TransportError};
use serde::Deserialize;
use tokio::net::{TcpListener as TokioListener, TcpStream};

/// The plugin name used in `protocols.toml`.
pub const PLUGIN_NAME: &str = "tcp";

/// Default listen address when none is given: loopback, ephemeral port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";

/// A listening TCP socket.
pub type TcpListener = StreamListener<TokioListener>;

/// An established TCP connection.
pub type TcpConnection = StreamConnection<TcpStream>;

/// The `tcp` plugin: builds [`TcpTransport`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpPlugin;

impl Plugin for TcpPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn reach(&self) -> courier_transport::Reach {
        courier_transport::Reach::Network
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        let options: TcpOptions = ctx.options(PLUGIN_NAME)?;
        Ok(Arc::new(TcpTransport {
            base: Address::new(ctx.protocol, "")?,
            max: ctx.max_message_size,
            nodelay: options.nodelay,
        }))
    }
}

/// The plugin's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TcpOptions {
    /// `TCP_NODELAY` on every connection.
    nodelay: bool,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { nodelay: true }
    }
}

/// Messages over TCP streams.
#[derive(Debug, Clone)]
pub struct TcpTransport {
    /// `<protocol>://`, the template of every address this transport prints.
    base: Address,
    max: usize,
    nodelay: bool,
}

impl TcpTransport {
    /// A transport for protocol `tcp` with `TCP_NODELAY`, refusing messages
    /// over `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            base: Address::new(PLUGIN_NAME, "")
                .unwrap_or_else(|_| unreachable!("'tcp' is a valid name")),
            max: max_message_size,
            nodelay: true,
        }
    }

    fn address(&self, sock: std::net::SocketAddr) -> Address {
        self.base.with_rest(sock.to_string())
    }
}

/// Sets `TCP_NODELAY` on a new connection; a failure costs latency only.
fn set_nodelay(stream: &TcpStream, nodelay: bool) {
    if let Err(e) = stream.set_nodelay(nodelay) {
        let peer = stream.peer_addr().ok();
        tracing::debug!(?peer, "cannot set TCP_NODELAY: {e}");
    }
}

impl Transport for TcpTransport {
    type Listener = TcpListener;
    type Connection = TcpConnection;

    fn protocol(&self) -> &str {
        self.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<TcpListener, TransportError> {
        let target = if addr.rest().is_empty() {
            DEFAULT_LISTEN
        } else {
            addr.rest()
        };
        let listener = TokioListener::bind(target).await.map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidInput {
                TransportError::invalid_address(addr, format!("expected host:port ({source})"))
            } else {
                TransportError::Listen {
                    address: addr.to_string(),
                    source,
                }
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| TransportError::Listen {
                address: addr.to_string(),
                source,
            })?;
        let nodelay = self.nodelay;
        Ok(StreamListener::new(listener, self.address(local), self.max)
            .on_accept(move |stream| set_nodelay(stream, nodelay)))
    }

    async fn connect(&self, addr: &Address) -> Result<TcpConnection, TransportError> {
        if addr.rest().is_empty() {
            return Err(TransportError::invalid_address(
                addr,
                "expected host:port after 'tcp://'",
            ));
        }
        let stream = TcpStream::connect(addr.rest()).await.map_err(|source| {
            if source.kind() == io::ErrorKind::InvalidInput {
                TransportError::invalid_address(addr, format!("expected host:port ({source})"))
            } else {
                TransportError::Connect {
                    address: addr.to_string(),
                    source,
                }
            }
        })?;
        set_nodelay(&stream, self.nodelay);
        Ok(StreamConnection::new(stream, addr.clone(), self.max))
    }
}

#[cfg(test)]
mod tests {
    use courier_transport::{Connection, Listener};

    use super::*;

    #[tokio::test]
    async fn nodelay_is_set_as_asked_on_both_sides() {
        for nodelay in [true, false] {
            let t = TcpTransport {
                nodelay,
                ..TcpTransport::new(1024)
            };
            let mut l = t.listen(&"tcp://".parse().unwrap()).await.unwrap();
            let addr = l.local_addr().clone();
            let (client, server) = tokio::join!(t.connect(&addr), l.accept());
            let (client, server) = (client.unwrap(), server.unwrap());
            assert_eq!(client.stream().nodelay().unwrap(), nodelay);
            assert_eq!(server.stream().nodelay().unwrap(), nodelay);
            // The accepted connection names its peer under the protocol.
            let peer = client.stream().local_addr().unwrap();
            assert_eq!(server.peer_addr().to_string(), format!("tcp://{peer}"));
        }
    }
}
