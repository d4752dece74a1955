//! The members a group call chooses from: one entry per address, with its
//! cached connection, the calls in flight to it from this process, and
//! its backoff; the list follows [`Members::version`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use courier::{Address, RawCallable};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::rng::Rng;
use crate::Members;

/// Locks a mutex whose data stays valid even if a holder panicked (every
/// critical section here leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One member, as this process sees it.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) address: String,
    pub(crate) in_flight: AtomicUsize,
    /// Lookups (connection attempts) made for it.
    pub(crate) connects: AtomicU64,
    /// The looked-up address, while its connection is believed good, and
    /// the callables made on it.
    conn: Mutex<Option<Connected>>,
    /// Held by the one caller looking the member up, so that a burst of
    /// calls makes one lookup.
    pub(crate) connecting: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
    /// Whether `health` counts failures: read without the lock on every
    /// call, which then takes it only for a failing member.
    failing: AtomicBool,
}

/// A member's connection and the callables of the functions that used it
/// (a callable costs a lookup in the engine's statistics to make).
#[derive(Debug)]
struct Connected {
    address: Address,
    callables: Vec<(u64, RawCallable)>,
}

/// Callables a member keeps, beyond which it forgets them all (a program
/// that makes a function per call should not grow the list).
const MAX_CALLABLES: usize = 16;

#[derive(Debug, Default)]
struct Health {
    /// Failures in a row.
    failures: u32,
    /// Not chosen before this (unless no other member can be).
    until: Option<Instant>,
}

impl Member {
    fn new(address: String) -> Self {
        Self {
            address,
            in_flight: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            health: Mutex::new(Health::default()),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn cached(&self) -> Option<Address> {
        lock(&self.conn).as_ref().map(|c| c.address.clone())
    }

    pub(crate) fn set_connection(&self, address: Address) {
        *lock(&self.conn) = Some(Connected {
            address,
            callables: Vec::new(),
        });
    }

    /// The callable of function `key` on `address` (this member's
    /// connection): the one kept, else one `make` makes (kept while the
    /// connection is).
    pub(crate) fn callable(&self, key: u64, make: impl FnOnce() -> RawCallable) -> RawCallable {
        let mut conn = lock(&self.conn);
        let Some(c) = conn.as_mut() else {
            // Dropped since it was looked up (it failed): not kept.
            return make();
        };
        if let Some((_, callable)) = c.callables.iter().find(|(k, _)| *k == key) {
            return callable.clone();
        }
        if c.callables.len() >= MAX_CALLABLES {
            c.callables.clear();
        }
        let callable = make();
        c.callables.push((key, callable.clone()));
        callable
    }

    /// Whether it is backed off now (the clock is read only for a member
    /// that failed).
    pub(crate) fn backed_off(&self) -> bool {
        self.failing.load(Ordering::Acquire)
            && lock(&self.health).until.is_some_and(|t| t > Instant::now())
    }

    /// How long it stays backed off from `now`.
    pub(crate) fn backed_off_for(&self, now: Instant) -> Option<Duration> {
        lock(&self.health)
            .until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    pub(crate) fn failures(&self) -> u32 {
        lock(&self.health).failures
    }

    /// Its lookup or connection failed: drop the connection, back off.
    pub(crate) fn failed(&self, backoff: &Backoff, rng: &Rng) {
        *lock(&self.conn) = None;
        let mut h = lock(&self.health);
        h.failures = h.failures.saturating_add(1);
        let now = Instant::now();
        // A delay past the clock's range is a day.
        h.until = now
            .checked_add(backoff.delay(h.failures, rng))
            .or_else(|| now.checked_add(Duration::from_secs(86_400)));
        self.failing.store(true, Ordering::Release);
    }

    /// It answered: forget its failures.
    pub(crate) fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut h = lock(&self.health);
        *h = Health::default();
        self.failing.store(false, Ordering::Release);
    }
}

/// Counts a call in flight to a member while it lives.
pub(crate) struct InFlight<'a>(&'a Member);

impl<'a> InFlight<'a> {
    pub(crate) fn start(member: &'a Member) -> Self {
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(member)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The list of members, rebuilt when the view's version changes; an
/// address kept from one version to the next keeps its entry (its
/// connection, its in-flight count, its backoff).
pub(crate) struct Table {
    source: Arc<dyn Members>,
    view: Mutex<View>,
}

struct View {
    version: Option<u64>,
    list: Arc<Vec<Arc<Member>>>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let view = lock(&self.view);
        f.debug_struct("Table")
            .field("version", &view.version)
            .field("members", &view.list.len())
            .finish_non_exhaustive()
    }
}

impl Table {
    pub(crate) fn new(source: Arc<dyn Members>) -> Self {
        Self {
            source,
            view: Mutex::new(View {
                version: None,
                list: Arc::new(Vec::new()),
            }),
        }
    }

    /// The members now.
    pub(crate) fn current(&self) -> Arc<Vec<Arc<Member>>> {
        let version = self.source.version();
        let mut view = lock(&self.view);
        if view.version != Some(version) {
            let mut old: HashMap<&str, &Arc<Member>> =
                view.list.iter().map(|m| (m.address.as_str(), m)).collect();
            let mut list = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for address in self.source.live() {
                if !seen.insert(address.clone()) {
                    continue;
                }
                let member = match old.remove(address.as_str()) {
                    Some(m) => m.clone(),
                    None => Arc::new(Member::new(address)),
                };
                list.push(member);
            }
            view.list = Arc::new(list);
            view.version = Some(version);
        }
        view.list.clone()
    }
}

/// Chooses a member by the power of two choices: two at random among the
/// best candidates, the one with fewer calls in flight. The candidates, in
/// order of preference: members neither `tried` by this call nor backed
/// off; not tried but backed off; tried, not backed off; tried and backed
/// off. Members in `skip` are never chosen. `None` when every member is
/// skipped (or there is none).
pub(crate) fn pick(
    list: &[Arc<Member>],
    tried: &[Arc<Member>],
    skip: &[Arc<Member>],
    rng: &Rng,
) -> Option<Arc<Member>> {
    let rng_pair = |n: usize| {
        // Two distinct, every pair as likely.
        let i = rng.below(n);
        let mut j = rng.below(n - 1);
        if j >= i {
            j += 1;
        }
        (i, j)
    };
    let load = |m: &Member| m.in_flight.load(Ordering::Relaxed);
    // The common case, without a list of candidates: nothing tried or
    // skipped, and the two drawn not backed off.
    if tried.is_empty() && skip.is_empty() {
        match list.len() {
            0 => return None,
            1 => return Some(list[0].clone()),
            n => {
                let (i, j) = rng_pair(n);
                let (a, b) = (&list[i], &list[j]);
                if !a.backed_off() && !b.backed_off() {
                    return Some(if load(b) < load(a) { b } else { a }.clone());
                }
            }
        }
    }
    let mut best = u8::MAX;
    let mut candidates: Vec<usize> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        if skip.iter().any(|s| Arc::ptr_eq(s, m)) {
            continue;
        }
        let tier = 2 * u8::from(tried.iter().any(|t| Arc::ptr_eq(t, m))) + u8::from(m.backed_off());
        if tier < best {
            best = tier;
            candidates.clear();
        }
        if tier == best {
            candidates.push(i);
        }
    }
    let chosen = match candidates.len() {
        0 => return None,
        1 => candidates[0],
        n => {
            let (i, j) = rng_pair(n);
            let (a, b) = (candidates[i], candidates[j]);
            if load(&list[b]) < load(&list[a]) {
                b
            } else {
                a
            }
        }
    };
    Some(list[chosen].clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StaticMembers;

    fn members(n: usize) -> Vec<Arc<Member>> {
        (0..n)
            .map(|i| Arc::new(Member::new(format!("mem://m{i}"))))
            .collect()
    }

    #[test]
    fn two_choices_never_take_the_most_loaded_of_three() {
        let list = members(3);
        list[1].in_flight.store(5, Ordering::Relaxed);
        let rng = Rng::new();
        for _ in 0..1000 {
            let m = pick(&list, &[], &[], &rng).map(|m| m.address.clone());
            assert_ne!(m.as_deref(), Some("mem://m1"));
        }
    }

    #[test]
    fn both_of_two_are_compared() {
        let list = members(2);
        list[0].in_flight.store(1, Ordering::Relaxed);
        let rng = Rng::new();
        for _ in 0..100 {
            let m = pick(&list, &[], &[], &rng).map(|m| m.address.clone());
            assert_eq!(m.as_deref(), Some("mem://m1"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backed_off_and_tried_members_come_last() {
        let list = members(3);
        let rng = Rng::new();
        list[0].failed(&Backoff::connect(), &rng);
        let tried = [list[1].clone()];
        for _ in 0..100 {
            let m = pick(&list, &tried, &[], &rng).map(|m| m.address.clone());
            assert_eq!(m.as_deref(), Some("mem://m2"));
        }
        let skip = [list[2].clone()];
        let m = pick(&list, &tried, &skip, &rng).map(|m| m.address.clone());
        assert_eq!(m.as_deref(), Some("mem://m0"), "backed off, but not tried");
        let all = [list[0].clone(), list[1].clone(), list[2].clone()];
        assert!(pick(&list, &[], &all, &rng).is_none());
        tokio::time::advance(Backoff::CONNECT_BASE).await;
        assert!(!list[0].backed_off(), "the backoff ends");
    }

    #[test]
    fn the_table_keeps_entries_across_versions() {
        let table = Table::new(Arc::new(StaticMembers::new([
            "mem://a", "mem://b", "mem://a",
        ])));
        let first = table.current();
        assert_eq!(first.len(), 2, "duplicates are one member");
        let again = table.current();
        assert!(Arc::ptr_eq(&first, &again));
    }
}
