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
//!   `timeouts` section of the JSON config ([`Timeouts`]); they travel to
//!   the handler as deadlines (below); non-blocking
//!   calls: [`blocking::Callable::call_nonblocking`].
//! * Remote shutdown: [`Engine::enable_remote_shutdown`], [`Address::shutdown`].
//! * Threads: [`EngineBuilder::use_progress_thread`] and
//!   [`EngineBuilder::num_rpc_threads`]; Margo-style JSON with
//!   [`EngineBuilder::config_json`], read back with [`Engine::config`].
//! * Load shedding and pools, per provider ([`ProviderOptions`]): past its
//!   `max_running` handlers and `max_queued` waiting requests a provider
//!   refuses a request at once ([`Error::Busy`]); a provider may run its
//!   handlers on a pool of its own ([`EngineBuilder::pool`]), so that a
//!   saturated provider does not slow another. [`Engine::provider_load`]
//!   says what one is doing.
//! * Errors never hang a caller: a handler that fails, panics, or returns
//!   without responding sends the caller an error with its message.
//! * Statistics ([`stats`]): [`Engine::stats`] counts every call per RPC
//!   and provider, per peer, per provider's limits and for bulk transfers,
//!   and with [`EngineBuilder::stats_timing`] times each phase into
//!   histograms; [`Address::stats`] reads a peer's, when it serves them
//!   ([`EngineBuilder::serve_stats`]; `courier stats ADDR`, `courier top`).
//!
//! # Every call bounded: deadlines and cancellation
//!
//! A call's timeout travels with its request: the handler knows how long
//! its caller will wait ([`Handle::deadline`], [`Handle::remaining`]).
//! When the caller gives up (the timeout passes, or it drops the call's
//! future), the server is told, and the handler is cancelled: an async
//! handler's future is dropped, and a handler that blocks sees
//! [`Handle::is_cancelled`] turn true. Calls a handler makes inherit its
//! deadline (unless they set a timeout of their own) and are cancelled
//! with it, so the whole tree of work a call caused stops.
//!
//! ```
//! use std::time::Duration;
//! use courier::{Engine, Error, Handle};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier::Result<()> {
//! let server = Engine::new("mem").await?;
//! let (tx, mut cancelled) = tokio::sync::mpsc::unbounded_channel();
//! server.register("slow", move |h: Handle, (): ()| {
//!     let tx = tx.clone();
//!     async move {
//!         // Knows its budget, and hands its token to its helpers.
//!         assert!(h.remaining().is_some_and(|left| left <= Duration::from_millis(50)));
//!         let token = h.cancel_token();
//!         tokio::spawn(async move { tx.send(token.cancelled().await) });
//!         std::future::pending::<()>().await; // never answers
//!         h.respond(&()).await
//!     }
//! })?;
//! let client = Engine::new("mem").await?;
//! let address = client.lookup(&server.address().to_string()).await?;
//! let slow = client.remote::<(), ()>("slow").timeout(Duration::from_millis(50));
//! let err = slow.on(&address).call(&()).await.unwrap_err();
//! assert!(matches!(err, Error::Timeout { .. }));
//! // The server heard: the handler's token fired.
//! assert!(cancelled.recv().await.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! Every error says whether its request can have reached the handler
//! ([`Error::reach`]), so that a caller knows whether sending it again is
//! safe ([`Error::is_retry_safe`], [`RpcOptions::idempotent`]). Courier
//! never retries by itself.
//!
//! # Several protocols: address sets
//!
//! An engine built for several protocols listens on each and prints one
//! [`AddressSet`]; a lookup of it takes the nearest path that connects (the
//! same process, then the same host, then the network), and
//! [`Address::path`] says which (`docs/transports.md`, "Address sets").
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> courier::Result<()> {
//! let server = courier::Engine::new("tcp,unix").await?;
//! let set = server.address().to_string(); // tcp://127.0.0.1:…,unix:///…,mem://anon-…
//! assert_eq!(server.protocol(), "tcp,unix");
//!
//! // In the same process, the in-process path; a tcp-only engine takes tcp.
//! let near = courier::Engine::new("tcp,unix").await?;
//! assert_eq!(near.lookup(&set).await?.path().unwrap().protocol(), "mem");
//! let far = courier::Engine::new("tcp").await?;
//! assert_eq!(far.lookup(&set).await?.path().unwrap().protocol(), "tcp");
//! # Ok(())
//! # }
//! ```
//!
//! # Trace context across processes
//!
//! A call can carry a W3C trace context ([`TraceContext`], the
//! `traceparent`): its own ([`Callable::trace`]), the scope's
//! ([`trace::in_context`], [`trace::with_context`]), or, made by a
//! handler, that of the handler's span, itself a child of its caller's
//! ([`Handle::trace_context`], [`Handle::parent_trace`]). With the `otel`
//! cargo feature, the OpenTelemetry context of the current `tracing` span
//! is sent, and a handler's span is the child of the received one. A call
//! without a context sends nothing more. See the [`trace`] module.
//!
//! # Bulk transfers
//!
//! Large payloads do not ride inside RPC messages: the caller exposes memory
//! ([`Engine::expose`], one or several segments, read-only, write-only or
//! read-write), sends the [`Bulk`] handle inside ordinary arguments, and the
//! handler pulls from it or pushes into it ([`Handle::pull`],
//! [`Handle::push`]; [`Engine::transfer`] from either side, awaited or
//! [started](Transfer::start)). A handle carries its range
//! ([`Bulk::slice`]). A handle is a capability: the
//! exposing engine checks its random key, the region's mode and the range on
//! every access, and refuses a forged, stale or out-of-range one with
//! [`Error::BulkRefused`]. Bytes travel as chunked, pipelined messages on
//! every transport, or as one direct copy (`process_vm_readv`) over shm. See
//! the [`bulk`] module and `docs/bulk.md`.
//!
//! The wire format is in [`frame`] and `docs/wire-format.md`; transports and
//! their plugins live in [`courier_transport`], re-exported as [`transport`].

#![forbid(unsafe_code)]

// Modules, from the leaves up (no module imports one above it; `.ci/run`
// checks that no cycle of imports comes back):
// leaves: error, trace, frame, cancel, config, timeouts, progress, liveness, limits, admission,
// lifecycle, rpcs, runtime; the connection: conn, call (the call primitive), peer; the
// shared state: state; the API below the engine: address, handler, remote,
// bulk/*; payloads by the bulk path: overflow::expose (sending, below call and
// handler), overflow (receiving, below dispatch); incoming frames: dispatch,
// reader, links; probing idle
// connections: keepalive; the engine: engine,
// bulk (its bulk methods), blocking.
mod address;
mod admission;
pub mod blocking;
pub mod bulk;
mod call;
mod cancel;
mod config;
mod conn;
mod dispatch;
mod engine;
mod error;
mod flow;
pub mod frame;
mod handler;
mod keepalive;
mod lifecycle;
mod limits;
mod links;
mod liveness;
mod overflow;
mod paths;
mod peer;
mod progress;
mod reader;
mod registry;
mod remote;
mod rpcs;
pub mod runtime;
mod state;
pub mod stats;
pub mod stream;
mod sync;
mod timeouts;
pub mod trace;

pub use address::Address;
pub use admission::ProviderLoad;
pub use bulk::{Bulk, BulkBuffer, BulkMemory, BulkMode, BulkOp, BulkRequest, Transfer};
pub use cancel::{CancelReason, CancelToken};
pub use config::{
    BulkOptions, Config, Keepalive, Mode, PathOptions, PathOrder, PoolOptions, ProviderOptions,
    StatsOptions, StreamOptions, Timeouts, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_HELLO_TIMEOUT_MS,
    DEFAULT_KEEPALIVE_INTERVAL_MS, DEFAULT_KEEPALIVE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION, DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_QUEUED_RESPONSE_BYTES, DEFAULT_PROGRESS_SPIN_BUSY_US, DEFAULT_PROGRESS_SPIN_US,
};
pub use engine::{Engine, EngineBuilder, RpcOptions};
pub use error::{Error, Reach, Result, TransportError};
pub use handler::{Handle, HandlerOutput};
pub use paths::AddressSet;
pub use registry::{default_registry, install_layer, install_plugin, PROTOCOLS_ENV};
pub use remote::{Callable, RawCallable, RawRemoteFunction, RemoteFunction};
pub use stats::Stats;
pub use stream::{
    RawStreamCall, RawStreamReceiver, RawStreamSender, StreamCall, StreamReceiver, StreamSender,
};
pub use trace::{TraceContext, TraceContextError};

pub use bytes::Bytes;
/// The transport layer (plugins, registry, addresses).
pub use courier_transport as transport;
