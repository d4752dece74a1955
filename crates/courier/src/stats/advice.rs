//! Advice from the figures: which setting to change, and why.
//!
//! [`Stats::advise`] runs the rules below over one snapshot and returns an
//! [`Advice`] for each one that matches: a stable [`code`](Advice::code),
//! the figures that triggered it ([`finding`](Advice::finding)) and the
//! setting that changes it ([`setting`](Advice::setting): the JSON key,
//! the builder method and, where there is one, the `courier serve` flag).
//! Warnings come first. The thresholds are the constants of this module;
//! `docs/observability.md` ("Advice") says the same for users.
//!
//! A snapshot holds counters since the engine started and gauges of the
//! moment it was taken; the rules read both, and none compares two
//! snapshots. They decide as follows.
//!
//! * [`QUEUED_BEHIND_HANDLERS`]: requests wait for their handler to start.
//!   *Timed* (`stats.timing` on), per RPC: over at least
//!   [`TIMED_MIN_REQUESTS`] requests, the mean of the served `queue` phase
//!   (arrival to handler start) is at least [`QUEUE_MIN_US`] and longer
//!   than the mean of the `handler` phase: requests wait longer than
//!   handlers run (a warning). *Now*, engine-wide: at least
//!   [`WAITING_MIN`] requests are waiting for their handler to start
//!   (`waiting`, less those waiting for their provider's turn, which is
//!   the provider's limit at work) while more requests are in flight than
//!   there are handler threads (`rpc_thread_count`, at least one): the
//!   handlers that run hold every thread, and the rest queue behind them
//!   (information: a snapshot is one moment). RPCs of providers with a
//!   pool of their own are left out of the engine-wide count (their pool
//!   has threads of its own).
//! * [`PROVIDER_SHEDS_LOAD`]: a provider refused requests with `Busy`
//!   past its `max_running` and `max_queued`, or dropped one-way requests
//!   (a warning); on the calling side, calls answered `Busy`
//!   (information).
//! * [`PARKS_UNDER_STEADY_STREAM`]: after at least
//!   [`STREAM_MIN_MESSAGES`] messages, the polling loop parked and was
//!   woken by a message within [`SHORT_PARK_US`]
//!   for at least [`SHORT_PARK_SHARE`] of the messages received: the
//!   window (`progress_spin_us`) closes just before the next message of a
//!   stream, which then pays a wake-up. With `progress_spin_us = 0` no
//!   park is counted; then the rule matches when messages came at
//!   [`SPIN_OFF_MIN_RATE`] a second or more on average since the engine
//!   started. Information: polling longer costs a core.
//! * [`CONNECTION_NEAR_IN_FLIGHT_LIMIT`]: a connection had
//!   `max_in_flight_per_connection` requests in flight at once, so its
//!   reader stopped (a warning when it did stop, `limit_waits` > 0;
//!   information when the peak only touched the limit).
//!   [`CONNECTION_OVER_RESPONSE_BUDGET`]: a connection's reader stopped
//!   (`limit_waits` > 0) below that limit, so for the answers queued for
//!   the peer (`max_queued_response_bytes`): the peer reads its answers
//!   slower than it sends requests.
//! * [`DEADLINE_ERRORS`]: at least [`DEADLINE_SHARE`] of an RPC's calls
//!   (or served requests) ended past their deadline.
//! * [`UNKNOWN_RPC`]: peers asked for RPCs not registered here
//!   (`unknown_rpc_requests`), or calls from here were answered "no such
//!   RPC".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::schema::{PeerStats, ProviderStats, RpcStats, SideStats, Stats, SHORT_PARK_US};

/// Code: requests wait for their handler to start (too few handler
/// threads, or handlers that hold up the progress loop).
pub const QUEUED_BEHIND_HANDLERS: &str = "queued_behind_handlers";
/// Code: a provider refused requests with `Busy` (load shed).
pub const PROVIDER_SHEDS_LOAD: &str = "provider_sheds_load";
/// Code: the polling loop parks between the messages of a steady stream.
pub const PARKS_UNDER_STEADY_STREAM: &str = "parks_under_steady_stream";
/// Code: a connection reached `max_in_flight_per_connection`.
pub const CONNECTION_NEAR_IN_FLIGHT_LIMIT: &str = "connection_near_in_flight_limit";
/// Code: a connection stopped being read while its queued answers were
/// over `max_queued_response_bytes`.
pub const CONNECTION_OVER_RESPONSE_BUDGET: &str = "connection_over_response_budget";
/// Code: calls or requests ended past their deadline.
pub const DEADLINE_ERRORS: &str = "deadline_errors";
/// Code: RPCs asked for that are not registered where they were asked.
pub const UNKNOWN_RPC: &str = "unknown_rpc";

/// [`QUEUED_BEHIND_HANDLERS`], timed: the mean `queue` phase must be at
/// least this long (microseconds) to count. Below it, a wait is the
/// ordinary cost of handing a request to a handler (a wake-up is 25-30 µs
/// on a virtual machine).
pub const QUEUE_MIN_US: f64 = 100.0;
/// [`QUEUED_BEHIND_HANDLERS`], timed: requests timed before the rule
/// judges an RPC.
pub const TIMED_MIN_REQUESTS: u64 = 3;
/// [`QUEUED_BEHIND_HANDLERS`], now: requests waiting for their handler to
/// start (provider queues left out) before the rule matches. One can be
/// caught between its arrival and its handler's first poll on any busy
/// engine.
pub const WAITING_MIN: u64 = 2;
/// [`PARKS_UNDER_STEADY_STREAM`]: messages received before the rule
/// judges.
pub const STREAM_MIN_MESSAGES: u64 = 100;
/// [`PARKS_UNDER_STEADY_STREAM`]: the share of the messages received that
/// came after a short park (a polling window that closed just before it).
pub const SHORT_PARK_SHARE: f64 = 0.5;
/// [`PARKS_UNDER_STEADY_STREAM`] with polling off (`progress_spin_us =
/// 0`): messages a second, on average since the engine started (one every
/// millisecond: gaps as short as [`SHORT_PARK_US`]).
pub const SPIN_OFF_MIN_RATE: f64 = 1000.0;
/// [`DEADLINE_ERRORS`]: the share of an RPC's calls (or requests) that
/// ended past their deadline.
pub const DEADLINE_SHARE: f64 = 0.05;

/// How much a piece of advice matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Costs callers time or errors now.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Warning => "warning",
        })
    }
}

/// One piece of advice: what the figures show, and the setting that
/// changes it.
///
/// Displays as one paragraph, for people: severity, subject, finding, then
/// `change:` and the setting, and the code in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Advice {
    /// A stable code for scripts (`queued_behind_handlers`, …: the
    /// constants of this module).
    pub code: String,
    /// How much it matters.
    pub severity: Severity,
    /// What it is about: an RPC (`name@provider`), a provider, a peer.
    pub subject: String,
    /// What the figures show.
    pub finding: String,
    /// The setting that changes it, and how.
    pub setting: String,
}

impl Advice {
    fn new(
        code: &str,
        severity: Severity,
        subject: impl Into<String>,
        finding: impl Into<String>,
        setting: impl Into<String>,
    ) -> Self {
        Self {
            code: code.to_owned(),
            severity,
            subject: subject.into(),
            finding: finding.into(),
            setting: setting.into(),
        }
    }
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {} change: {} [{}]",
            self.severity, self.subject, self.finding, self.setting, self.code
        )
    }
}

impl Stats {
    /// Advice on the engine's settings from these figures ([`Advice`]):
    /// handlers queued behind too few threads, a provider that sheds load,
    /// a polling policy that parks under a steady stream, a connection at
    /// its in-flight limit, calls past their deadline, calls to RPCs that
    /// are not there. Empty when nothing stands out; warnings first. How
    /// each rule decides is in the [module's documentation](self), and in
    /// `docs/observability.md` ("Advice").
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> courier::Result<()> {
    /// let engine = courier::Engine::new("unix").await?;
    /// for advice in engine.stats().advise() {
    ///     // Severity, subject, finding, "change:" and the setting, [code].
    ///     println!("{advice}");
    /// }
    /// assert!(engine.stats().advise().is_empty(), "an idle engine");
    /// # engine.finalize().await; Ok(()) }
    /// ```
    pub fn advise(&self) -> Vec<Advice> {
        advise(self)
    }
}

fn advise(stats: &Stats) -> Vec<Advice> {
    let mut out = Vec::new();
    queued_behind_handlers(stats, &mut out);
    provider_sheds_load(stats, &mut out);
    parks_under_steady_stream(stats, &mut out);
    for peer in &stats.peers {
        connection_limits(stats, peer, &mut out);
    }
    deadline_errors(stats, &mut out);
    unknown_rpc(stats, &mut out);
    // Warnings first; within a severity, the rules' order (stable sort).
    out.sort_by_key(|a| std::cmp::Reverse(a.severity));
    out
}

/// `name@provider`.
fn subject(rpc: &RpcStats) -> String {
    format!("{}@{}", rpc.name, rpc.provider)
}

/// A duration in microseconds, for people.
fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

/// `n thing` or `n things`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn provider_of(stats: &Stats, id: u16) -> Option<&ProviderStats> {
    stats.providers.iter().find(|p| p.provider == id)
}

/// What changes where handlers run: more threads, a pool, or handlers
/// that do not block the thread they are polled on. `provider`: the
/// provider concerned, if one is.
fn thread_setting(stats: &Stats, provider: Option<&ProviderStats>) -> String {
    let s = &stats.settings;
    let mut parts = Vec::new();
    if let Some(pool) = provider.and_then(|p| p.pool.as_deref()) {
        parts.push(format!(
            "give pool '{pool}' more threads (`pools.{pool}.threads` in the JSON \
             configuration, `EngineBuilder::pool`)"
        ));
    } else if s.rpc_thread_count == 0 {
        let progress = if s.use_progress_thread {
            String::new()
        } else {
            " with a progress thread (`use_progress_thread`: `EngineBuilder::use_progress_thread`, \
             `courier serve --progress-thread`), so that requests are read while handlers run"
                .to_owned()
        };
        parts.push(format!(
            "run handlers on threads of their own: `rpc_thread_count` (JSON configuration; \
             `EngineBuilder::num_rpc_threads`, `courier serve --num-rpc-threads N`; now 0, \
             the progress loop){progress}"
        ));
    } else {
        parts.push(format!(
            "raise `rpc_thread_count` (now {}; `EngineBuilder::num_rpc_threads`, \
             `courier serve --num-rpc-threads N`)",
            s.rpc_thread_count
        ));
    }
    if let Some(p) = provider {
        if let Some(max) = p.max_running {
            parts.push(format!(
                "raise provider {}'s `max_running` (now {max}) if its handlers can run side by side",
                p.provider
            ));
        }
    }
    if provider.is_none_or(|p| p.pool.is_none()) {
        parts.push(
            "give a busy provider a pool of its own (`providers.\"ID\".pool` and `pools`: \
             `ProviderOptions::pool`, `EngineBuilder::pool`)"
                .to_owned(),
        );
    }
    let mut text = parts.join("; or ");
    text.push_str(
        ". A handler that blocks the thread it runs on (sleeps, waits on a lock, computes \
         for long) in an async handler holds up every request behind it: register it with \
         the blocking API (`courier::blocking`) or move the work to \
         `tokio::task::spawn_blocking`.",
    );
    text
}

/// Rule 1: handlers queued behind a blocked progress loop or too few
/// handler threads.
fn queued_behind_handlers(stats: &Stats, out: &mut Vec<Advice>) {
    // Timed, per RPC: requests wait longer than handlers run.
    for rpc in &stats.rpcs {
        let Some(served) = &rpc.served else { continue };
        let (Some(queue), Some(handler)) = (served.phase("queue"), served.phase("handler")) else {
            continue;
        };
        if queue.count >= TIMED_MIN_REQUESTS
            && queue.mean_us >= QUEUE_MIN_US
            && queue.mean_us > handler.mean_us
        {
            out.push(Advice::new(
                QUEUED_BEHIND_HANDLERS,
                Severity::Warning,
                subject(rpc),
                format!(
                    "its requests waited {} on average (p99 {}) before their handler started, \
                     longer than its handlers ran ({} on average), over {}.",
                    us(queue.mean_us),
                    us(queue.p99_us),
                    us(handler.mean_us),
                    count(queue.count, "request", "requests"),
                ),
                thread_setting(stats, provider_of(stats, rpc.provider)),
            ));
        }
    }
    // Now, engine-wide: more requests in flight than threads, and some of
    // them waiting for one.
    let pooled: BTreeSet<u16> = stats
        .providers
        .iter()
        .filter(|p| p.pool.is_some())
        .map(|p| p.provider)
        .collect();
    let mut in_flight = 0;
    let mut waiting = 0;
    let mut by_rpc = Vec::new();
    for rpc in stats.rpcs.iter().filter(|r| !pooled.contains(&r.provider)) {
        if let Some(served) = &rpc.served {
            in_flight += served.in_flight;
            waiting += served.waiting;
            if served.waiting > 0 {
                by_rpc.push(format!("{} {}", subject(rpc), served.waiting));
            }
        }
    }
    let provider_queued: u64 = stats
        .providers
        .iter()
        .filter(|p| p.pool.is_none())
        .map(|p| p.queued as u64)
        .sum();
    let waiting = waiting.saturating_sub(provider_queued);
    let threads = stats.settings.rpc_thread_count.max(1) as u64;
    if waiting >= WAITING_MIN && in_flight > threads {
        let threads_text = if stats.settings.rpc_thread_count == 0 {
            "handlers run on the progress loop (`rpc_thread_count` 0)".to_owned()
        } else {
            format!("{} run handlers", count(threads, "thread", "threads"))
        };
        let queued_text = if provider_queued > 0 {
            format!(", besides {provider_queued} waiting for their provider's turn")
        } else {
            String::new()
        };
        out.push(Advice::new(
            QUEUED_BEHIND_HANDLERS,
            Severity::Info,
            "handlers",
            format!(
                "{} in flight now, {waiting} of them waiting for their handler to start \
                 ({}){queued_text}; {threads_text}.",
                count(in_flight, "request", "requests"),
                by_rpc.join(", "),
            ),
            thread_setting(stats, None),
        ));
    }
}

/// Rule 2: a provider that sheds load; calls from here that were shed.
fn provider_sheds_load(stats: &Stats, out: &mut Vec<Advice>) {
    for p in &stats.providers {
        if p.refused == 0 && p.dropped == 0 {
            continue;
        }
        let by_rpc: Vec<String> = stats
            .rpcs
            .iter()
            .filter(|r| r.provider == p.provider)
            .filter_map(|r| {
                let busy = r.served.as_ref()?.errors_of("busy");
                (busy > 0).then(|| format!("{} {busy}", r.name))
            })
            .collect();
        let by_rpc = if by_rpc.is_empty() {
            String::new()
        } else {
            format!(" (by RPC: {})", by_rpc.join(", "))
        };
        let dropped = if p.dropped > 0 {
            format!(
                " and dropped {}",
                count(p.dropped, "one-way request", "one-way requests")
            )
        } else {
            String::new()
        };
        let running = p
            .max_running
            .map_or_else(|| "no bound".to_owned(), |m| m.to_string());
        out.push(Advice::new(
            PROVIDER_SHEDS_LOAD,
            Severity::Warning,
            format!("provider {}", p.provider),
            format!(
                "it refused {} with Busy{by_rpc}{dropped} past its limits: max_running \
                 {running}, max_queued {} ({} running and {} queued now).",
                count(p.refused, "request", "requests"),
                p.max_queued,
                p.running,
                p.queued,
            ),
            format!(
                "raise its `max_running` or `max_queued` (`providers.\"{id}\"` in the JSON \
                 configuration; `EngineBuilder::provider({id}, ProviderOptions::limits(running, \
                 queued))`) if the machine has room for more at once, or give it a pool of its \
                 own (`providers.\"{id}\".pool` and `pools`) so that its handlers do not wait \
                 for the others'. A caller that gets Busy may retry later: the request did not \
                 run.",
                id = p.provider
            ),
        ));
    }
    for rpc in &stats.rpcs {
        let Some(called) = &rpc.called else { continue };
        let busy = called.errors_of("busy");
        if busy == 0 {
            continue;
        }
        out.push(Advice::new(
            PROVIDER_SHEDS_LOAD,
            Severity::Info,
            subject(rpc),
            format!(
                "{} of {} from here were refused with Busy by the provider at the peer.",
                busy,
                count(called.calls, "call", "calls"),
            ),
            format!(
                "the peer's provider {} is at its limits (`max_running`, `max_queued`): raise \
                 them there (`courier stats ADDR` on the peer shows them), or make fewer calls \
                 at once from here and retry refused ones later.",
                rpc.provider
            ),
        ));
    }
}

/// Rule 3: the polling policy parks under a steady stream.
fn parks_under_steady_stream(stats: &Stats, out: &mut Vec<Advice>) {
    let spin = stats.settings.progress_spin_us;
    let p = &stats.progress;
    if p.messages_in < STREAM_MIN_MESSAGES {
        return;
    }
    let setting = |suggest: u64| {
        format!(
            "raise `progress_spin_us` (JSON configuration; `EngineBuilder::progress_spin`; \
             `courier serve --config '{{\"progress_spin_us\": {suggest}}}'`) above the gap, to \
             about {suggest} µs, if keeping a core polling that long after each message is \
             worth the latency it saves."
        )
    };
    if spin > 0 {
        if p.short_parks == 0 || (p.short_parks as f64) < SHORT_PARK_SHARE * p.messages_in as f64 {
            return;
        }
        let gap = p.short_parks_us / p.short_parks;
        let suggest = (gap * 2).clamp(spin + 1, SHORT_PARK_US).max(10);
        out.push(Advice::new(
            PARKS_UNDER_STEADY_STREAM,
            Severity::Info,
            "progress loop",
            format!(
                "{} of {} received came less than {SHORT_PARK_US} µs after the engine had \
                 stopped polling ({gap} µs after, on average): the polling window \
                 (`progress_spin_us` {spin}) closes just before the next message of a steady \
                 stream, and each such message pays a wake-up (25-30 µs on a virtual \
                 machine).",
                p.short_parks,
                count(p.messages_in, "message", "messages"),
            ),
            setting(suggest),
        ));
    } else {
        if stats.uptime_ms == 0 {
            return;
        }
        let rate = p.messages_in as f64 / (stats.uptime_ms as f64 / 1000.0);
        if rate < SPIN_OFF_MIN_RATE {
            return;
        }
        out.push(Advice::new(
            PARKS_UNDER_STEADY_STREAM,
            Severity::Info,
            "progress loop",
            format!(
                "polling is off (`progress_spin_us` 0) and {} came, {rate:.0} a second on \
                 average: the engine parks as soon as it is idle, and each message of a \
                 stream pays a wake-up (25-30 µs on a virtual machine).",
                count(p.messages_in, "message", "messages"),
            ),
            setting(crate::config::DEFAULT_PROGRESS_SPIN_US),
        ));
    }
}

/// Rule 4: a connection at its in-flight limit, or over its budget of
/// queued answers.
fn connection_limits(stats: &Stats, peer: &PeerStats, out: &mut Vec<Advice>) {
    let max = stats.settings.max_in_flight_per_connection;
    let at_limit = max > 0 && peer.peak_requests_in_flight >= max;
    if peer.limit_waits == 0 && !at_limit {
        return;
    }
    let subject = format!("peer {} (connection {})", peer.address, peer.connection);
    let stopped = count(peer.limit_waits, "time", "times");
    if at_limit {
        let (severity, reading) = if peer.limit_waits > 0 {
            (
                Severity::Warning,
                format!("its requests waited unread (backpressure) {stopped} until one ended"),
            )
        } else {
            (
                Severity::Info,
                "one more would have waited unread".to_owned(),
            )
        };
        out.push(Advice::new(
            CONNECTION_NEAR_IN_FLIGHT_LIMIT,
            severity,
            subject,
            format!(
                "{} of its requests were in flight at once ({} now), the connection's limit \
                 (`max_in_flight_per_connection` {max}): {reading}.",
                peer.peak_requests_in_flight, peer.requests_in_flight,
            ),
            format!(
                "raise `max_in_flight_per_connection` (JSON configuration; \
                 `EngineBuilder::config_json`, `courier serve --config \
                 '{{\"max_in_flight_per_connection\": {}}}'`) if this engine can run more at \
                 once. The peer may also be sending more than this engine can run: then fewer \
                 calls in flight from it, or more handler threads here (see \
                 `{QUEUED_BEHIND_HANDLERS}`).",
                max.saturating_mul(2)
            ),
        ));
    } else {
        out.push(Advice::new(
            CONNECTION_OVER_RESPONSE_BUDGET,
            Severity::Warning,
            subject,
            format!(
                "the engine stopped reading its requests {stopped} while the answers queued \
                 for it were over their budget (`max_queued_response_bytes` {} bytes), below \
                 the in-flight limit: the peer reads its answers slower than it sends \
                 requests.",
                stats.settings.max_queued_response_bytes
            ),
            "raise `max_queued_response_bytes` (JSON configuration; `courier serve --config \
             '{\"max_queued_response_bytes\": N}'`) if the answers are large and the peer \
             reads them in time; otherwise the peer should read its answers before it sends \
             more."
                .to_owned(),
        ));
    }
}

/// Rule 5: calls or requests that ended past their deadline.
fn deadline_errors(stats: &Stats, out: &mut Vec<Advice>) {
    let past = |side: &SideStats| {
        let n = side.errors_of("deadline");
        (n > 0 && n as f64 >= DEADLINE_SHARE * side.calls as f64).then_some(n)
    };
    for rpc in &stats.rpcs {
        if let Some(n) = rpc.called.as_ref().and_then(|c| past(c).map(|n| (n, c))) {
            let (n, called) = n;
            let round_trip = called
                .phase("round_trip")
                .map(|l| format!(" (round trips: p50 {}, p99 {})", us(l.p50_us), us(l.p99_us)))
                .unwrap_or_default();
            out.push(Advice::new(
                DEADLINE_ERRORS,
                Severity::Warning,
                subject(rpc),
                format!(
                    "{n} of {} from here ended past {} deadline{round_trip}.",
                    count(called.calls, "call", "calls"),
                    if n == 1 { "its" } else { "their" },
                ),
                "a longer timeout for this RPC (`timeouts.call_ms` in the JSON configuration, \
                 `EngineBuilder::call_timeout`, `RemoteFunction::timeout`, \
                 `Callable::timeout`), or a faster server: its statistics (`courier stats \
                 ADDR`, with timing on) show whether requests wait in its queue or in their \
                 handler.",
            ));
        }
        if let Some(n) = rpc.served.as_ref().and_then(|s| past(s).map(|n| (n, s))) {
            let (n, served) = n;
            let phases: Vec<String> = ["queue", "handler"]
                .iter()
                .filter_map(|p| {
                    let l = served.phase(p)?;
                    Some(format!("{p} p50 {}, p99 {}", us(l.p50_us), us(l.p99_us)))
                })
                .collect();
            let phases = if phases.is_empty() {
                String::new()
            } else {
                format!(" (timed: {})", phases.join("; "))
            };
            out.push(Advice::new(
                DEADLINE_ERRORS,
                Severity::Warning,
                subject(rpc),
                format!(
                    "{n} of {} here ended past {}: the {} given up, and the work was \
                     wasted{phases}.",
                    count(served.calls, "request", "requests"),
                    if n == 1 {
                        "its caller's deadline"
                    } else {
                        "their callers' deadlines"
                    },
                    if n == 1 { "caller had" } else { "callers had" },
                ),
                format!(
                    "this engine takes longer than its callers wait: the `queue` and `handler` \
                     phases (timing on: `stats.timing`, `EngineBuilder::stats_timing`) say \
                     where the time goes (see `{QUEUED_BEHIND_HANDLERS}`), or the callers may \
                     set longer timeouts."
                ),
            ));
        }
    }
}

/// Rule 6: RPCs asked for where they are not registered.
fn unknown_rpc(stats: &Stats, out: &mut Vec<Advice>) {
    if stats.unknown_rpc_requests > 0 {
        out.push(Advice::new(
            UNKNOWN_RPC,
            Severity::Warning,
            "RPCs not registered here",
            format!(
                "peers sent {} for RPCs (or providers) not registered on this engine; each \
                 was answered \"no such RPC\".",
                count(stats.unknown_rpc_requests, "request", "requests"),
            ),
            "register the RPC at the provider the callers name (`Engine::register`, \
             `Engine::register_with` and `RpcOptions::provider`), or correct the callers' RPC \
             name, provider id or address (their own statistics name the RPC they called).",
        ));
    }
    let mut by_rpc: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for rpc in &stats.rpcs {
        if let Some(called) = &rpc.called {
            let n = called.errors_of("no_such_rpc");
            if n > 0 {
                by_rpc.insert(subject(rpc), (n, called.calls));
            }
        }
    }
    for (subject, (n, calls)) in by_rpc {
        out.push(Advice::new(
            UNKNOWN_RPC,
            Severity::Warning,
            subject.clone(),
            format!(
                "{n} of {} from here were answered \"no such RPC\": the peer does not register \
                 {subject}.",
                count(calls, "call", "calls")
            ),
            "check the RPC's name, the provider id and the address the calls go to, or \
             register the RPC at that provider on the peer.",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::record::new_histogram;
    use crate::stats::schema::{BulkStats, Latency, ProgressStats, Settings, SCHEMA};

    /// An engine that did nothing, with the default settings.
    fn idle() -> Stats {
        Stats {
            schema: SCHEMA,
            protocol: "unix".into(),
            address: "unix:///tmp/x.sock".into(),
            uptime_ms: 10_000,
            counters: true,
            timing: false,
            settings: Settings {
                progress_spin_us: 50,
                progress_spin_busy_us: 1000,
                use_progress_thread: false,
                rpc_thread_count: 0,
                max_in_flight_per_connection: 1024,
                max_queued_response_bytes: 64 << 20,
            },
            progress: ProgressStats::default(),
            rpcs: Vec::new(),
            unknown_rpc_requests: 0,
            providers: Vec::new(),
            peers: Vec::new(),
            bulk: BulkStats {
                transfers: 0,
                failed: 0,
                bytes_pulled: 0,
                bytes_pushed: 0,
                mib_per_s: 0.0,
                regions: 0,
                held_responses: 0,
                payloads_sent: 0,
                payloads_received: 0,
                payloads_refused: 0,
            },
            streams: Default::default(),
        }
    }

    fn side(calls: u64) -> SideStats {
        SideStats {
            calls,
            in_flight: 0,
            waiting: 0,
            ok: calls,
            errors: BTreeMap::new(),
            bytes_in: 0,
            bytes_out: 0,
            phases: BTreeMap::new(),
        }
    }

    fn rpc(
        name: &str,
        provider: u16,
        served: Option<SideStats>,
        called: Option<SideStats>,
    ) -> RpcStats {
        RpcStats {
            name: name.into(),
            id: "0x0".into(),
            provider,
            served,
            called,
        }
    }

    fn latency(us: &[u64]) -> Latency {
        let mut h = new_histogram();
        for v in us {
            h.record(v * 1000).unwrap();
        }
        Latency::of(&h)
    }

    fn peer(peak: usize, waits: u64) -> PeerStats {
        PeerStats {
            address: "unix:///tmp/c.sock".into(),
            connection: 1,
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
            requests: 0,
            requests_in_flight: 0,
            peak_requests_in_flight: peak,
            calls_in_flight: 0,
            errors_sent: 0,
            errors_received: 0,
            limit_waits: waits,
        }
    }

    fn provider(id: u16, refused: u64) -> ProviderStats {
        ProviderStats {
            provider: id,
            max_running: Some(1),
            max_queued: 0,
            pool: None,
            running: 1,
            queued: 0,
            refused,
            dropped: 0,
        }
    }

    fn codes(stats: &Stats) -> Vec<String> {
        stats.advise().into_iter().map(|a| a.code).collect()
    }

    #[test]
    fn an_idle_engine_gets_no_advice() {
        assert!(idle().advise().is_empty());
    }

    #[test]
    fn requests_that_wait_longer_than_handlers_run_are_queued_behind_them() {
        let mut s = idle();
        s.timing = true;
        let mut served = side(3);
        served
            .phases
            .insert("queue".into(), latency(&[5, 2000, 4000]));
        served
            .phases
            .insert("handler".into(), latency(&[3000, 10, 10]));
        s.rpcs.push(rpc("work", 0, Some(served.clone()), None));
        let advice = s.advise();
        assert_eq!(advice.len(), 1, "{advice:?}");
        let a = &advice[0];
        assert_eq!(
            (a.code.as_str(), a.severity, a.subject.as_str()),
            (QUEUED_BEHIND_HANDLERS, Severity::Warning, "work@0")
        );
        assert!(a.setting.contains("rpc_thread_count"), "{}", a.setting);
        assert!(a.setting.contains("use_progress_thread"), "{}", a.setting);
        assert!(a.setting.contains("courier::blocking"), "{}", a.setting);

        // Handlers that run longer than requests wait: nothing.
        served
            .phases
            .insert("queue".into(), latency(&[500, 500, 500]));
        served
            .phases
            .insert("handler".into(), latency(&[900, 900, 900]));
        s.rpcs[0].served = Some(served.clone());
        assert!(s.advise().is_empty());
        // Waits too short to matter: nothing.
        served.phases.insert("queue".into(), latency(&[50, 50, 50]));
        served.phases.insert("handler".into(), latency(&[1, 1, 1]));
        s.rpcs[0].served = Some(served.clone());
        assert!(s.advise().is_empty());
        // Too few requests to judge.
        served.phases.insert("queue".into(), latency(&[5000, 5000]));
        served.phases.insert("handler".into(), latency(&[1, 1]));
        s.rpcs[0].served = Some(served);
        assert!(s.advise().is_empty());
    }

    #[test]
    fn requests_waiting_for_busy_threads_now_are_queued_behind_handlers() {
        let mut s = idle();
        s.settings.rpc_thread_count = 2;
        let mut served = side(10);
        served.in_flight = 4;
        served.waiting = 2;
        s.rpcs.push(rpc("work", 0, Some(served.clone()), None));
        let advice = s.advise();
        assert_eq!(codes(&s), [QUEUED_BEHIND_HANDLERS]);
        assert_eq!(advice[0].severity, Severity::Info);
        assert!(
            advice[0].finding.contains("work@0 2"),
            "{}",
            advice[0].finding
        );
        assert!(advice[0].setting.contains("now 2"), "{}", advice[0].setting);

        // One waiting: it may be on its way to a thread.
        served.waiting = 1;
        s.rpcs[0].served = Some(served.clone());
        assert!(s.advise().is_empty());
        // Waiting for their provider's turn: the provider's limit at work.
        served.waiting = 2;
        s.rpcs[0].served = Some(served.clone());
        let mut p = provider(0, 0);
        p.queued = 2;
        s.providers.push(p.clone());
        assert!(s.advise().is_empty());
        // On a pool of their own: not the engine's threads.
        p.queued = 0;
        p.pool = Some("storage".into());
        s.providers[0] = p;
        assert!(s.advise().is_empty());
        // No more in flight than threads.
        s.providers.clear();
        served.in_flight = 2;
        s.rpcs[0].served = Some(served);
        assert!(s.advise().is_empty());
    }

    #[test]
    fn a_provider_that_refused_requests_sheds_load() {
        let mut s = idle();
        s.providers.push(provider(3, 0));
        assert!(s.advise().is_empty(), "limits alone are no advice");
        s.providers[0].refused = 4;
        let mut served = side(5);
        served.errors.insert("busy".into(), 4);
        s.rpcs.push(rpc("store", 3, Some(served), None));
        let advice = s.advise();
        assert_eq!(codes(&s), [PROVIDER_SHEDS_LOAD]);
        assert_eq!(advice[0].subject, "provider 3");
        assert!(
            advice[0].finding.contains("refused 4 requests"),
            "{}",
            advice[0].finding
        );
        assert!(
            advice[0].finding.contains("store 4"),
            "{}",
            advice[0].finding
        );
        assert!(
            advice[0].setting.contains("max_running"),
            "{}",
            advice[0].setting
        );
        // Dropped one-way requests count too.
        s.providers[0].refused = 0;
        s.providers[0].dropped = 1;
        assert_eq!(codes(&s), [PROVIDER_SHEDS_LOAD]);
    }

    #[test]
    fn calls_refused_busy_are_told_to_the_caller() {
        let mut s = idle();
        let mut called = side(2);
        called.errors.insert("busy".into(), 1);
        s.rpcs.push(rpc("store", 3, None, Some(called)));
        let advice = s.advise();
        assert_eq!(codes(&s), [PROVIDER_SHEDS_LOAD]);
        assert_eq!(
            (advice[0].severity, advice[0].subject.as_str()),
            (Severity::Info, "store@3")
        );
    }

    #[test]
    fn short_parks_under_a_stream_say_to_poll_longer() {
        let mut s = idle();
        s.settings.progress_spin_us = 1;
        s.progress = ProgressStats {
            messages_in: 1000,
            parks: 990,
            short_parks: 900,
            short_parks_us: 900 * 80,
        };
        let advice = s.advise();
        assert_eq!(codes(&s), [PARKS_UNDER_STEADY_STREAM]);
        assert!(
            advice[0].finding.contains("80 µs after"),
            "{}",
            advice[0].finding
        );
        assert!(
            advice[0].setting.contains("about 160 µs"),
            "{}",
            advice[0].setting
        );
        assert!(advice[0].setting.contains("EngineBuilder::progress_spin"));

        // Parks after long gaps (calls now and then): nothing.
        s.progress.short_parks = 10;
        s.progress.short_parks_us = 10 * 80;
        assert!(s.advise().is_empty());
        // Too few messages to judge.
        s.progress = ProgressStats {
            messages_in: 50,
            parks: 50,
            short_parks: 50,
            short_parks_us: 50 * 80,
        };
        assert!(s.advise().is_empty());
    }

    #[test]
    fn polling_off_under_a_steady_stream_says_to_poll() {
        let mut s = idle();
        s.settings.progress_spin_us = 0;
        s.uptime_ms = 2_000;
        s.progress.messages_in = 10_000; // 5000 a second
        assert_eq!(codes(&s), [PARKS_UNDER_STEADY_STREAM]);
        s.uptime_ms = 100_000; // 100 a second
        assert!(s.advise().is_empty());
    }

    #[test]
    fn a_connection_at_its_in_flight_limit() {
        let mut s = idle();
        s.settings.max_in_flight_per_connection = 2;
        s.peers.push(peer(1, 0));
        assert!(s.advise().is_empty());
        s.peers[0] = peer(2, 0);
        let advice = s.advise();
        assert_eq!(codes(&s), [CONNECTION_NEAR_IN_FLIGHT_LIMIT]);
        assert_eq!(advice[0].severity, Severity::Info, "it touched the limit");
        s.peers[0] = peer(2, 3);
        let advice = s.advise();
        assert_eq!(advice[0].severity, Severity::Warning, "it stopped reading");
        assert!(
            advice[0].finding.contains("3 times"),
            "{}",
            advice[0].finding
        );
        assert!(advice[0].setting.contains("max_in_flight_per_connection"));
    }

    #[test]
    fn a_connection_stopped_below_the_limit_is_over_its_answers_budget() {
        let mut s = idle();
        s.peers.push(peer(5, 2));
        let advice = s.advise();
        assert_eq!(codes(&s), [CONNECTION_OVER_RESPONSE_BUDGET]);
        assert!(advice[0].setting.contains("max_queued_response_bytes"));
    }

    #[test]
    fn deadlines_missed_on_either_side() {
        let mut s = idle();
        let mut called = side(100);
        called.errors.insert("deadline".into(), 2);
        s.rpcs.push(rpc("slow", 0, None, Some(called.clone())));
        assert!(s.advise().is_empty(), "2% is under the share");
        called.errors.insert("deadline".into(), 10);
        s.rpcs[0].called = Some(called);
        let advice = s.advise();
        assert_eq!(codes(&s), [DEADLINE_ERRORS]);
        assert!(advice[0].setting.contains("timeouts.call_ms"));
        let mut served = side(4);
        served.errors.insert("deadline".into(), 1);
        served
            .phases
            .insert("handler".into(), latency(&[100_000, 100_000, 5, 5]));
        s.rpcs[0].served = Some(served);
        assert_eq!(codes(&s), [DEADLINE_ERRORS, DEADLINE_ERRORS]);
        let served = &s.advise()[1];
        assert!(
            served.finding.starts_with(
                "1 of 4 requests here ended past its caller's deadline: the caller had given up"
            ),
            "{served}"
        );
        assert!(served.finding.contains("(timed: handler p50"), "{served}");
    }

    #[test]
    fn rpcs_not_there_on_either_side() {
        let mut s = idle();
        s.unknown_rpc_requests = 2;
        assert_eq!(codes(&s), [UNKNOWN_RPC]);
        s.unknown_rpc_requests = 0;
        let mut called = side(1);
        called.errors.insert("no_such_rpc".into(), 1);
        s.rpcs.push(rpc("nope", 7, None, Some(called)));
        let advice = s.advise();
        assert_eq!(codes(&s), [UNKNOWN_RPC]);
        assert_eq!(advice[0].subject, "nope@7");
    }

    #[test]
    fn warnings_come_first_and_advice_reads_as_one_paragraph() {
        let mut s = idle();
        s.settings.max_in_flight_per_connection = 2;
        s.peers.push(peer(2, 0)); // info
        s.unknown_rpc_requests = 1; // warning
        let advice = s.advise();
        assert_eq!(
            advice.iter().map(|a| a.severity).collect::<Vec<_>>(),
            [Severity::Warning, Severity::Info]
        );
        let text = advice[0].to_string();
        assert!(
            text.starts_with("warning: RPCs not registered here: peers sent 1 request"),
            "{text}"
        );
        assert!(text.contains(" change: register"), "{text}");
        assert!(text.ends_with("[unknown_rpc]"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        // Advice serializes for scripts, as the statistics do.
        let json = serde_json::to_string(&advice[1]).unwrap();
        assert!(json.contains(r#""severity":"info""#), "{json}");
    }
}
