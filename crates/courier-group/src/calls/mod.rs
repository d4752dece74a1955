//! Calling a group: a remote function bound to a group of members and a
//! provider id, that balances its calls, backs off from members it cannot
//! reach, retries what is safe to retry within a budget, may hedge slow
//! calls, and keeps within its caller's deadline (`docs/groups.md`,
//! "Calling a group").

mod backoff;
mod budget;
mod hedge;
mod rng;
mod stats;
mod table;

use std::fmt;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier::{Address, Bytes, Engine, Error, RawRemoteFunction, Result, TransportError};
use tokio::time::Instant;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use hedge::Hedge;
pub use stats::{GroupStats, MemberStatus};

use budget::Bucket;
use hedge::Latencies;
use rng::Rng;
use stats::{bump, Counters};
use table::{pick, InFlight, Member, Table};

use crate::Members;

/// A group to call: an engine, the [`Members`] it chooses from (a
/// membership [`Group`](crate::Group), a [`StaticMembers`](crate::StaticMembers)),
/// and what it knows of each member (its connection, the calls in flight
/// to it, its backoff), shared by every function made from it. The
/// caller's side of a group, where [`Group`](crate::Group) is a member's.
///
/// Cheap to clone (clones share everything).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use courier::{Engine, Handle, RpcOptions};
/// use courier_group::{GroupClient, StaticMembers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> courier::Result<()> {
/// let mut replicas = Vec::new();
/// for _ in 0..3 {
///     let server = Engine::new("mem").await?;
///     let options = RpcOptions::provider(7).idempotent();
///     server.register_with("get", options, |h: Handle, key: u32| async move {
///         h.respond(&(key * 2)).await
///     })?;
///     replicas.push(server);
/// }
/// let members = StaticMembers::new(replicas.iter().map(|e| e.address().to_string()));
///
/// let client = Engine::builder("mem").client().build().await?;
/// let group = GroupClient::new(&client, Arc::new(members));
/// let get = group
///     .function::<u32, u32>("get")
///     .provider(7)
///     .idempotent()
///     .timeout(Duration::from_secs(5));
/// assert_eq!(get.call(&21).await?, 42);
/// assert_eq!(get.stats().calls, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GroupClient {
    inner: Arc<GroupInner>,
}

struct GroupInner {
    engine: Engine,
    table: Table,
    rng: Rng,
    connect_backoff: Backoff,
    budget: Arc<Bucket>,
}

impl fmt::Debug for GroupClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupClient")
            .field("members", &self.inner.table)
            .field("connect_backoff", &self.inner.connect_backoff)
            .field("retry_budget", &self.inner.budget.config())
            .finish_non_exhaustive()
    }
}

impl GroupClient {
    /// A group of `members`, called from `engine`, with the default
    /// connection backoff ([`Backoff::connect`]) and retry budget
    /// ([`RetryBudget::default`]).
    pub fn new(engine: &Engine, members: Arc<dyn Members>) -> Self {
        Self::builder(engine, members).build()
    }

    /// A group with settings other than the defaults.
    pub fn builder(engine: &Engine, members: Arc<dyn Members>) -> GroupClientBuilder {
        GroupClientBuilder {
            engine: engine.clone(),
            members,
            connect_backoff: Backoff::connect(),
            budget: RetryBudget::default(),
        }
    }

    /// A typed function calling RPC `name` on the group's members (at
    /// provider 0 until [`GroupFunction::provider`]).
    pub fn function<A, R>(&self, name: &str) -> GroupFunction<A, R>
    where
        A: serde::Serialize + ?Sized,
        R: serde::de::DeserializeOwned,
    {
        GroupFunction {
            raw: self.raw_function(name),
            _types: PhantomData,
        }
    }

    /// A function on raw payload bytes, for callers with their own encoding.
    pub fn raw_function(&self, name: &str) -> RawGroupFunction {
        RawGroupFunction {
            group: self.clone(),
            remote: self.inner.engine.remote_raw(name),
            provider: 0,
            timeout: None,
            idempotent: false,
            hedge: None,
            max_attempts: RawGroupFunction::DEFAULT_MAX_ATTEMPTS,
            retry_backoff: Backoff::retry(),
            budget: self.inner.budget.clone(),
            key: next_key(),
            latencies: Arc::new(Latencies::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Every live member as this group sees it now: calls in flight,
    /// lookups made, backoff.
    pub fn members(&self) -> Vec<MemberStatus> {
        let now = Instant::now();
        self.inner
            .table
            .current()
            .iter()
            .map(|m| MemberStatus {
                address: m.address.clone(),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                connects: m.connects.load(Ordering::Relaxed),
                failures: m.failures(),
                backed_off_for: m.backed_off_for(now),
            })
            .collect()
    }

    /// The tokens left in the group's retry budget.
    pub fn budget_tokens(&self) -> f64 {
        self.inner.budget.tokens()
    }

    /// The member's connection: the cached one, else a lookup, bounded by
    /// `deadline`. A lookup that fails backs the member off.
    async fn address_of(&self, member: &Member, deadline: Option<Instant>) -> Result<Address> {
        if let Some(a) = member.cached() {
            return Ok(a);
        }
        let bounded = async {
            let _one = member.connecting.lock().await;
            if let Some(a) = member.cached() {
                return Ok(a);
            }
            member.connects.fetch_add(1, Ordering::Relaxed);
            match self.inner.engine.lookup(&member.address).await {
                Ok(a) => {
                    member.set_connection(a.clone());
                    Ok(a)
                }
                Err(e) => {
                    member.failed(&self.inner.connect_backoff, &self.inner.rng);
                    Err(e)
                }
            }
        };
        match deadline {
            None => bounded.await,
            Some(d) => {
                let started = Instant::now();
                tokio::time::timeout_at(d, bounded)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::ConnectTimeout {
                            address: member.address.clone(),
                            after: started.elapsed(),
                        })
                    })
            }
        }
    }
}

/// Settings of a [`GroupClient`] (made by [`GroupClient::builder`]).
pub struct GroupClientBuilder {
    engine: Engine,
    members: Arc<dyn Members>,
    connect_backoff: Backoff,
    budget: RetryBudget,
}

impl fmt::Debug for GroupClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupClientBuilder")
            .field("engine", &self.engine)
            .field("members_version", &self.members.version())
            .field("connect_backoff", &self.connect_backoff)
            .field("retry_budget", &self.budget)
            .finish()
    }
}

impl GroupClientBuilder {
    /// How long a member whose lookup or connection failed is left alone
    /// (default [`Backoff::connect`]: 100 ms doubling to 10 s, jittered).
    /// While backed off, a member is chosen only if no other can be.
    #[must_use]
    pub fn connect_backoff(mut self, backoff: Backoff) -> Self {
        self.connect_backoff = backoff;
        self
    }

    /// The retry budget the group's functions share (default
    /// [`RetryBudget::default`]); see also [`GroupFunction::retry_budget`].
    #[must_use]
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The group.
    pub fn build(self) -> GroupClient {
        GroupClient {
            inner: Arc::new(GroupInner {
                engine: self.engine,
                table: Table::new(self.members),
                rng: Rng::new(),
                connect_backoff: self.connect_backoff,
                budget: Arc::new(Bucket::new(self.budget)),
            }),
        }
    }
}

/// Whether an error says the member, or the way to it, failed (rather
/// than the request; a message too large is the request's): the member's
/// connection is dropped and it is backed off.
fn member_failed(e: &Error) -> bool {
    let too_large = matches!(e, Error::Transport(TransportError::MessageTooLarge { .. }));
    !too_large
        && matches!(
            e,
            Error::Transport(_)
                | Error::NoPath { .. }
                | Error::ConnectTimeout { .. }
                | Error::ConnectionLost { .. }
                | Error::RemoteFinalizing { .. }
                | Error::Protocol { .. }
        )
}

/// Whether a failed request of an idempotent RPC is sent again: the error
/// must be one [`Error::is_retry_safe`] calls safe, and one that another
/// try (on another member) may not meet — the member or the way to it
/// failed, it was busy, it lacks the RPC, or the answer was late. An
/// answer from the handler (its error, its panic), a request this side
/// refused (too large, not encodable), a cancellation by the caller's own
/// caller, or this engine finalized are returned at once.
fn worth_retrying(e: &Error) -> bool {
    e.is_retry_safe(true)
        && (member_failed(e)
            || matches!(
                e,
                Error::Busy { .. } | Error::NoSuchRpc { .. } | Error::Timeout { .. }
            ))
}

/// A remote function bound to a group and a provider id, on raw payload
/// bytes ([`GroupFunction`] is the typed one). Made by
/// [`GroupClient::raw_function`]; cheap to clone (clones share their counters).
///
/// A call picks a member by the power of two choices (two live members
/// at random, the one with fewer calls in flight from this process), skips
/// members whose lookup fails or who are backed off, and, for an
/// idempotent RPC, retries elsewhere and hedges as set, within the
/// retry budget; the timeout bounds all of it.
#[derive(Clone)]
pub struct RawGroupFunction {
    group: GroupClient,
    remote: RawRemoteFunction,
    provider: u16,
    timeout: Option<Duration>,
    idempotent: bool,
    hedge: Option<Hedge>,
    max_attempts: u32,
    retry_backoff: Backoff,
    budget: Arc<Bucket>,
    /// Names this function's callables in its members' caches: changed
    /// with anything a callable holds (the provider, idempotence).
    key: u64,
    latencies: Arc<Latencies>,
    counters: Arc<Counters>,
}

/// A fresh key for a function's callables.
fn next_key() -> u64 {
    static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    KEYS.fetch_add(1, Ordering::Relaxed)
}

impl fmt::Debug for RawGroupFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawGroupFunction")
            .field("rpc", &self.remote.name())
            .field("provider", &self.provider)
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .field("hedge", &self.hedge)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff", &self.retry_backoff)
            .field("retry_budget", &self.budget.config())
            .finish_non_exhaustive()
    }
}

impl RawGroupFunction {
    /// Requests a call sends at most, by default (the first and two
    /// retries).
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

    /// The RPC's name.
    pub fn name(&self) -> &str {
        self.remote.name()
    }

    /// Calls provider `provider_id` of each member (default 0).
    #[must_use]
    pub fn provider(mut self, provider_id: u16) -> Self {
        self.provider = provider_id;
        self.key = next_key();
        self
    }

    /// Bounds each call, retries, hedges, lookups and waits included: past
    /// it the call returns the last error met, or [`Error::Timeout`].
    /// Without one, each request has the engine's call timeout, if any.
    #[must_use]
    pub fn timeout(mut self, after: Duration) -> Self {
        self.timeout = Some(after);
        self
    }

    /// Declares the RPC idempotent (register it so at the members too,
    /// [`courier::RpcOptions::idempotent`]): only then are failed calls
    /// retried and slow ones hedged.
    #[must_use]
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self.remote = self.remote.idempotent();
        self.key = next_key();
        self
    }

    /// Gives this function (and its clones) a retry budget of its own,
    /// instead of its group's.
    #[must_use]
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Arc::new(Bucket::new(budget));
        self
    }

    /// Requests a call sends at most, the first included, a hedge not
    /// counted (at least 1; default
    /// [`RawGroupFunction::DEFAULT_MAX_ATTEMPTS`]).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// How long a retry waits when every member has been tried by the call
    /// already (default [`Backoff::retry`]: 10 ms doubling to 1 s,
    /// jittered); a retry on a member not yet tried goes at once.
    #[must_use]
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Hedges calls of an idempotent RPC: a second request to another
    /// member when the first has not answered after `hedge`; the first
    /// answer wins and the other request is cancelled. Each hedge takes a
    /// token of the retry budget. Ignored for an RPC not declared
    /// idempotent.
    #[must_use]
    pub fn hedge_after(mut self, hedge: impl Into<Hedge>) -> Self {
        self.hedge = Some(hedge.into());
        self
    }

    /// The function's counters.
    pub fn stats(&self) -> GroupStats {
        self.counters.snapshot()
    }

    /// The group it calls.
    pub fn group(&self) -> &GroupClient {
        &self.group
    }

    /// Calls the RPC on a member of the group with a raw payload and
    /// returns the raw response.
    ///
    /// # Errors
    /// Those of [`courier::RawCallable::call`] (of the last request sent);
    /// a lookup's error when no member could be reached;
    /// [`Error::NoPath`] when the group has no live member;
    /// [`Error::ConnectTimeout`] when the timeout passed while a member
    /// was being looked up.
    pub async fn call(&self, payload: &[u8]) -> Result<Bytes> {
        bump(&self.counters.calls);
        if self.idempotent {
            self.budget.deposit();
        }
        // A timeout past the clock's range is no deadline.
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let result = self.run(payload, deadline).await;
        bump(if result.is_ok() {
            &self.counters.succeeded
        } else {
            &self.counters.failed
        });
        result
    }

    async fn run(&self, payload: &[u8], deadline: Option<Instant>) -> Result<Bytes> {
        let rng = &self.group.inner.rng;
        let mut tried: Vec<Arc<Member>> = Vec::new();
        let mut sent = 0u32;
        let mut waits = 0u32;
        loop {
            let list = self.group.inner.table.current();
            let (member, address) = self.connect(&list, &tried, deadline).await?;
            sent += 1;
            let hedge = self.hedge_delay();
            let result = match hedge {
                Some(delay) => {
                    self.hedged(
                        &list, &member, &address, payload, deadline, delay, &mut tried,
                    )
                    .await
                }
                None => self.attempt(&member, &address, payload, deadline).await,
            };
            let err = match result {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            // Kept only for a call that fails (a hedged one already has it).
            if !tried.iter().any(|t| Arc::ptr_eq(t, &member)) {
                tried.push(member.clone());
            }
            if !self.idempotent
                || !worth_retrying(&err)
                || sent >= self.max_attempts
                || deadline.is_some_and(|d| Instant::now() >= d)
                || self.group.inner.engine.is_finalized()
            {
                return Err(err);
            }
            if !self.budget.withdraw() {
                bump(&self.counters.budget_exhausted);
                return Err(err);
            }
            // Another member at once; one already tried after a wait.
            let fresh = self
                .group
                .inner
                .table
                .current()
                .iter()
                .any(|m| !tried.iter().any(|t| Arc::ptr_eq(t, m)));
            if !fresh {
                waits += 1;
                let wait = self.retry_backoff.delay(waits, rng);
                let after = Instant::now().checked_add(wait);
                if deadline.is_some_and(|d| after.is_none_or(|a| a >= d)) {
                    self.budget.refund();
                    return Err(err);
                }
                tokio::time::sleep(wait).await;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // Woken late: the last error, not a request unsent.
                    self.budget.refund();
                    return Err(err);
                }
            }
            bump(&self.counters.retries);
            tracing::debug!(rpc = %self.name(), member = %member.address, error = %err, "group call retried");
        }
    }

    /// The delay after which this call sends a second request, if it is
    /// hedged.
    fn hedge_delay(&self) -> Option<Duration> {
        if !self.idempotent {
            return None;
        }
        match self.hedge? {
            Hedge::After(d) => Some(d),
            Hedge::Percentile(p) => self.latencies.percentile(p),
        }
    }

    /// A member to send to, and its connection: chosen by [`pick`];
    /// members whose lookup fails are skipped (and backed off).
    async fn connect(
        &self,
        list: &[Arc<Member>],
        tried: &[Arc<Member>],
        deadline: Option<Instant>,
    ) -> Result<(Arc<Member>, Address)> {
        let mut skip: Vec<Arc<Member>> = Vec::new();
        let mut last = None;
        loop {
            let Some(member) = pick(list, tried, &skip, &self.group.inner.rng) else {
                return Err(last.unwrap_or_else(|| self.no_member()));
            };
            match self.group.address_of(&member, deadline).await {
                Ok(address) => return Ok((member, address)),
                Err(e) => {
                    bump(&self.counters.connect_failures);
                    tracing::debug!(rpc = %self.name(), member = %member.address, error = %e, "group member unreachable");
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(e);
                    }
                    skip.push(member);
                    last = Some(e);
                }
            }
        }
    }

    fn no_member(&self) -> Error {
        Error::NoPath {
            address: format!(
                "the group of RPC '{}' at provider {}",
                self.name(),
                self.provider
            ),
            tried: "the group has no live member".to_owned(),
        }
    }

    /// One request to one member, within the deadline; counted in flight,
    /// and telling the member's health.
    async fn attempt(
        &self,
        member: &Member,
        address: &Address,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<Bytes> {
        let _counted = InFlight::start(member);
        let mut callable =
            member.callable(self.key, || self.remote.on_provider(address, self.provider));
        if let Some(d) = deadline {
            callable = callable.timeout(d.saturating_duration_since(Instant::now()));
        }
        let timed = matches!(self.hedge, Some(Hedge::Percentile(_))).then(Instant::now);
        let result = callable.call(payload).await;
        match &result {
            Ok(_) => {
                member.succeeded();
                if let Some(start) = timed {
                    self.latencies.record(start.elapsed());
                }
            }
            Err(e) if member_failed(e) => {
                member.failed(&self.group.inner.connect_backoff, &self.group.inner.rng);
            }
            Err(_) => {}
        }
        result
    }

    /// A request that sends a second one, to another member, if the first
    /// has not answered after `delay`: the first answer wins, and the other
    /// request is dropped (which cancels it at its server). When both
    /// fail, the later error is returned.
    #[allow(clippy::too_many_arguments)]
    async fn hedged(
        &self,
        list: &[Arc<Member>],
        first: &Arc<Member>,
        address: &Address,
        payload: &[u8],
        deadline: Option<Instant>,
        delay: Duration,
        tried: &mut Vec<Arc<Member>>,
    ) -> Result<Bytes> {
        let mut one = pin!(self.attempt(first, address, payload, deadline));
        tokio::select! {
            r = &mut one => return r,
            () = tokio::time::sleep(delay) => {}
        }
        if !tried.iter().any(|t| Arc::ptr_eq(t, first)) {
            tried.push(first.clone());
        }
        let Some(second) = pick(list, tried, &[], &self.group.inner.rng)
            .filter(|m| !tried.iter().any(|t| Arc::ptr_eq(t, m)))
            .filter(|m| !m.backed_off())
        else {
            // No other member to ask (or only members backed off).
            return one.await;
        };
        if !self.budget.withdraw() {
            bump(&self.counters.budget_exhausted);
            return one.await;
        }
        let connected = tokio::select! {
            r = &mut one => {
                self.budget.refund();
                return r;
            }
            c = self.group.address_of(&second, deadline) => c,
        };
        let Ok(other) = connected else {
            self.budget.refund();
            bump(&self.counters.connect_failures);
            return one.await;
        };
        tried.push(second.clone());
        bump(&self.counters.hedges);
        tracing::debug!(rpc = %self.name(), first = %first.address, second = %second.address, "group call hedged");
        let mut two = pin!(self.attempt(&second, &other, payload, deadline));
        tokio::select! {
            r = &mut one => match r {
                Ok(response) => Ok(response),
                Err(_) => two.await,
            },
            r = &mut two => match r {
                Ok(response) => {
                    bump(&self.counters.hedge_wins);
                    Ok(response)
                }
                Err(_) => one.await,
            },
        }
    }
}

/// A typed remote function bound to a group and a provider id: calls RPC
/// `name` with arguments of type `A` and decodes responses of type `R`,
/// on whichever member [`RawGroupFunction`]'s rules choose. Made by
/// [`GroupClient::function`] or [`GroupFunction::new`].
pub struct GroupFunction<A: ?Sized, R> {
    raw: RawGroupFunction,
    _types: PhantomData<fn(&A) -> R>,
}

impl<A: ?Sized, R> Clone for GroupFunction<A, R> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _types: PhantomData,
        }
    }
}

impl<A: ?Sized, R> fmt::Debug for GroupFunction<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GroupFunction").field(&self.raw).finish()
    }
}

impl<A, R> GroupFunction<A, R>
where
    A: serde::Serialize + ?Sized,
    R: serde::de::DeserializeOwned,
{
    /// A function calling RPC `name` on `members` from `engine`, in a
    /// group of its own ([`GroupClient::function`] shares one group's
    /// connections and counts among several functions).
    pub fn new(engine: &Engine, members: Arc<dyn Members>, name: &str) -> Self {
        GroupClient::new(engine, members).function(name)
    }

    fn map(self, f: impl FnOnce(RawGroupFunction) -> RawGroupFunction) -> Self {
        Self {
            raw: f(self.raw),
            _types: PhantomData,
        }
    }

    /// The RPC's name.
    pub fn name(&self) -> &str {
        self.raw.name()
    }

    /// The raw function underneath.
    pub fn raw(&self) -> &RawGroupFunction {
        &self.raw
    }

    /// See [`RawGroupFunction::provider`].
    #[must_use]
    pub fn provider(self, provider_id: u16) -> Self {
        self.map(|r| r.provider(provider_id))
    }

    /// See [`RawGroupFunction::timeout`].
    #[must_use]
    pub fn timeout(self, after: Duration) -> Self {
        self.map(|r| r.timeout(after))
    }

    /// See [`RawGroupFunction::idempotent`].
    #[must_use]
    pub fn idempotent(self) -> Self {
        self.map(RawGroupFunction::idempotent)
    }

    /// See [`RawGroupFunction::retry_budget`].
    #[must_use]
    pub fn retry_budget(self, budget: RetryBudget) -> Self {
        self.map(|r| r.retry_budget(budget))
    }

    /// See [`RawGroupFunction::max_attempts`].
    #[must_use]
    pub fn max_attempts(self, attempts: u32) -> Self {
        self.map(|r| r.max_attempts(attempts))
    }

    /// See [`RawGroupFunction::retry_backoff`].
    #[must_use]
    pub fn retry_backoff(self, backoff: Backoff) -> Self {
        self.map(|r| r.retry_backoff(backoff))
    }

    /// See [`RawGroupFunction::hedge_after`].
    #[must_use]
    pub fn hedge_after(self, hedge: impl Into<Hedge>) -> Self {
        self.map(|r| r.hedge_after(hedge))
    }

    /// The function's counters.
    pub fn stats(&self) -> GroupStats {
        self.raw.stats()
    }

    /// The group it calls.
    pub fn group(&self) -> &GroupClient {
        self.raw.group()
    }

    /// Calls the RPC on a member of the group and decodes its response.
    ///
    /// # Errors
    /// [`Error::Encode`], [`Error::Decode`], and those of
    /// [`RawGroupFunction::call`].
    pub async fn call(&self, args: &A) -> Result<R> {
        let payload = postcard::to_allocvec(args).map_err(|source| Error::Encode {
            rpc: self.name().to_owned(),
            what: "arguments",
            source,
        })?;
        let response = self.raw.call(&payload).await?;
        let decoded = postcard::take_from_bytes::<R>(&response).map_err(|e| e.to_string());
        match decoded {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(Error::Decode {
                rpc: self.name().to_owned(),
                what: "response",
                reason: format!("{} bytes left over after the value", rest.len()),
            }),
            Err(reason) => Err(Error::Decode {
                rpc: self.name().to_owned(),
                what: "response",
                reason,
            }),
        }
    }
}
