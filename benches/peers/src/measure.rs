//! One measurement, in the shape of `courier bench`'s engine layer: N tasks
//! on the (current-thread) runtime, each in a loop taking a ticket from a
//! shared counter, calling the sink and recording the call's duration in
//! its own HDR histogram (ns, 3 significant digits); the histograms are
//! merged. A warm-up with the same N comes first and is not recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::systems::Sink;

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub in_flight: usize,
    pub warmup: u64,
    pub calls: u64,
    /// No call starts after this (a safety net; not reached normally).
    pub time_cap: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rpcs_per_s: f64,
    pub calls: u64,
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

pub async fn measure<S: Sink>(sink: &S, payload: &Bytes, spec: &Spec) -> Result<Figures, String> {
    run(
        sink,
        payload,
        spec.in_flight,
        spec.warmup,
        spec.time_cap / 4,
    )
    .await?;
    let (h, elapsed) = run(sink, payload, spec.in_flight, spec.calls, spec.time_cap).await?;
    if h.is_empty() {
        return Err("no call completed".into());
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    Ok(Figures {
        p50_us: us(0.5),
        p99_us: us(0.99),
        rpcs_per_s: h.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        calls: h.len(),
    })
}

async fn run<S: Sink>(
    sink: &S,
    payload: &Bytes,
    in_flight: usize,
    calls: u64,
    cap: Duration,
) -> Result<(Histogram<u64>, Duration), String> {
    let tickets = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + cap;
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let mut sink = sink.clone();
        let payload = payload.clone();
        let tickets = tickets.clone();
        tasks.spawn(async move {
            let mut h = histogram()?;
            while tickets.fetch_add(1, Ordering::Relaxed) < calls {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                sink.call(&payload).await?;
                let ns = u64::try_from(t0.elapsed().as_nanos())
                    .unwrap_or(u64::MAX)
                    .max(1);
                h.saturating_record(ns);
            }
            Ok::<_, String>(h)
        });
    }
    let mut all = histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let h = joined.map_err(|e| format!("a calling task failed: {e}"))??;
        all.add(&h).map_err(|e| format!("histogram: {e}"))?;
    }
    Ok((all, start.elapsed()))
}
