// examples/mytcp/src/lib.rs
//! `mytcp`: messages over TCP, as a Courier transport plugin.

use std::sync::Arc;

use courier_transport::stream::{StreamReceiver, StreamSender};
use courier_transport::{
    Address, Connection, DynTransport, Listener, Plugin, PluginContext, Reach, Transport,
    TransportError,
};
use serde::Deserialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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

impl MyTcp {
    /// `<protocol>://<host:port>`: the addresses this transport prints.
    fn address(&self, at: std::net::SocketAddr) -> Result<Address, TransportError> {
        Address::new(self.protocol.clone(), at.to_string())
    }

    fn connection(&self, stream: TcpStream, peer: Address) -> MyConnection {
        // Small messages must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(self.nodelay);
        MyConnection {
            stream,
            peer,
            max: self.max,
        }
    }
}

impl Transport for MyTcp {
    type Listener = MyListener;
    type Connection = MyConnection;

    fn protocol(&self) -> &str {
        &self.protocol
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<MyListener, TransportError> {
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
        let local = self.address(socket.local_addr().map_err(listen_error)?)?;
        Ok(MyListener {
            socket,
            local,
            transport: self.clone(),
        })
    }

    async fn connect(&self, addr: &Address) -> Result<MyConnection, TransportError> {
        let stream =
            TcpStream::connect(addr.rest())
                .await
                .map_err(|source| TransportError::Connect {
                    address: addr.to_string(),
                    source,
                })?;
        Ok(self.connection(stream, addr.clone()))
    }
}

/// A listening socket.
#[derive(Debug)]
pub struct MyListener {
    socket: TcpListener,
    local: Address,
    transport: MyTcp,
}

impl Listener for MyListener {
    type Connection = MyConnection;

    fn local_addr(&self) -> &Address {
        &self.local
    }

    async fn accept(&mut self) -> Result<MyConnection, TransportError> {
        let (stream, peer) =
            self.socket
                .accept()
                .await
                .map_err(|source| TransportError::Listen {
                    address: self.local.to_string(),
                    source,
                })?;
        let peer = self.transport.address(peer)?;
        Ok(self.transport.connection(stream, peer))
    }
}

/// An open connection, before it is split.
#[derive(Debug)]
pub struct MyConnection {
    stream: TcpStream,
    peer: Address,
    max: usize,
}

impl Connection for MyConnection {
    type Sender = StreamSender<OwnedWriteHalf>;
    type Receiver = StreamReceiver<OwnedReadHalf>;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (Self::Sender, Self::Receiver) {
        // The framing (length prefixes, maximum size, orderly close) comes
        // with the stream sender and receiver.
        let (read, write) = self.stream.into_split();
        (
            StreamSender::new(write, self.peer.clone(), self.max),
            StreamReceiver::new(read, self.peer, self.max),
        )
    }
}
