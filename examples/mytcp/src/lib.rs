// examples/mytcp/src/lib.rs
//! `mytcp`: messages over TCP, as a Courier transport plugin.

use std::sync::Arc;

use courier_transport::stream::{StreamConnection, StreamListener};
use courier_transport::{
    Address, DynTransport, Plugin, PluginContext, Reach, Transport, TransportError,
};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};

/// The plugin: a named factory of transports.
#[derive(Debug)]
pub struct MyTcpPlugin;

impl Plugin for MyTcpPlugin {
    fn name(&self) -> &str {
        "mytcp"
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        let options: MyTcpOptions = ctx.options("mytcp")?;
        Ok(Arc::new(MyTcp {
            protocol: ctx.protocol.to_owned(),
            max: ctx.max_message_size,
            nodelay: options.nodelay,
        }))
    }

    fn reach(&self) -> Reach {
        Reach::Network
    }
}

/// The options `mytcp` knows; any other is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MyTcpOptions {
    /// Send small messages at once (`TCP_NODELAY`).
    nodelay: bool,
}

impl Default for MyTcpOptions {
    fn default() -> Self {
        Self { nodelay: true }
    }
}

/// The transport: listens and connects.
#[derive(Debug, Clone)]
pub struct MyTcp {
    protocol: String,
    max: usize,
    nodelay: bool,
}

impl Transport for MyTcp {
    type Listener = StreamListener<TcpListener>;
    type Connection = StreamConnection<TcpStream>;

    fn protocol(&self) -> &str {
        &self.protocol
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<Self::Listener, TransportError> {
        // An empty address means: loopback, any free port.
        let at = if addr.rest().is_empty() {
            "127.0.0.1:0"
        } else {
            addr.rest()
        };
        let listen_error = |source| TransportError::Listen {
            address: addr.to_string(),
            source,
        };
        let socket = TcpListener::bind(at).await.map_err(listen_error)?;
        let bound = socket.local_addr().map_err(listen_error)?;
        let local = Address::new(self.protocol.clone(), bound.to_string())?;
        let listener = StreamListener::new(socket, local, self.max);
        // Small messages must not wait for Nagle's algorithm.
        let nodelay = self.nodelay;
        Ok(listener.on_accept(move |stream| {
            let _ = stream.set_nodelay(nodelay);
        }))
    }

    async fn connect(&self, addr: &Address) -> Result<Self::Connection, TransportError> {
        let stream =
            TcpStream::connect(addr.rest())
                .await
                .map_err(|source| TransportError::Connect {
                    address: addr.to_string(),
                    source,
                })?;
        let _ = stream.set_nodelay(self.nodelay);
        Ok(StreamConnection::new(stream, addr.clone(), self.max))
    }
}
