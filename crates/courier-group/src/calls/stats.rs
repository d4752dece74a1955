//! What a group function counts, and what a group says of its members.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The counters of a group function (shared by its clones), read with
/// [`GroupFunction::stats`](super::GroupFunction::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    /// Calls made (each counted once, whatever its retries and hedges).
    pub calls: u64,
    /// Calls that returned a response.
    pub succeeded: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Requests sent again after a failure.
    pub retries: u64,
    /// Second requests sent because the first was slow.
    pub hedges: u64,
    /// Hedged calls the second request answered first.
    pub hedge_wins: u64,
    /// Retries or hedges not sent because the retry budget was empty.
    pub budget_exhausted: u64,
    /// Members skipped because their lookup failed (before anything was
    /// sent to them; not retries).
    pub connect_failures: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) hedge_wins: AtomicU64,
    pub(crate) budget_exhausted: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> GroupStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        GroupStats {
            calls: get(&self.calls),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            retries: get(&self.retries),
            hedges: get(&self.hedges),
            hedge_wins: get(&self.hedge_wins),
            budget_exhausted: get(&self.budget_exhausted),
            connect_failures: get(&self.connect_failures),
        }
    }
}

/// One member as a [`GroupClient`](super::GroupClient) sees it now
/// ([`GroupClient::members`](super::GroupClient::members)).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberStatus {
    /// Its address, as the membership gave it.
    pub address: String,
    /// Calls in flight to it from this group (every function of it).
    pub in_flight: usize,
    /// Lookups made for it: one, then one each time its connection
    /// failed and its backoff ended.
    pub connects: u64,
    /// Failures of its lookup or connection in a row.
    pub failures: u32,
    /// How long it stays backed off, if it is.
    pub backed_off_for: Option<Duration>,
}
