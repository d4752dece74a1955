//! Admission of requests, per provider: load shedding and handler pools.
//!
//! A provider may be given limits and a pool (the `providers` and `pools`
//! keys of the configuration, [`ProviderOptions`]). Dispatch asks
//! [`Providers::admit`] about every request once its RPC is found, and the
//! answer is one of three:
//!
//! * the provider has neither limit nor pool: `Ok(None)`, and the request
//!   goes the way it always went. This is the hot path, and it costs one
//!   test of an empty map when no provider is configured, one lookup in a
//!   map that never changes after the engine is built otherwise: no
//!   atomic, no lock.
//! * a place to run now, or a place in the provider's queue: `Ok(Some)`,
//!   an [`Admitted`] request that [`Admitted::spawn`] starts, on the
//!   provider's pool if it has one. A queued request is a task that waits,
//!   first come first served, for a place among the `max_running`; the
//!   handle of its request holds that place until the request is done
//!   (response sent, or every copy of the handle dropped), as it holds its
//!   connection's request slot.
//! * neither: `Err(`[`Busy`]`)`, at once. Dispatch answers an `Error`
//!   frame with status `Busy` (the caller gets `Error::Busy`, and knows the
//!   handler never saw the request), or drops a one-way request; either
//!   way the refusal is counted ([`ProviderLoad`]).
//!
//! Limits per connection (`limits.rs`) are taken first, by the reader, and
//! are independent: a request queued here still holds its connection's
//! request slot.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use rustc_hash::FxHashMap;
use tokio::runtime::Handle as RtHandle;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::config::ProviderOptions;

/// What a provider is doing, and what it refused ([`crate::Engine::provider_load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProviderLoad {
    /// Handlers running now (each until its response is sent or its handle
    /// dropped).
    pub running: usize,
    /// Requests waiting for a place to run.
    pub queued: usize,
    /// Requests refused with `Busy` since the engine started.
    pub refused: u64,
    /// One-way requests dropped past the limits since the engine started.
    pub dropped: u64,
}

/// The providers that have limits or a pool; fixed when the engine is built.
pub(crate) struct Providers {
    by_id: FxHashMap<u16, Provider>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<u16> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("Providers").field("ids", &ids).finish()
    }
}

/// One provider's gate and pool.
struct Provider {
    gate: Option<Arc<Gate>>,
    pool: Option<RtHandle>,
    pool_name: Option<String>,
}

/// A provider's limits and its counters.
struct Gate {
    provider: u16,
    /// Places to run; tokio's semaphore is fair, so waiters get places in
    /// the order they asked, and `try_acquire` never passes one that waits.
    running: Arc<Semaphore>,
    max_running: usize,
    queued: AtomicUsize,
    max_queued: usize,
    refused: AtomicU64,
    dropped: AtomicU64,
}

impl Providers {
    /// The providers of `options` that have a limit or a pool; `pools`
    /// holds a handle on every pool's runtime, by name (the configuration
    /// was validated: every pool named exists).
    pub(crate) fn new(
        options: &BTreeMap<u16, ProviderOptions>,
        pools: &BTreeMap<String, RtHandle>,
    ) -> Self {
        let by_id = options
            .iter()
            // Options that set neither limit nor pool change nothing.
            .filter(|(_, o)| o.max_running.is_some() || o.pool.is_some())
            .map(|(&provider, o)| {
                let gate = o.max_running.map(|max_running| {
                    Arc::new(Gate {
                        provider,
                        running: Arc::new(Semaphore::new(max_running)),
                        max_running,
                        queued: AtomicUsize::new(0),
                        max_queued: o.max_queued,
                        refused: AtomicU64::new(0),
                        dropped: AtomicU64::new(0),
                    })
                });
                let pool = o.pool.as_ref().and_then(|name| pools.get(name).cloned());
                let pool_name = o.pool.clone();
                (
                    provider,
                    Provider {
                        gate,
                        pool,
                        pool_name,
                    },
                )
            })
            .collect();
        Self { by_id }
    }

    /// Admits a request to `provider` (see the module's documentation):
    /// `Ok(None)` if the provider has neither limit nor pool.
    ///
    /// # Errors
    /// [`Busy`] when the provider's running handlers and queue are full;
    /// it is counted as refused, or as dropped if `one_way`.
    pub(crate) fn admit(&self, provider: u16, one_way: bool) -> Result<Option<Admitted>, Busy> {
        if self.by_id.is_empty() {
            return Ok(None);
        }
        let Some(p) = self.by_id.get(&provider) else {
            return Ok(None);
        };
        let ticket = match &p.gate {
            None => Ticket::Free,
            Some(gate) => Gate::enter(gate, one_way)?,
        };
        Ok(Some(Admitted {
            ticket,
            pool: p.pool.clone(),
        }))
    }

    /// Every provider with limits or a pool, by id, with what it is doing.
    pub(crate) fn describe(&self) -> Vec<crate::stats::schema::ProviderStats> {
        let mut all: Vec<_> = self
            .by_id
            .iter()
            .map(|(&provider, p)| {
                let load = self.load(provider).unwrap_or_default();
                crate::stats::schema::ProviderStats {
                    provider,
                    max_running: p.gate.as_ref().map(|g| g.max_running),
                    max_queued: p.gate.as_ref().map_or(0, |g| g.max_queued),
                    pool: p.pool_name.clone(),
                    running: load.running,
                    queued: load.queued,
                    refused: load.refused,
                    dropped: load.dropped,
                }
            })
            .collect();
        all.sort_by_key(|p| p.provider);
        all
    }

    /// What `provider` is doing; `None` if it has no limit.
    pub(crate) fn load(&self, provider: u16) -> Option<ProviderLoad> {
        let gate = self.by_id.get(&provider)?.gate.as_ref()?;
        Some(ProviderLoad {
            running: gate.running_now(),
            queued: gate.queued.load(Ordering::Acquire),
            refused: gate.refused.load(Ordering::Relaxed),
            dropped: gate.dropped.load(Ordering::Relaxed),
        })
    }
}

impl Gate {
    /// A place to run now, else in the queue, else [`Busy`]. A refusal
    /// costs a few atomic operations, and takes neither the semaphore's
    /// lock nor an allocation: a provider past its limits may be asked
    /// thousands of times a second by callers that come back at once.
    fn enter(gate: &Arc<Self>, one_way: bool) -> Result<Ticket, Busy> {
        if let Ok(permit) = gate.running.clone().try_acquire_owned() {
            return Ok(Ticket::Running(ProviderPermit { _permit: permit }));
        }
        let max = gate.max_queued;
        let joined = gate
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max).then_some(q + 1)
            });
        if let Err(queued) = joined {
            let counter = if one_way {
                &gate.dropped
            } else {
                &gate.refused
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(Busy {
                provider: gate.provider,
                running: gate.running_now(),
                queued,
                max_running: gate.max_running,
                max_queued: gate.max_queued,
            });
        }
        // Join the semaphore's line now, not when the waiting task first
        // runs: a place freed in between goes to this request, not to one
        // that comes after it.
        let mut acquire: Acquire = Box::pin(gate.running.clone().acquire_owned());
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(Ok(permit)) = acquire.as_mut().poll(&mut cx) {
            // A place came free since `try_acquire`: no need to queue.
            gate.queued.fetch_sub(1, Ordering::AcqRel);
            return Ok(Ticket::Running(ProviderPermit { _permit: permit }));
        }
        Ok(Ticket::Queued(Queued {
            gate: gate.clone(),
            acquire,
        }))
    }

    fn running_now(&self) -> usize {
        self.max_running
            .saturating_sub(self.running.available_permits())
    }
}

/// A request refused because its provider is full: the reason sent to the
/// caller (status `Busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Busy {
    provider: u16,
    running: usize,
    queued: usize,
    max_running: usize,
    max_queued: usize,
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let handlers = if self.running == 1 {
            "handler"
        } else {
            "handlers"
        };
        write!(
            f,
            "provider {}: {} {handlers} running and {} queued (max_running {}, max_queued {})",
            self.provider, self.running, self.queued, self.max_running, self.max_queued
        )
    }
}

/// A provider's place for one request's handler, given back when it is
/// dropped: the request's handle holds it until the request is done.
#[derive(Debug)]
pub(crate) struct ProviderPermit {
    _permit: OwnedSemaphorePermit,
}

/// A request admitted to a provider with limits or a pool.
#[derive(Debug)]
pub(crate) struct Admitted {
    ticket: Ticket,
    pool: Option<RtHandle>,
}

#[derive(Debug)]
enum Ticket {
    /// No limit (a pool only).
    Free,
    /// A place to run, now.
    Running(ProviderPermit),
    /// A place in the queue.
    Queued(Queued),
}

/// A place in a provider's queue; leaving it (for a place to run, or
/// because the waiting task was dropped at finalize) takes it off the
/// count.
struct Queued {
    gate: Arc<Gate>,
    /// In the semaphore's line since the request was admitted.
    acquire: Acquire,
}

/// Waiting for a place to run.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("provider", &self.gate.provider)
            .finish()
    }
}

impl Queued {
    /// Waits for a place to run, in the order the requests came.
    async fn wait(mut self) -> Option<ProviderPermit> {
        // The semaphore is never closed: the error case is only a type.
        let permit = self.acquire.as_mut().await.ok();
        drop(self);
        permit.map(|p| ProviderPermit { _permit: p })
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.gate.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admitted {
    /// Starts the request's handler as a task: on the provider's pool if it
    /// has one, else on `handlers` (where the engine's handlers run). A
    /// queued request's task first waits for its place. `run` makes the
    /// handler's future from the place, which the request's handle keeps.
    pub(crate) fn spawn<F, Fut>(self, handlers: &RtHandle, run: F)
    where
        F: FnOnce(Option<ProviderPermit>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rt = self.pool.as_ref().unwrap_or(handlers);
        match self.ticket {
            Ticket::Free => drop(rt.spawn(run(None))),
            Ticket::Running(permit) => drop(rt.spawn(run(Some(permit)))),
            Ticket::Queued(queued) => drop(rt.spawn(async move {
                let permit = queued.wait().await;
                run(permit).await;
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(id: u16, max_running: usize, max_queued: usize) -> Providers {
        let options = BTreeMap::from([(id, ProviderOptions::limits(max_running, max_queued))]);
        Providers::new(&options, &BTreeMap::new())
    }

    fn permit(admitted: Admitted) -> ProviderPermit {
        match admitted.ticket {
            Ticket::Running(p) => p,
            other => panic!("expected a place to run, got {other:?}"),
        }
    }

    #[test]
    fn unconfigured_providers_are_free() {
        let none = Providers::new(&BTreeMap::new(), &BTreeMap::new());
        assert!(matches!(none.admit(0, false), Ok(None)));
        let some = providers(3, 1, 0);
        assert!(matches!(some.admit(4, false), Ok(None)));
        assert!(some.load(4).is_none());
        // Options with nothing set are no configuration.
        let empty = BTreeMap::from([(5, ProviderOptions::default())]);
        let p = Providers::new(&empty, &BTreeMap::new());
        assert!(matches!(p.admit(5, false), Ok(None)));
    }

    #[test]
    fn running_then_queued_then_busy() {
        let p = providers(3, 2, 1);
        let a = permit(p.admit(3, false).unwrap().unwrap());
        let _b = permit(p.admit(3, false).unwrap().unwrap());
        let queued = p.admit(3, false).unwrap().unwrap();
        assert!(matches!(queued.ticket, Ticket::Queued(_)));
        let busy = p.admit(3, false).unwrap_err();
        assert_eq!(
            busy.to_string(),
            "provider 3: 2 handlers running and 1 queued (max_running 2, max_queued 1)"
        );
        let _ = p.admit(3, true).unwrap_err();
        let load = p.load(3).unwrap();
        assert_eq!(
            (load.running, load.queued, load.refused, load.dropped),
            (2, 1, 1, 1)
        );
        // A place freed goes to the queue first, not to a newcomer.
        drop(a);
        assert!(p.admit(3, false).is_err(), "a newcomer passed the queue");
        let Ticket::Queued(q) = queued.ticket else {
            unreachable!()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _c = rt.block_on(q.wait()).unwrap();
        let load = p.load(3).unwrap();
        assert_eq!((load.running, load.queued), (2, 0));
        assert!(matches!(
            p.admit(3, false).unwrap().unwrap().ticket,
            Ticket::Queued(_)
        ));
    }

    #[test]
    fn one_place_no_queue() {
        let p = providers(0, 1, 0);
        let a = permit(p.admit(0, false).unwrap().unwrap());
        let busy = p.admit(0, false).unwrap_err();
        assert_eq!(
            busy.to_string(),
            "provider 0: 1 handler running and 0 queued (max_running 1, max_queued 0)"
        );
        drop(a);
        let _b = permit(p.admit(0, false).unwrap().unwrap());
    }

    #[test]
    fn a_dropped_queued_request_leaves_the_queue() {
        let p = providers(1, 1, 1);
        let _a = permit(p.admit(1, false).unwrap().unwrap());
        let queued = p.admit(1, false).unwrap().unwrap();
        assert_eq!(p.load(1).unwrap().queued, 1);
        drop(queued);
        assert_eq!(p.load(1).unwrap().queued, 0);
        assert!(p.admit(1, false).is_ok());
    }
}
