//! Keepalive: idle connections are probed, and a peer that stops
//! answering without closing is found out (the `keepalive` section of the
//! JSON configuration, [`crate::config::Keepalive`]).
//!
//! Each tick — `min(interval, timeout) / 8`, at least 5 ms — every live
//! connection of an engine is looked at:
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
//! probe unanswered).
//!
//! # Where the ticks come from
//!
//! Not from a timer on the engine's runtime: a runtime with a timer armed
//! parks with a timeout (an epoll wait with a kernel timer, and clock
//! reads around it) instead of indefinitely, on every park — measured at
//! about 110 ns more per 64-byte round trip over `mem` when the runtime
//! parks between messages (4.7 µs, +2.5%). Instead one thread for the whole
//! process, `courier-keepalive`, started with the first engine that
//! probes, sleeps from tick to tick (the shortest tick of the engines it
//! serves). Each tick it advances every engine's coarse clock
//! (`liveness.rs`) and looks at its connections; only when one needs a
//! probe or has gone silent does it wake the engine's keepalive task,
//! which acts on the engine's runtime (sends the probe, kills the
//! connection). The readers pay nothing for it but two relaxed loads of
//! the coarse clock per receive poll; the runtime has no timer.
//!
//! # When the engine itself did not run
//!
//! An engine whose runtime is not driven — the blocking API without a
//! progress thread, between calls, as in Margo — reads nothing meanwhile:
//! its peers' answers wait in the socket. If the keepalive task runs more
//! than half a `timeout` after the thread woke it, the engine was not
//! running and the silence is its own: a connection that needs anything
//! gets a fresh probe, and a whole `timeout` to answer it, instead of being
//! killed. Its peer may well have given it up meanwhile (it heard nothing
//! either): a call about to use a connection on which nothing was received
//! for longer than `interval + timeout` opens a new one instead
//! (`EngineState::connection_for`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::conn::Conn;
use crate::frame::{Header, Kind};
use crate::liveness::Liveness;
use crate::state::EngineState;
use crate::sync::lock;

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

/// How the ticker thread wakes an engine's keepalive task.
#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    /// The coarse time the task was woken at; 0: not woken since it last
    /// ran.
    at: AtomicU64,
}

/// An engine the ticker thread serves.
struct Served {
    state: Weak<EngineState>,
    wake: Arc<Wake>,
    settings: Settings,
}

/// The process's ticker thread and the engines it serves.
#[derive(Default)]
struct Ticker {
    engines: Mutex<Vec<Served>>,
    /// Signalled when an engine is added (the thread waits while there is
    /// none).
    added: Condvar,
}

/// The ticker, and whether its thread could be started.
static TICKER: OnceLock<(Arc<Ticker>, bool)> = OnceLock::new();

/// Starts the engine's keepalive task, and has the ticker thread serve the
/// engine, unless keepalive is off.
pub(crate) fn start(state: &Arc<EngineState>) {
    let Some((interval, timeout)) = state.config.keepalive.enabled() else {
        return;
    };
    let settings = Settings::new(interval, timeout);
    let (ticker, running) = TICKER.get_or_init(|| {
        let ticker = Arc::new(Ticker::default());
        let serving = ticker.clone();
        let started = std::thread::Builder::new()
            .name("courier-keepalive".into())
            .spawn(move || serve(&serving));
        if let Err(e) = &started {
            tracing::warn!(
                "cannot start the keepalive thread ({e}): idle connections are not probed"
            );
        }
        (ticker, started.is_ok())
    });
    if !running {
        return;
    }
    let wake = Arc::new(Wake::default());
    let task = state
        .rt
        .spawn(act(Arc::downgrade(state), wake.clone(), settings));
    state.set_keepalive(task.abort_handle());
    lock(&ticker.engines).push(Served {
        state: Arc::downgrade(state),
        wake,
        settings,
    });
    ticker.added.notify_one();
}

/// The ticker thread: ticks for every engine, for ever (it sleeps while
/// no engine probes).
fn serve(ticker: &Ticker) {
    loop {
        let tick = {
            let mut engines = lock(&ticker.engines);
            engines.retain(|e| e.state.strong_count() > 0);
            while engines.is_empty() {
                engines = ticker
                    .added
                    .wait(engines)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let mut tick = Duration::MAX;
            for engine in engines.iter() {
                tick = tick.min(engine.settings.tick);
                if let Some(state) = engine.state.upgrade() {
                    look(&state, engine);
                }
            }
            tick
        };
        std::thread::sleep(tick);
    }
}

/// One tick of one engine, on the ticker thread: advances its clock, and
/// wakes its keepalive task if a connection needs it.
fn look(state: &EngineState, engine: &Served) {
    let now = state.clock.refresh();
    if engine.wake.at.load(Ordering::Acquire) != 0 {
        // Woken already; it has not run yet.
        return;
    }
    let needed = state.any_conn(|conn| {
        !conn.is_dead() && decide(&conn.liveness, now, &engine.settings) != Action::Nothing
    });
    if needed {
        engine.wake.at.store(now.max(1), Ordering::Release);
        engine.wake.notify.notify_one();
    }
}

/// The engine's keepalive task, on its runtime: probes and kills when the
/// ticker thread says a connection needs it.
async fn act(state: Weak<EngineState>, wake: Arc<Wake>, s: Settings) {
    loop {
        wake.notify.notified().await;
        let Some(state) = state.upgrade() else { return };
        let now = state.clock.refresh();
        // 0: a wake-up left over from while the task was acting.
        let asked = match wake.at.swap(0, Ordering::AcqRel) {
            0 => now,
            at => at,
        };
        // Woken long ago: the engine did not run (see the module's docs).
        let late = now.saturating_sub(asked) > s.timeout_ms / 2;
        for conn in state.live_conns() {
            if !late {
                tick(&state, &conn, now, &s);
            } else if !conn.is_dead() && decide(&conn.liveness, now, &s) != Action::Nothing {
                probe(&state, &conn, now);
            }
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
