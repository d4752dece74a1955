//! Statistics: what an engine counted and timed, per RPC and provider, per
//! peer connection, per provider's limits, and for bulk transfers.
//!
//! [`Engine::stats`](crate::Engine::stats) returns a [`Stats`]: a plain
//! structure that serializes to JSON (its schema is documented field by
//! field here and in `docs/observability.md`; [`Stats::schema`] is its
//! version). A peer can read it through the built-in statistics RPC when
//! the engine serves it (`"stats": {"serve": true}` in the JSON
//! configuration, [`EngineBuilder::serve_stats`](crate::EngineBuilder::serve_stats)),
//! with [`Address::stats`](crate::Address::stats) or `courier stats ADDR`.
//!
//! Counting is on by default: calls, errors and bytes per RPC and provider
//! and per peer (a relaxed increment and one uncontended lock per request
//! on each side, in a shard of the thread's own), which costs at most 3%
//! of a 64-byte call's latency (about 1-2% on shm, under 1% on tcp, unix
//! and quic; `docs/benchmarks.md` has the figures). `"stats":
//! {"counters": false}` (or
//! [`EngineBuilder::stats`](crate::EngineBuilder::stats)) turns it off.
//! Timing each phase into histograms costs more (5-10% on shm) and is off
//! by default: `"stats": {"timing": true}` (or
//! [`EngineBuilder::stats_timing`](crate::EngineBuilder::stats_timing)).
//! Timing and serving turn counting on.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> courier::Result<()> {
//! use courier::{Engine, Handle};
//!
//! let engine = Engine::builder("unix").stats_timing(true).build().await?;
//! engine.register("echo", |h: Handle, x: u32| async move { h.respond(&x).await })?;
//! let echo = engine.remote::<u32, u32>("echo");
//! let me = engine.lookup(&engine.address().to_string()).await?;
//! echo.on(&me).call(&7).await?;
//!
//! let stats = engine.stats();
//! let rpc = stats.rpc("echo", 0).expect("counted");
//! assert_eq!(rpc.served.as_ref().map(|s| s.calls), Some(1));
//! assert_eq!(rpc.called.as_ref().map(|s| s.ok), Some(1));
//! let round_trip = rpc.called.as_ref().and_then(|s| s.phase("round_trip"));
//! assert_eq!(round_trip.map(|l| l.count), Some(1));
//! println!("{}", stats.to_json_pretty());
//! # engine.finalize().await; Ok(()) }
//! ```

pub mod advice;
mod prometheus;
pub(crate) mod record;
pub(crate) mod schema;
pub(crate) mod serve;
pub(crate) mod snapshot;

pub use advice::{Advice, Severity};
pub use schema::{
    BulkStats, Latency, PeerStats, ProgressStats, ProviderStats, RpcStats, Settings, SideStats,
    Stats, StreamStats, SCHEMA, SHORT_PARK_US, STATS_RPC,
};
