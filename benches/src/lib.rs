//! Shared helpers for Courier's micro-benchmarks: latency statistics and
//! table printing. The benchmarks themselves are in `benches/`.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latency figures of one measured loop.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Median, in microseconds.
    pub p50_us: f64,
    /// 99th percentile, in microseconds.
    pub p99_us: f64,
    /// Mean, in microseconds.
    pub mean_us: f64,
    /// Iterations per second over the measured loop.
    pub per_s: f64,
}

/// Records durations in nanoseconds.
#[derive(Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
    start: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder (1 ns to 60 s, 3 significant digits).
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            start: Instant::now(),
        }
    }

    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let _ = self
            .hist
            .record(d.as_nanos().clamp(1, 60_000_000_000) as u64);
    }

    /// The figures so far.
    pub fn stats(&self) -> Stats {
        let elapsed = self.start.elapsed().as_secs_f64();
        Stats {
            p50_us: self.hist.value_at_quantile(0.50) as f64 / 1e3,
            p99_us: self.hist.value_at_quantile(0.99) as f64 / 1e3,
            mean_us: self.hist.mean() / 1e3,
            per_s: self.hist.len() as f64 / elapsed,
        }
    }
}

/// Iterations from the environment (`COURIER_BENCH_ITERS`), or `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("COURIER_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints one row of a result table.
pub fn row(label: &str, s: &Stats, floor: Option<&Stats>) {
    let ratio = floor.map_or_else(String::new, |f| format!("{:>8.2}x", s.p50_us / f.p50_us));
    println!(
        "{label:<44} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {ratio}",
        s.p50_us, s.p99_us, s.mean_us, s.per_s
    );
}

/// Prints the table header.
pub fn header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>10} {:>9}",
        "layer", "p50 µs", "p99 µs", "mean µs", "per s", "p50/raw"
    );
}

/// A server engine and a client engine of one protocol, each on a tokio
/// runtime of its own, the client connected to the server: what the
/// in-process benchmarks (`allocs`, `cancel_latency`) measure between.
#[derive(Debug)]
pub struct EnginePair {
    /// The server's runtime.
    pub server_rt: tokio::runtime::Runtime,
    /// The client's runtime.
    pub client_rt: tokio::runtime::Runtime,
    /// The server engine (its RPCs registered by the caller).
    pub server: courier::Engine,
    /// The client engine.
    pub client: courier::Engine,
    /// The server's address, looked up by the client.
    pub address: courier::Address,
}

impl EnginePair {
    /// Looks `server` up from `client` (on the client's runtime).
    ///
    /// # Errors
    /// The lookup's.
    pub fn connect(
        server_rt: tokio::runtime::Runtime,
        client_rt: tokio::runtime::Runtime,
        server: courier::Engine,
        client: courier::Engine,
    ) -> courier::Result<Self> {
        let at = server.address().to_string();
        let address = client_rt.block_on({
            let client = client.clone();
            async move { client.lookup(&at).await }
        })?;
        Ok(Self {
            server_rt,
            client_rt,
            server,
            client,
            address,
        })
    }

    /// Finalizes both engines, then shuts their runtimes down.
    pub fn finish(self) {
        let Self {
            server_rt,
            client_rt,
            server,
            client,
            address,
        } = self;
        drop(address);
        client_rt.block_on(client.finalize());
        server_rt.block_on(server.finalize());
        drop((client, server));
        client_rt.shutdown_timeout(Duration::from_secs(1));
        server_rt.shutdown_timeout(Duration::from_secs(1));
    }
}
