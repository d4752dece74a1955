//! Where every timeout of the engine is decided, and how an expired one is
//! reported. Nothing else in the crate reads a timeout setting or starts a
//! timer of its own, but for keepalive (`keepalive.rs`), whose ticker
//! bounds how long a silent connection lives.
//!
//! | what is bounded | by (first that is set) | when it expires |
//! |---|---|---|
//! | an RPC call | the callable's `timeout`, the remote function's `timeout`, else the earlier of `timeouts.call_ms` and the deadline of the request whose handler makes the call | [`Error::Timeout`] naming the RPC ([`Error::DeadlineExceeded`] if it was spent before sending) |
//! | a ping | its `timeout` argument, `timeouts.call_ms` | [`Error::Timeout`] (`<ping>`) |
//! | a remote shutdown request | its `timeout` argument, `timeouts.call_ms` | [`Error::Timeout`] (`<shutdown>`) |
//! | a bulk transfer | the transfer's `timeout`, else the earlier of `timeouts.bulk_ms` and the deadline of the request whose handler runs it | [`Error::BulkTimeout`] |
//! | opening a connection | `timeouts.connect_ms` | [`Error::ConnectTimeout`] |
//! | a new connection's Hello | `timeouts.hello_ms` | the connection is closed |
//! | a peer that stops answering | `keepalive.interval_ms` + `keepalive.timeout_ms` (`keepalive.rs`) | the connection is closed: every call on it, with or without a timeout, fails with [`Error::ConnectionLost`] |
//!
//! A [`Deadline`] bounds all that an exchange waits for: opening the
//! connection, sending (behind a full queue), and the answer. It is an
//! instant, so the pieces of one exchange (the chunks of a transfer) share
//! it.

use std::future::Future;
use std::time::{Duration, Instant};

use courier_transport::Address as WireAddr;

use crate::config::Timeouts;
use crate::error::{Error, Result};
use crate::paths::AddressSet;

/// When an exchange must be over, if ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadline {
    /// The instant, and the duration it was set from (for the error).
    limit: Option<(Instant, Duration)>,
}

impl Deadline {
    /// No bound.
    #[cfg(test)]
    pub(crate) const NONE: Self = Self { limit: None };

    /// `after` from now (the clock is read only if there is a bound).
    pub(crate) fn within(after: Option<Duration>) -> Self {
        Self {
            limit: after.map(|d| (Instant::now() + d, d)),
        }
    }

    /// The instant and the duration it was set from, if there is a bound.
    pub(crate) fn limit(self) -> Option<(Instant, Duration)> {
        self.limit
    }

    /// The earlier of this deadline and the instant `at` (if any).
    fn or_earlier(self, at: Option<Instant>) -> Self {
        match (self.limit, at) {
            (Some((mine, _)), Some(at)) if mine <= at => self,
            (_, Some(at)) => Self {
                limit: Some((at, at.saturating_duration_since(Instant::now()))),
            },
            (_, None) => self,
        }
    }

    /// Whether the deadline has passed already (a zero budget).
    pub(crate) fn passed(self) -> bool {
        self.limit.is_some_and(|(at, _)| at <= Instant::now())
    }

    /// Runs `work` until this deadline; past it, `work` is dropped and the
    /// result is `Err(the duration set)`.
    pub(crate) async fn run<F: Future>(self, work: F) -> std::result::Result<F::Output, Duration> {
        match self.limit {
            None => Ok(work.await),
            Some((at, after)) => tokio::time::timeout_at(at.into(), work)
                .await
                .map_err(|_| after),
        }
    }

    /// Runs `work` until this deadline; past it, `work` is dropped and the
    /// result is `expired(the duration set)`.
    pub(crate) async fn bound<T>(
        self,
        work: impl Future<Output = Result<T>>,
        expired: impl FnOnce(Duration) -> Error,
    ) -> Result<T> {
        self.run(work)
            .await
            .unwrap_or_else(|after| Err(expired(after)))
    }
}

fn millis(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

/// An RPC call: the callable's own timeout, else its function's, else
/// the earlier of `timeouts.call_ms` and the deadline `inherited` from the
/// request whose handler makes the call.
pub(crate) fn call(
    config: &Timeouts,
    callable: Option<Duration>,
    function: Option<Duration>,
    inherited: Option<Instant>,
) -> Deadline {
    match callable.or(function) {
        Some(own) => Deadline::within(Some(own)),
        None => Deadline::within(millis(config.call_ms)).or_earlier(inherited),
    }
}

/// A ping or a remote shutdown request: `explicit`, else `timeouts.call_ms`.
pub(crate) fn control(config: &Timeouts, explicit: Option<Duration>) -> Deadline {
    Deadline::within(explicit.or_else(|| millis(config.call_ms)))
}

/// A bulk transfer: `explicit`, else the earlier of `timeouts.bulk_ms`
/// and the deadline `inherited` from the request whose handler runs it.
pub(crate) fn bulk(
    config: &Timeouts,
    explicit: Option<Duration>,
    inherited: Option<Instant>,
) -> Deadline {
    match explicit {
        Some(own) => Deadline::within(Some(own)),
        None => Deadline::within(millis(config.bulk_ms)).or_earlier(inherited),
    }
}

/// Opening a connection (dial and transport handshake).
pub(crate) fn connect(config: &Timeouts) -> Deadline {
    Deadline::within(Some(Duration::from_millis(config.connect_ms)))
}

/// The time an accepted connection has to deliver its Hello.
pub(crate) fn hello(config: &Timeouts) -> Deadline {
    Deadline::within(Some(Duration::from_millis(config.hello_ms)))
}

/// The error of an exchange named `what` (an RPC name, `<ping>`,
/// `<shutdown>`) with `address` that ran out of time.
pub(crate) fn expired_call<'a>(
    what: &'a str,
    address: &'a AddressSet,
) -> impl FnOnce(Duration) -> Error + 'a {
    move |after| Error::Timeout {
        rpc: what.to_owned(),
        address: address.to_string(),
        after,
    }
}

/// The error of a bulk transfer with `address` that ran out of time.
pub(crate) fn expired_bulk(address: &AddressSet) -> impl FnOnce(Duration) -> Error + '_ {
    move |after| Error::BulkTimeout {
        address: address.to_string(),
        after,
    }
}

/// The error of a connection to `address` that took too long to open.
pub(crate) fn expired_connect(address: &WireAddr) -> impl FnOnce(Duration) -> Error + '_ {
    move |after| Error::ConnectTimeout {
        address: address.to_string(),
        after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nearest_setting_wins() {
        let ms = Duration::from_millis;
        let config = Timeouts {
            call_ms: Some(30),
            bulk_ms: Some(40),
            ..Timeouts::default()
        };
        let after = |d: Deadline| d.limit.map(|(_, d)| d);
        assert_eq!(
            after(call(&config, Some(ms(1)), Some(ms(2)), None)),
            Some(ms(1))
        );
        assert_eq!(after(call(&config, None, Some(ms(2)), None)), Some(ms(2)));
        assert_eq!(after(call(&config, None, None, None)), Some(ms(30)));
        // An inherited deadline: its own timeout wins; else the earlier.
        let soon = Instant::now() + ms(10);
        assert_eq!(
            after(call(&config, Some(ms(50)), None, Some(soon))),
            Some(ms(50))
        );
        let inherited = after(call(&config, None, None, Some(soon))).unwrap();
        assert!(inherited <= ms(10), "{inherited:?}");
        let later = Instant::now() + ms(1000);
        assert_eq!(after(call(&config, None, None, Some(later))), Some(ms(30)));
        let unbounded = Timeouts::default();
        assert!(call(&unbounded, None, None, Some(soon)).limit().is_some());
        assert!(call(&unbounded, Some(Duration::ZERO), None, None).passed());
        assert_eq!(after(control(&config, None)), Some(ms(30)));
        assert_eq!(after(control(&config, Some(ms(3)))), Some(ms(3)));
        assert_eq!(after(bulk(&config, None, None)), Some(ms(40)));
        assert_eq!(after(bulk(&config, Some(ms(4)), None)), Some(ms(4)));
        assert!(after(bulk(&config, None, Some(soon))).is_some_and(|d| d <= ms(10)));
        assert_eq!(after(connect(&config)), Some(ms(5_000)));
        assert_eq!(after(hello(&config)), Some(ms(10_000)));
        let unbounded = Timeouts::default();
        assert_eq!(call(&unbounded, None, None, None), Deadline::NONE);
        assert_eq!(bulk(&unbounded, None, None), Deadline::NONE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_deadline_names_what_it_bounded() {
        let addr: AddressSet = "tcp://127.0.0.1:1".parse().unwrap();
        let d = Deadline::within(Some(Duration::from_millis(5)));
        let never = std::future::pending::<Result<()>>();
        let err = d.bound(never, expired_call("hello", &addr)).await;
        match err {
            Err(Error::Timeout {
                rpc,
                address,
                after,
            }) => {
                assert_eq!(
                    (rpc.as_str(), address.as_str()),
                    ("hello", "tcp://127.0.0.1:1")
                );
                assert_eq!(after, Duration::from_millis(5));
            }
            other => panic!("{other:?}"),
        }
        let ok = Deadline::NONE
            .bound(async { Ok(7) }, expired_bulk(&addr))
            .await;
        assert_eq!(ok.unwrap(), 7);
    }
}
