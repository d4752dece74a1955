//! The client side of one measurement, per layer: a warm-up, then `calls`
//! round trips with `in_flight` outstanding, each timed into an HDR
//! histogram. [`measure`] times any RPC system through a [`Caller`].

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use courier::transport::{Address as WireAddr, DynReceiver, DynSender, DynTransport};
use courier::{Address, Bytes, Engine, RawCallable};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::{AbortHandle, JoinSet};

use super::SocketKind;
use crate::{CliResult, Context, Error};

/// What one measurement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// Calls kept outstanding.
    pub in_flight: usize,
    /// Calls measured (unless the time cap comes first).
    pub calls: u64,
    /// Calls made first, not measured.
    pub warmup: u64,
    /// No measured call starts after this much time (a warm-up call, after
    /// a quarter of it).
    pub time_cap: Duration,
}

/// The figures of one measurement (one run).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Calls completed per second of the measurement.
    pub rpcs_per_s: f64,
    /// Payload MiB per second (payload bytes × calls / elapsed).
    pub mib_per_s: f64,
    /// Calls measured.
    pub calls: u64,
    /// Duration of the measurement, seconds (from the start of the measured
    /// loop to the last reply).
    pub elapsed_s: f64,
}

/// A histogram of nanoseconds, 1 ns to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> CliResult<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

/// A duration in whole nanoseconds, at least 1 (a histogram's lowest value).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// The raw outcome of one measured loop, before it becomes [`Figures`]: a
/// `courier bench-client` child sends it to its parent, which merges those
/// of all its clients.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Every round trip, in nanoseconds.
    pub(crate) histogram: Histogram<u64>,
    /// From the start of the measured loop to its last reply.
    pub(crate) elapsed: Duration,
    /// The wall clock at the start of the measured loop (the clients of one
    /// measurement run in different processes: their common clock).
    pub(crate) started: SystemTime,
}

impl Sample {
    pub(crate) fn figures(&self, payload: usize) -> CliResult<Figures> {
        figures(&self.histogram, self.elapsed, payload)
    }
}

/// What runs between the warm-up and the measured loop: nothing for the
/// client in this process ([`no_gate`]); the start barrier in a
/// `courier bench-client` child.
pub(crate) trait Gate {
    fn open(&mut self) -> impl Future<Output = CliResult>;
}

/// The gate that is always open.
pub(crate) struct NoGate;

impl Gate for NoGate {
    async fn open(&mut self) -> CliResult {
        Ok(())
    }
}

/// The measured loop: its start on the wall clock, then `run`'s histogram
/// and elapsed time.
async fn sampled(
    run: impl Future<Output = CliResult<(Histogram<u64>, Duration)>>,
) -> CliResult<Sample> {
    let started = SystemTime::now();
    let (histogram, elapsed) = run.await?;
    Ok(Sample {
        histogram,
        elapsed,
        started,
    })
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn figures(h: &Histogram<u64>, elapsed: Duration, payload: usize) -> CliResult<Figures> {
    let calls = h.len();
    if calls == 0 {
        return Err(Error::Peer("no call completed within the time cap".into()));
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(Figures {
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
        rpcs_per_s: calls as f64 / secs,
        mib_per_s: payload as f64 * calls as f64 / secs / f64::from(1u32 << 20),
        calls,
        elapsed_s: secs,
    })
}

/// Keeps the current tokio runtime polling (a task that yields in a loop)
/// while it lives: the raw floors' form of "polling before parking", under
/// any spin policy of `courier bench`.
#[derive(Debug)]
pub struct Spinner(Option<AbortHandle>);

impl Spinner {
    /// Starts the spinning task on the current runtime if `enabled` (else
    /// does nothing); dropping the `Spinner` stops it.
    pub fn start(enabled: bool) -> Self {
        Self(enabled.then(|| {
            tokio::spawn(async {
                loop {
                    tokio::task::yield_now().await;
                }
            })
            .abort_handle()
        }))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// engine, and any other RPC system: N tasks, each calling in a loop
// ---------------------------------------------------------------------------

/// One caller of the RPC a measurement times: each of its
/// [`Spec::in_flight`] tasks owns a clone and calls through it in a loop.
pub trait Caller: Clone + Send + 'static {
    /// Makes one call with `payload`, checks its response, and resolves
    /// once the response is in (the round trip [`measure`] times).
    fn call(&mut self, payload: &Bytes) -> impl Future<Output = Result<(), Error>> + Send;
}

/// The [`Caller`] of `courier bench`'s engine layer: a raw RPC through a
/// Courier engine, whose response must be empty, as `bench.sink`'s is.
#[derive(Debug, Clone)]
pub struct EngineSink {
    rpc: Arc<str>,
    callable: RawCallable,
}

impl EngineSink {
    /// Calls `rpc` of the engine at `address` through `engine`.
    pub fn new(engine: &Engine, address: &Address, rpc: &str) -> Self {
        Self {
            rpc: rpc.into(),
            callable: engine.remote_raw(rpc).on(address),
        }
    }
}

impl Caller for EngineSink {
    async fn call(&mut self, payload: &Bytes) -> Result<(), Error> {
        let reply = self.callable.call(payload).await.context(|| &*self.rpc)?;
        if reply.is_empty() {
            Ok(())
        } else {
            Err(Error::Peer(format!(
                "{} answered {} bytes, not an empty payload",
                self.rpc,
                reply.len()
            )))
        }
    }
}

/// Measures RPCs through `caller` as `courier bench` measures its engine
/// layer, on the current tokio runtime: `spec.in_flight` tasks, each in a
/// loop taking a ticket from a shared counter, calling with `payload`, and
/// recording the call's round trip in its own HDR histogram (nanoseconds, 3
/// significant digits), until `spec.calls` tickets are taken or the time
/// cap has passed; the histograms are merged into the [`Figures`]. A
/// warm-up of `spec.warmup` calls with as many tasks, capped at a quarter
/// of the time cap, comes first and is not recorded. An error of any call
/// ends the measurement with it.
pub async fn measure<C: Caller>(
    caller: &C,
    payload: &Bytes,
    spec: &Spec,
) -> Result<Figures, Error> {
    sample(caller, payload, spec, &mut NoGate)
        .await?
        .figures(payload.len())
}

/// [`measure`], with `gate` opened between the warm-up and the measured
/// loop; the sample, not its figures.
pub(crate) async fn sample<C: Caller>(
    caller: &C,
    payload: &Bytes,
    spec: &Spec,
    gate: &mut impl Gate,
) -> CliResult<Sample> {
    calls_loop(
        caller,
        payload,
        spec.in_flight,
        spec.warmup,
        spec.time_cap / 4,
    )
    .await?;
    gate.open().await?;
    sampled(calls_loop(
        caller,
        payload,
        spec.in_flight,
        spec.calls,
        spec.time_cap,
    ))
    .await
}

async fn calls_loop<C: Caller>(
    caller: &C,
    payload: &Bytes,
    in_flight: usize,
    calls: u64,
    cap: Duration,
) -> CliResult<(Histogram<u64>, Duration)> {
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cap;
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let mut caller = caller.clone();
        let payload = payload.clone();
        let tickets = tickets.clone();
        tasks.spawn(async move {
            let mut h = histogram()?;
            while tickets.fetch_add(1, Ordering::Relaxed) < calls {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                caller.call(&payload).await?;
                h.saturating_record(nanos(t0.elapsed()));
            }
            Ok::<_, Error>(h)
        });
    }
    let mut all = histogram()?;
    // Dropping the set on an error aborts the other tasks.
    while let Some(joined) = tasks.join_next().await {
        let h = joined.map_err(|e| Error::Peer(format!("a calling task failed: {e}")))??;
        all.add(&h)?;
    }
    Ok((all, start.elapsed()))
}

// ---------------------------------------------------------------------------
// raw transport and plain sockets: one connection, `in_flight` outstanding
// ---------------------------------------------------------------------------

/// One side of a ping-pong link: send the payload, receive an empty reply.
trait Link {
    async fn send(&mut self) -> CliResult;
    async fn recv(&mut self) -> CliResult;
}

/// Sends `in_flight` messages, then for each reply sends the next one
/// (the link is ordered: the oldest message is the one answered).
async fn pipeline<L: Link>(
    link: &mut L,
    in_flight: usize,
    calls: u64,
    cap: Duration,
) -> CliResult<(Histogram<u64>, Duration)> {
    let mut h = histogram()?;
    let mut pending: VecDeque<Instant> = VecDeque::with_capacity(in_flight);
    let start = Instant::now();
    let deadline = start + cap;
    let mut sent = 0u64;
    while sent < calls && pending.len() < in_flight {
        pending.push_back(Instant::now());
        link.send().await?;
        sent += 1;
    }
    while let Some(t0) = pending.pop_front() {
        link.recv().await?;
        let now = Instant::now();
        h.saturating_record(nanos(now - t0));
        if sent < calls && now < deadline {
            pending.push_back(Instant::now());
            link.send().await?;
            sent += 1;
        }
    }
    Ok((h, start.elapsed()))
}

async fn warm_and_measure<L: Link>(
    link: &mut L,
    spec: &Spec,
    gate: &mut impl Gate,
) -> CliResult<Sample> {
    pipeline(link, spec.in_flight, spec.warmup, spec.time_cap / 4).await?;
    gate.open().await?;
    sampled(pipeline(link, spec.in_flight, spec.calls, spec.time_cap)).await
}

struct RawLink {
    tx: Box<dyn DynSender>,
    rx: Box<dyn DynReceiver>,
    payload: Bytes,
}

impl Link for RawLink {
    async fn send(&mut self) -> CliResult {
        Ok(self.tx.send_dyn(&[&self.payload]).await?)
    }

    async fn recv(&mut self) -> CliResult {
        match self.rx.recv_dyn().await? {
            Some(m) if m.is_empty() => Ok(()),
            Some(m) => Err(Error::Peer(format!(
                "the raw peer answered {} bytes, not an empty message",
                m.len()
            ))),
            None => Err(Error::Peer("the raw peer closed the connection".into())),
        }
    }
}

/// The transport alone: a new connection to the raw peer, used for the
/// warm-up and the measurement, then closed.
pub(crate) async fn raw(
    transport: &Arc<dyn DynTransport>,
    addr: &WireAddr,
    payload: &Bytes,
    spec: &Spec,
    polling: bool,
) -> CliResult<Figures> {
    raw_sample(transport, addr, payload, spec, polling, &mut NoGate)
        .await?
        .figures(payload.len())
}

/// [`raw`], with `gate` opened between the warm-up and the measured loop.
pub(crate) async fn raw_sample(
    transport: &Arc<dyn DynTransport>,
    addr: &WireAddr,
    payload: &Bytes,
    spec: &Spec,
    polling: bool,
    gate: &mut impl Gate,
) -> CliResult<Sample> {
    let conn = transport.connect_dyn(addr).await?;
    let (tx, rx) = conn.split_dyn();
    let mut link = RawLink {
        tx,
        rx,
        payload: payload.clone(),
    };
    let _spin = Spinner::start(polling);
    let sample = warm_and_measure(&mut link, spec, gate).await?;
    let _ = link.tx.close_dyn().await;
    Ok(sample)
}

struct SocketLink<S> {
    stream: BufReader<S>,
    /// The length prefix and the payload, written with one `write_all`.
    message: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link for SocketLink<S> {
    async fn send(&mut self) -> CliResult {
        self.stream
            .write_all(&self.message)
            .await
            .map_err(|e| Error::io("write to the socket peer", e))
    }

    async fn recv(&mut self) -> CliResult {
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .await
            .map_err(|e| Error::io("read from the socket peer", e))?;
        match u32::from_le_bytes(prefix) {
            0 => Ok(()),
            n => Err(Error::Peer(format!(
                "the socket peer answered {n} bytes, not an empty message"
            ))),
        }
    }
}

async fn socket_link<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    payload: &[u8],
    spec: &Spec,
    polling: bool,
    gate: &mut impl Gate,
) -> CliResult<Sample> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        Error::Argument(format!(
            "a payload of {} bytes is over the socket floor's 4 GiB",
            payload.len()
        ))
    })?;
    let mut message = Vec::with_capacity(4 + payload.len());
    message.extend_from_slice(&len.to_le_bytes());
    message.extend_from_slice(payload);
    let mut link = SocketLink {
        stream: BufReader::with_capacity(64 << 10, stream),
        message,
    };
    let _spin = Spinner::start(polling);
    let sample = warm_and_measure(&mut link, spec, gate).await?;
    let _ = link.stream.shutdown().await;
    Ok(sample)
}

/// Plain tokio sockets, a 4-byte little-endian length before each message,
/// no Courier code: the floor under the tcp and unix plugins.
pub(crate) async fn socket(
    kind: SocketKind,
    address: &str,
    payload: &[u8],
    spec: &Spec,
    polling: bool,
) -> CliResult<Figures> {
    socket_sample(kind, address, payload, spec, polling, &mut NoGate)
        .await?
        .figures(payload.len())
}

/// [`socket`], with `gate` opened between the warm-up and the measured loop.
pub(crate) async fn socket_sample(
    kind: SocketKind,
    address: &str,
    payload: &[u8],
    spec: &Spec,
    polling: bool,
    gate: &mut impl Gate,
) -> CliResult<Sample> {
    let rest = address
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(|| {
            Error::Peer(format!(
                "the socket peer printed a malformed address '{address}'"
            ))
        })?;
    match kind {
        SocketKind::Tcp => {
            let s = tokio::net::TcpStream::connect(rest)
                .await
                .map_err(|e| Error::io(format!("connect to {address}"), e))?;
            s.set_nodelay(true)
                .map_err(|e| Error::io(format!("set TCP_NODELAY on {address}"), e))?;
            socket_link(s, payload, spec, polling, gate).await
        }
        #[cfg(unix)]
        SocketKind::Unix => {
            let s = tokio::net::UnixStream::connect(rest)
                .await
                .map_err(|e| Error::io(format!("connect to {address}"), e))?;
            socket_link(s, payload, spec, polling, gate).await
        }
        #[cfg(not(unix))]
        SocketKind::Unix => Err(Error::Unsupported(
            "unix sockets are not available on this platform".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A link whose peer answers at once: checks the pipeline's accounting.
    struct Loopback {
        outstanding: usize,
        max_outstanding: usize,
        sent: u64,
    }

    impl Link for Loopback {
        async fn send(&mut self) -> CliResult {
            self.outstanding += 1;
            self.max_outstanding = self.max_outstanding.max(self.outstanding);
            self.sent += 1;
            Ok(())
        }

        async fn recv(&mut self) -> CliResult {
            if self.outstanding == 0 {
                return Err(Error::Peer("nothing outstanding".into()));
            }
            self.outstanding -= 1;
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipeline_keeps_n_outstanding_and_makes_every_call() {
        for (n, calls) in [(1, 10), (4, 100), (32, 10)] {
            let mut link = Loopback {
                outstanding: 0,
                max_outstanding: 0,
                sent: 0,
            };
            let (h, _) = pipeline(&mut link, n, calls, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(h.len(), calls);
            assert_eq!(link.sent, calls);
            assert_eq!(link.outstanding, 0);
            assert_eq!(link.max_outstanding, n.min(calls as usize));
        }
    }

    #[test]
    fn figures_from_a_histogram() {
        let mut h = histogram().unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let f = figures(&h, Duration::from_secs(2), 1 << 20).unwrap();
        assert!((f.p50_us - 500.0).abs() < 1.0, "{f:?}");
        assert!((f.p99_us - 990.0).abs() < 1.0, "{f:?}");
        assert!((f.p999_us - 999.0).abs() < 1.0, "{f:?}");
        assert!((f.rpcs_per_s - 500.0).abs() < 1e-9);
        assert!((f.mib_per_s - 500.0).abs() < 1e-9);
        assert_eq!(f.calls, 1000);
        assert!(figures(&histogram().unwrap(), Duration::from_secs(1), 0).is_err());
    }
}
