//! Courier: an RPC engine with pluggable transports, in the manner of Mochi
//! Margo and PyMargo.
//!
//! An [`Engine`] is built for a protocol (`"tcp"`, `"unix"`, and the
//! `quic` and `shm` plugins as they are built in; Mochi spellings such as
//! `"ofi+tcp"` and `"na+sm"` work too). A server registers RPCs by name and
//! provider id; a client looks peers up from address strings and calls them.
//! Arguments and responses are any serde types, encoded with postcard; a raw
//! byte layer underneath serves bindings that bring their own encoding.
//!
//! # The seed's hello, in Rust
//!
//! The server (compare PyMargo's tutorial "RPCs and responses"):
//!
//! ```no_run
//! use courier::{Engine, Handle};
//!
//! #[tokio::main]
//! async fn main() -> courier::Result<()> {
//!     let engine = Engine::new("tcp").await?;
//!     engine.register("hello", |handle: Handle, (first, last): (String, String)| async move {
//!         println!("Hello {first} {last}!");
//!         handle.respond(&format!("Good bye {first}")).await
//!     })?;
//!     println!("Service running at {}", engine.address());
//!     engine.enable_remote_shutdown();
//!     engine.wait_for_finalize().await;
//!     Ok(())
//! }
//! ```
//!
//! The client:
//!
//! ```no_run
//! use courier::{Engine, Mode};
//!
//! #[tokio::main]
//! async fn main() -> courier::Result<()> {
//!     let engine = Engine::builder("tcp").mode(Mode::Client).build().await?;
//!     let hello = engine.remote::<(&str, &str), String>("hello");
//!     let address = engine.lookup(&std::env::args().nth(1).unwrap_or_default()).await?;
//!     let response = hello.on(&address).call(&("Matthieu", "Dorier")).await?;
//!     assert_eq!(response, "Good bye Matthieu");
//!     address.shutdown().await?;
//!     Ok(())
//! }
//! ```
//!
//! The same without async, with [`blocking`]:
//!
//! ```
//! use courier::blocking::{Engine, Handle};
//!
//! // The server serves from its own progress thread, since this one thread
//! // is also the client (a server without one serves only while a thread
//! // blocks in it, e.g. in `wait_for_finalize`, as in Margo).
//! let server = Engine::builder("unix").use_progress_thread(true).build()?;
//! server.register("hello", |handle: Handle, (first, last): (String, String)| {
//!     handle.respond(&format!("Good bye {first} {last}"))
//! })?;
//! let client = Engine::builder("unix").client().build()?;
//! let hello = client.remote::<(&str, &str), String>("hello");
//! let address = client.lookup(&server.address().to_string())?;
//! assert_eq!(hello.on(&address).call(&("Matthieu", "Dorier"))?, "Good bye Matthieu Dorier");
//! # Ok::<(), courier::Error>(())
//! ```
//!
//! # What else is here
//!
//! * Providers: [`Engine::register_with`] with [`RpcOptions`]; the same name
//!   at several provider ids is several RPCs; [`RemoteFunction::on_provider`].
//! * One-way RPCs: [`RpcOptions::disable_response`] on the server,
//!   [`RemoteFunction::disable_response`] on the client.
//! * Timeouts: [`Callable::timeout`] ([`Error::Timeout`]), or a default in the
//!   JSON config; non-blocking calls: [`blocking::Callable::call_nonblocking`].
//! * Remote shutdown: [`Engine::enable_remote_shutdown`], [`Address::shutdown`].
//! * Threads: [`EngineBuilder::use_progress_thread`] and
//!   [`EngineBuilder::num_rpc_threads`]; Margo-style JSON with
//!   [`EngineBuilder::config_json`], read back with [`Engine::config`].
//! * Errors never hang a caller: a handler that fails, panics, or returns
//!   without responding sends the caller an error with its message.
//!
//! # Bulk transfers
//!
//! Large payloads do not ride inside RPC messages: the caller exposes memory
//! ([`Engine::expose`], one or several segments, read-only, write-only or
//! read-write), sends the [`Bulk`] handle inside ordinary arguments, and the
//! handler pulls from it or pushes into it ([`Handle::pull`],
//! [`Handle::push`]; [`Engine::transfer`] and the non-blocking
//! [`Engine::transfer_nb`] from either side). A handle is a capability: the
//! exposing engine checks its random key, the region's mode and the range on
//! every access, and refuses a forged, stale or out-of-range one with
//! [`Error::BulkRefused`]. Bytes travel as chunked, pipelined messages on
//! every transport, or as one direct copy (`process_vm_readv`) over shm. See
//! the [`bulk`] module and `docs/bulk.md`.
//!
//! The wire format is in [`frame`] and `docs/wire-format.md`; transports and
//! their plugins live in [`courier_transport`], re-exported as [`transport`].

#![forbid(unsafe_code)]

mod address;
pub mod blocking;
pub mod bulk;
mod config;
mod conn;
mod engine;
mod error;
pub mod frame;
mod handler;
mod limits;
mod progress;
mod remote;

pub use address::Address;
pub use bulk::{Bulk, BulkBuffer, BulkMemory, BulkMode, BulkOp, BulkOptions, BulkRequest};
pub use config::{
    Config, Mode, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_HELLO_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUED_RESPONSE_BYTES, DEFAULT_PROGRESS_SPIN_US,
};
pub use engine::{Engine, EngineBuilder, RpcOptions};
pub use error::{Error, Result, TransportError};
pub use handler::{Handle, HandlerOutput};
pub use remote::{Callable, RawCallable, RawRemoteFunction, RemoteFunction};

pub use bytes::Bytes;
/// The transport layer (plugins, registry, addresses).
pub use courier_transport as transport;

/// The environment variable naming an extra `protocols.toml` that
/// [`default_registry`] loads on top of the built-in table.
pub const PROTOCOLS_ENV: &str = "COURIER_PROTOCOLS";

/// The registry engines use unless given another: the built-in protocol
/// table, the table named by `$COURIER_PROTOCOLS` if set, and the plugins
/// bundled by this crate's cargo features (`tcp`, `unix`, `quic`, `shm`,
/// `mem`, and the `chaos` layer).
///
/// Plugins go through the same public path as any user plugin
/// ([`transport::Registry::with`]); the engine itself names none.
///
/// # Errors
/// [`TransportError::ProtocolTable`] when `$COURIER_PROTOCOLS` names a file
/// that cannot be read or parsed.
pub fn default_registry() -> std::result::Result<transport::Registry, TransportError> {
    #[allow(unused_mut)]
    let mut registry = transport::Registry::new();
    if let Some(path) = std::env::var_os(PROTOCOLS_ENV) {
        registry.load_toml_file(&path)?;
    }
    #[cfg(feature = "tcp")]
    {
        registry = registry.with(courier_tcp::TcpPlugin);
    }
    #[cfg(feature = "unix")]
    {
        registry = registry.with(courier_unix::UnixPlugin);
    }
    #[cfg(feature = "quic")]
    {
        registry = registry.with(courier_quic::QuicPlugin);
    }
    #[cfg(feature = "shm")]
    {
        registry = registry.with(courier_shm::ShmPlugin);
    }
    #[cfg(feature = "mem")]
    {
        registry = registry.with(courier_mem::MemPlugin);
    }
    #[cfg(feature = "chaos")]
    {
        registry = registry.with_layer(courier_chaos::ChaosLayer);
    }
    for extra in installed().lock().unwrap_or_else(|p| p.into_inner()).iter() {
        match extra {
            Installed::Plugin(p) => registry.add_plugin(p.clone()),
            Installed::Layer(l) => registry.add_layer(l.clone()),
        }
    }
    Ok(registry)
}

/// A plugin or layer added to every default registry of the process.
enum Installed {
    Plugin(std::sync::Arc<dyn transport::Plugin>),
    Layer(std::sync::Arc<dyn transport::Layer>),
}

fn installed() -> &'static std::sync::Mutex<Vec<Installed>> {
    static INSTALLED: std::sync::OnceLock<std::sync::Mutex<Vec<Installed>>> =
        std::sync::OnceLock::new();
    INSTALLED.get_or_init(Default::default)
}

/// Adds a transport plugin to every [`default_registry`] of this process
/// from now on, so `Engine::new("<its protocol>")`, the `courier` command
/// built with [`courier-cli`](https://docs.rs/courier-cli) and the
/// conformance suite of `courier-testkit` all find it. A plugin of the same
/// name (a bundled one too) is replaced.
///
/// This is the one-line way to plug a transport in; to keep it to one
/// engine instead, give that engine its own registry with
/// [`EngineBuilder::registry`].
///
/// Installing the same plugin again (by name) replaces the earlier one.
///
/// ```
/// # #[cfg(feature = "mem")] {
/// # use courier_mem::MemPlugin as MyPlugin;
/// courier::install_plugin(MyPlugin);
/// let registry = courier::default_registry()?;
/// assert!(registry.plugin_names().contains(&"mem".to_owned()));
/// # }
/// # Ok::<(), courier::TransportError>(())
/// ```
pub fn install_plugin(plugin: impl transport::Plugin) {
    let mut all = installed().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|i| !matches!(i, Installed::Plugin(p) if p.name() == plugin.name()));
    all.push(Installed::Plugin(std::sync::Arc::new(plugin)));
}

/// Adds a layer plugin (see [`transport::Layer`]) to every
/// [`default_registry`] of this process from now on; see [`install_plugin`].
pub fn install_layer(layer: impl transport::Layer) {
    let mut all = installed().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|i| !matches!(i, Installed::Layer(l) if l.name() == layer.name()));
    all.push(Installed::Layer(std::sync::Arc::new(layer)));
}
