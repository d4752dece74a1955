//! The transport layer of [Courier](https://docs.rs/courier), an RPC engine
//! with pluggable transports in the manner of Mochi Margo.
//!
//! This crate is what a transport plugin depends on, and all it depends on:
//! it knows nothing of RPCs. It holds
//!
//! * the [`Transport`] trait family — listen, connect, and send and receive
//!   whole messages with a maximum size — and its dyn-compatible twin
//!   [`DynTransport`], implemented for every `Transport`;
//! * [`Address`], the `<protocol>://<plugin part>` strings peers exchange;
//! * [`Registry`], which maps protocol names and aliases (`tcp`, `ofi+tcp`,
//!   `na+sm`, ...) to [`Plugin`]s through `protocols.toml`;
//! * [`framing`] and [`stream`]: the sans-IO length-prefixed framing shared by
//!   byte-stream transports, and a ready-made sender and receiver over any
//!   tokio stream.
//!
//! # A transport in a few lines
//!
//! A byte-stream transport only opens streams; the framing does the rest.
//! Here a transport over in-memory pipes shows the shape (the `tcp` and `unix`
//! plugins are the same with sockets):
//!
//! ```
//! use courier_transport::stream::{StreamReceiver, StreamSender};
//! use courier_transport::{Address, Connection, MessageReceiver, MessageSender};
//! use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
//!
//! struct Pipe { peer: Address, io: DuplexStream }
//!
//! impl Connection for Pipe {
//!     type Sender = StreamSender<WriteHalf<DuplexStream>>;
//!     type Receiver = StreamReceiver<ReadHalf<DuplexStream>>;
//!     fn peer_addr(&self) -> &Address { &self.peer }
//!     fn split(self) -> (Self::Sender, Self::Receiver) {
//!         let (r, w) = tokio::io::split(self.io);
//!         (StreamSender::new(w, self.peer.clone(), 1 << 20),
//!          StreamReceiver::new(r, self.peer, 1 << 20))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let (a, b) = tokio::io::duplex(4096);
//! let peer: Address = "pipe://demo".parse()?;
//! let (mut tx, _) = Pipe { peer: peer.clone(), io: a }.split();
//! let (_, mut rx) = Pipe { peer, io: b }.split();
//! tx.send(&[b"hello, ", b"world"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"hello, world");
//! # Ok(()) }
//! ```
//!
//! `docs/writing-a-transport.md` in the repository walks through a complete
//! plugin, and the module docs of [`transport`] state the contract every
//! transport keeps.

#![forbid(unsafe_code)]

mod address;
pub mod capability;
mod error;
pub mod framing;
mod options;
mod registry;
pub mod stream;
pub mod transport;

pub use address::Address;
pub use capability::{Capabilities, DirectMemory, PeerRange};
pub use error::TransportError;
pub use registry::{
    Layer, LayerEntry, Plugin, PluginContext, PluginOptions, ProtocolEntry, Reach, Registry,
    BUILTIN_PROTOCOLS_TOML,
};
pub use transport::{
    BoxFuture, Connection, DynConnection, DynListener, DynReceiver, DynSender, DynTransport,
    Listener, MessageReceiver, MessageSender, Transport,
};

pub use bytes::Bytes;
