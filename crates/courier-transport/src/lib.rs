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
//!   byte-stream transports, and a ready-made connection, listener, sender
//!   and receiver over any tokio stream;
//! * [`PluginContext::options`], which reads a plugin's options as a typed
//!   serde struct, and [`TransportError::invalid_address`] for the errors
//!   plugins return about their addresses.
//!
//! # A transport in a few lines
//!
//! A byte-stream transport only opens streams; [`stream`] does the rest. A
//! [`StreamConnection`](stream::StreamConnection) over any stream splits into
//! a sender and a receiver that frame messages on it; here over an
//! in-memory pipe:
//!
//! ```
//! use courier_transport::stream::StreamConnection;
//! use courier_transport::{Address, Connection, MessageReceiver, MessageSender};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let (a, b) = tokio::io::duplex(4096);
//! let peer: Address = "pipe://demo".parse()?;
//! let (mut tx, _) = StreamConnection::new(tokio::io::split(a), peer.clone(), 1 << 20).split();
//! let (_, mut rx) = StreamConnection::new(tokio::io::split(b), peer, 1 << 20).split();
//! tx.send(&[b"hello, ", b"world"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"hello, world");
//! # Ok(()) }
//! ```
//!
//! The `tcp` plugin is that over sockets: its transport's types are
//! `StreamListener<TcpListener>` and `StreamConnection<TcpStream>`, and what
//! it writes itself is binding, connecting and its addresses. A medium that
//! is not a byte stream implements [`MessageSender::transmit`] and
//! [`MessageReceiver::recv`] itself; [`MessageSender::send`] refuses a
//! message over the maximum size for it.
//!
//! `docs/writing-a-transport.md` in the repository walks through a complete
//! plugin, and the module docs of [`transport`] state the contract every
//! transport keeps.

#![forbid(unsafe_code)]

mod address;
mod batch;
pub mod capability;
mod error;
pub mod framing;
mod options;
mod registry;
pub mod stream;
pub mod transport;

pub use address::Address;
pub use batch::{Batch, Messages};
pub use capability::{Capabilities, DirectMemory, PeerRange};
pub use error::TransportError;
pub use registry::{
    Layer, LayerEntry, Plugin, PluginContext, PluginOptions, ProtocolEntry, Reach, Registry,
    BUILTIN_PROTOCOLS_TOML, DEFAULT_PATH_RANK,
};
pub use transport::{
    BatchSent, BoxFuture, Connection, DynConnection, DynListener, DynReceiver, DynSender,
    DynTransport, Listener, MessageReceiver, MessageSender, Pacing, Transport,
};

pub use bytes::Bytes;
