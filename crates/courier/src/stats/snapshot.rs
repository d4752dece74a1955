//! Taking a [`Stats`] snapshot from the engine's records: each lock is held
//! only to copy what it guards (a side's tally, the table of records, the
//! table of connections), never across another.

use std::sync::atomic::Ordering;

use super::record::{Outcome, Recorder, Side};
use super::schema::{
    BulkStats, Latency, PeerStats, ProgressStats, ProviderStats, RpcStats, Settings, SideStats,
    Stats, StreamStats, SCHEMA,
};
use crate::admission::Providers;
use crate::state::EngineState;

/// Names of the server's phases, by slot.
const SERVED_PHASES: [&str; 3] = ["queue", "handler", "respond"];
/// Names of the caller's phases, by slot.
const CALLED_PHASES: [&str; 1] = ["round_trip"];

/// The snapshot of `state`'s statistics (`providers`: its providers'
/// limits).
pub(crate) fn collect(state: &EngineState, providers: &Providers) -> Stats {
    let rec: &Recorder = &state.stats;
    let config = &state.config;
    let mut rpcs: Vec<RpcStats> = rec
        .rpcs()
        .iter()
        .map(|r| RpcStats {
            name: r.name.to_string(),
            id: format!("{:#018x}", r.id),
            provider: r.provider,
            served: side(&r.server, &SERVED_PHASES, true),
            called: side(&r.client, &CALLED_PHASES, false),
        })
        .filter(|r| r.served.is_some() || r.called.is_some())
        .collect();
    rpcs.sort_by(|a, b| (&a.name, a.provider).cmp(&(&b.name, b.provider)));
    let mut peers: Vec<PeerStats> = state
        .live_conns()
        .iter()
        .map(|c| {
            let n = &c.counters;
            let sent = c.sent();
            PeerStats {
                address: c.remote().to_string(),
                connection: c.id,
                messages_in: n.messages_in.load(Ordering::Relaxed),
                bytes_in: n.bytes_in.load(Ordering::Relaxed),
                messages_out: sent.0,
                bytes_out: sent.1,
                requests: n.requests.load(Ordering::Relaxed),
                requests_in_flight: n
                    .requests_in_flight(c.limits.in_flight(config.max_in_flight_per_connection)),
                peak_requests_in_flight: n.peak_in_flight.load(Ordering::Relaxed),
                calls_in_flight: c.calls_in_flight(),
                errors_sent: n.errors_sent.load(Ordering::Relaxed),
                errors_received: n.errors_received.load(Ordering::Relaxed),
                limit_waits: n.limit_waits.load(Ordering::Relaxed),
            }
        })
        .collect();
    peers.sort_by_key(|p| p.connection);
    let b = &rec.bulk;
    let moved = b.bytes_pulled.load(Ordering::Relaxed) + b.bytes_pushed.load(Ordering::Relaxed);
    let busy_ns = b.busy_ns.load(Ordering::Relaxed);
    let (short_parks, short_parks_us) = state.progress.short_parks();
    Stats {
        schema: SCHEMA,
        protocol: state.paths.name().to_owned(),
        address: state
            .self_addr
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        uptime_ms: u64::try_from(rec.since.elapsed().as_millis()).unwrap_or(u64::MAX),
        counters: rec.counting,
        timing: rec.timing,
        settings: Settings {
            progress_spin_us: config.progress_spin_us,
            progress_spin_busy_us: config.progress_spin_busy_us,
            use_progress_thread: config.use_progress_thread,
            rpc_thread_count: config.rpc_thread_count,
            max_in_flight_per_connection: config.max_in_flight_per_connection,
            max_queued_response_bytes: config.max_queued_response_bytes,
        },
        progress: ProgressStats {
            messages_in: peers_total(state),
            parks: state.progress.parks(),
            short_parks,
            short_parks_us,
        },
        rpcs,
        unknown_rpc_requests: rec.unknown_rpcs.load(Ordering::Relaxed),
        providers: providers_stats(providers),
        peers,
        bulk: BulkStats {
            transfers: b.transfers.load(Ordering::Relaxed),
            failed: b.failed.load(Ordering::Relaxed),
            bytes_pulled: b.bytes_pulled.load(Ordering::Relaxed),
            bytes_pushed: b.bytes_pushed.load(Ordering::Relaxed),
            mib_per_s: if busy_ns == 0 {
                0.0
            } else {
                moved as f64 / (1024.0 * 1024.0) / (busy_ns as f64 / 1e9)
            },
            regions: state.bulk.regions() as u64,
            held_responses: state.bulk.held() as u64,
            payloads_sent: b.payloads_sent.load(Ordering::Relaxed),
            payloads_received: b.payloads_received.load(Ordering::Relaxed),
            payloads_refused: b.payloads_refused.load(Ordering::Relaxed),
        },
        streams: {
            let s = &rec.streams;
            StreamStats {
                open: s.open.load(Ordering::Relaxed),
                buffered_bytes: s.buffered.load(Ordering::Relaxed),
                items_in: s.items_in.load(Ordering::Relaxed),
                items_out: s.items_out.load(Ordering::Relaxed),
            }
        },
    }
}

/// Messages received on every connection since the engine started (the
/// connections that closed included).
fn peers_total(state: &EngineState) -> u64 {
    state.stats.messages_in()
        + state
            .live_conns()
            .iter()
            .map(|c| c.counters.messages_in.load(Ordering::Relaxed))
            .sum::<u64>()
}

/// One side's statistics; `None` if it never started anything. `served`:
/// the server's side, whose requests may wait for their handler.
fn side(s: &Side, phases: &[&str], served: bool) -> Option<SideStats> {
    // Before `calls`, and outside the tally's lock (it takes it): the
    // requests counted here arrived before those counted below.
    let waiting = if served { s.waiting() } else { 0 };
    let calls = s.started();
    if calls == 0 {
        return None;
    }
    Some(s.read(|t| {
        let in_flight = calls.saturating_sub(t.finished);
        SideStats {
            calls,
            in_flight,
            waiting: waiting.min(in_flight),
            ok: t.outcomes[Outcome::Ok as usize],
            errors: t
                .outcomes
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| {
                    let kind = Outcome::from_u8(u8::try_from(i).unwrap_or(0));
                    (kind.name().to_owned(), *n)
                })
                .collect(),
            bytes_in: t.bytes_in,
            bytes_out: t.bytes_out,
            phases: phases
                .iter()
                .zip(&t.phases)
                .filter_map(|(name, h)| Some(((*name).to_owned(), Latency::of(h.as_deref()?))))
                .collect(),
        }
    }))
}

fn providers_stats(providers: &Providers) -> Vec<ProviderStats> {
    providers.describe()
}
