//! Keepalive: idle connections are probed, and a peer that stops
//! answering without closing is found out (the `keepalive` section of the
//! JSON configuration, [`crate::config::Keepalive`]).
//!
//! One ticker task per engine, on the engine's runtime, from build to
//! finalize. Every tick — `min(interval, timeout) / 8`, at least 5 ms — it
//! refreshes the engine's coarse clock (`liveness.rs`) and looks at every
//! live connection:
//!
//! * nothing received for `interval` and no probe outstanding: a `Ping`
//!   goes out (its `Pong`, like anything else received, answers it);
//! * a probe outstanding, and nothing at all received for `timeout` since
//!   it went: the connection is killed, and every call outstanding on it —
//!   calls without a timeout included — fails with
//!   [`crate::Error::ConnectionLost`] saying so.
//!
//! A peer that stops answering is therefore noticed within `interval +
//! timeout`, plus at most two ticks (one to see the silence, one to see the
//! probe unanswered). The readers pay nothing for it but a relaxed store of
//! the coarse clock per receive poll; the ticker reads the real clock once
//! per tick, and sleeps while the engine has no connection.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

use crate::conn::Conn;
use crate::frame::{Header, Kind};
use crate::liveness::Liveness;
use crate::state::EngineState;

/// The shortest tick.
const MIN_TICK: Duration = Duration::from_millis(5);

/// Ticks per `min(interval, timeout)`.
const TICKS_PER_PERIOD: u32 = 8;

/// The keepalive settings, in the clock's milliseconds.
#[derive(Debug, Clone, Copy)]
struct Settings {
    interval_ms: u64,
    timeout_ms: u64,
    tick: Duration,
}

impl Settings {
    fn new(interval: Duration, timeout: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            interval_ms: ms(interval),
            timeout_ms: ms(timeout),
            tick: (interval.min(timeout) / TICKS_PER_PERIOD).max(MIN_TICK),
        }
    }
}

/// What a tick does with one connection.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Nothing,
    Probe,
    /// The peer did not answer; nothing received for this many ms.
    Kill {
        silent_ms: u64,
    },
}

fn decide(liveness: &Liveness, now: u64, s: &Settings) -> Action {
    if liveness.is_paused() {
        // The engine itself does not read this connection (over its
        // budget): the silence is not the peer's.
        return Action::Nothing;
    }
    match liveness.probe_outstanding() {
        Some(probed) if now.saturating_sub(probed) >= s.timeout_ms => Action::Kill {
            silent_ms: now.saturating_sub(liveness.heard()),
        },
        Some(_) => Action::Nothing,
        None if now.saturating_sub(liveness.heard()) >= s.interval_ms => Action::Probe,
        None => Action::Nothing,
    }
}

/// The reason recorded on a connection whose peer did not answer.
fn unreachable_reason(timeout_ms: u64, silent_ms: u64) -> String {
    format!(
        "no answer to a keepalive probe within {timeout_ms} ms (nothing received for \
         {silent_ms} ms): the peer is unreachable"
    )
}

/// Starts the engine's ticker, unless keepalive is off.
pub(crate) fn start(state: &Arc<EngineState>) {
    let Some((interval, timeout)) = state.config.keepalive.enabled() else {
        return;
    };
    let task = state.rt.spawn(run(
        Arc::downgrade(state),
        state.conn_added.clone(),
        Settings::new(interval, timeout),
    ));
    state.set_keepalive(task.abort_handle());
}

/// The ticker. It holds the engine's state only during a tick.
async fn run(state: Weak<EngineState>, added: Arc<Notify>, s: Settings) {
    let mut ticks = tokio::time::interval(s.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(state) = state.upgrade() else { return };
        let conns = state.live_conns();
        if conns.is_empty() {
            drop(state);
            // `add_conn` leaves a permit if it comes before this wait.
            added.notified().await;
            ticks.reset();
            continue;
        }
        let now = state.clock.refresh();
        for conn in conns {
            tick(&state, &conn, now, &s);
        }
    }
}

fn tick(state: &EngineState, conn: &Arc<Conn>, now: u64, s: &Settings) {
    if conn.is_dead() {
        return;
    }
    match decide(&conn.liveness, now, s) {
        Action::Nothing => {}
        Action::Probe => probe(state, conn, now),
        Action::Kill { silent_ms } => {
            let reason = unreachable_reason(s.timeout_ms, silent_ms);
            tracing::warn!(peer = %conn.remote(), "closing connection: {reason}");
            conn.kill(&reason);
        }
    }
}

/// Sends a Ping on `conn`, from a task of its own (the ticker never waits
/// on a connection). Its Pong completes a call nobody waits for.
fn probe(state: &EngineState, conn: &Arc<Conn>, now: u64) {
    let Ok((seq, reply)) = conn.register_call() else {
        return;
    };
    drop(reply);
    let previous = conn.liveness.probe_sent(now, seq);
    if previous != 0 {
        // Still in the table if its Pong never came (anything else
        // answered): at most one probe per connection waits there.
        conn.forget_call(previous);
    }
    let ping = Header {
        seq,
        ..Header::new(Kind::Ping)
    };
    let conn = conn.clone();
    state.rt.spawn(async move {
        // A failure kills the connection, which is what keepalive would do.
        let _ = conn.send(&[&ping.encode()]).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::new(Duration::from_millis(100), Duration::from_millis(40))
    }

    #[test]
    fn ticks_are_an_eighth_of_the_shorter_setting_and_at_least_5_ms() {
        assert_eq!(settings().tick, Duration::from_millis(5));
        let s = Settings::new(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(s.tick, Duration::from_millis(625));
        let s = Settings::new(Duration::from_millis(1), Duration::from_millis(1));
        assert_eq!(s.tick, MIN_TICK);
    }

    #[test]
    fn silence_is_probed_then_an_unanswered_probe_kills() {
        let s = settings();
        let l = Liveness::default();
        l.heard_at(1000);
        assert_eq!(decide(&l, 1099, &s), Action::Nothing);
        assert_eq!(decide(&l, 1100, &s), Action::Probe);
        l.probe_sent(1100, 1);
        // Waiting for the answer: no second probe, no kill yet.
        assert_eq!(decide(&l, 1139, &s), Action::Nothing);
        assert_eq!(decide(&l, 1140, &s), Action::Kill { silent_ms: 140 });
    }

    #[test]
    fn anything_heard_answers_the_probe() {
        let s = settings();
        let l = Liveness::default();
        l.heard_at(1000);
        l.probe_sent(1100, 1);
        l.heard_at(1120);
        assert_eq!(decide(&l, 1200, &s), Action::Nothing, "heard 80 ms ago");
        assert_eq!(decide(&l, 1220, &s), Action::Probe, "silent again");
    }

    #[test]
    fn a_connection_not_read_on_purpose_is_left_alone() {
        let s = settings();
        let clock = crate::liveness::Clock::new();
        let l = Liveness::default();
        l.probe_sent(1100, 1);
        let paused = l.pause(&clock);
        assert_eq!(decide(&l, 10_000, &s), Action::Nothing);
        drop(paused);
        assert!(!l.is_paused());
    }

    #[test]
    fn the_reason_says_what_happened() {
        let r = unreachable_reason(300, 512);
        assert_eq!(
            r,
            "no answer to a keepalive probe within 300 ms (nothing received for 512 ms): \
             the peer is unreachable"
        );
    }
}
