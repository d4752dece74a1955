//! The chaos layer's options: what to inject, where, and from which seed.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use courier_transport::{PluginContext, TransportError};

use crate::PLUGIN_NAME;

/// The seed used when none is given: runs with the same options fault the
/// same way unless told otherwise.
pub const DEFAULT_SEED: u64 = 0;

/// How long a message held back for reordering waits for the next one
/// before it goes on alone, by default.
pub const DEFAULT_REORDER_WINDOW: Duration = Duration::from_millis(10);

/// Every option the layer knows.
const KNOWN: &[&str] = &[
    "seed",
    "latency_us",
    "jitter_us",
    "drop",
    "duplicate",
    "reorder",
    "reorder_window_us",
    "reset",
    "reset_after",
    "grace",
    "direction",
];

/// One side of a connection: the one that connected, or the one that
/// accepted. Messages flow from one to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that called `connect` (an engine making calls).
    Connector,
    /// The side that accepted the connection (a server).
    Acceptor,
}

impl Role {
    /// The other side.
    pub fn peer(self) -> Self {
        match self {
            Self::Connector => Self::Acceptor,
            Self::Acceptor => Self::Connector,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connector => "connector",
            Self::Acceptor => "acceptor",
        })
    }
}

/// Which messages the layer faults, named by the side that sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// Messages both ways (the default).
    #[default]
    Both,
    /// Only messages the connecting side sends (an engine's requests).
    Connector,
    /// Only messages the accepting side sends (a server's responses).
    Acceptor,
}

impl Direction {
    /// Whether messages sent by `sender` are faulted.
    pub fn includes(self, sender: Role) -> bool {
        match self {
            Self::Both => true,
            Self::Connector => sender == Role::Connector,
            Self::Acceptor => sender == Role::Acceptor,
        }
    }
}

/// What the chaos layer injects. [`ChaosOptions::default`] injects nothing:
/// the layer is then a pure passthrough.
///
/// Probabilities are drawn per message from a stream of pseudo-random
/// numbers derived from `seed`, the connection (the n-th connection this
/// transport opened, or the n-th one a listener accepted) and the
/// direction, so the same seed replays the same faults on the same
/// connection whatever the other connections do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChaosOptions {
    /// The seed every fault decision derives from (`seed`).
    pub seed: u64,
    /// How long each message waits before it is handed on (`latency_us`).
    pub latency: Duration,
    /// Up to this much more, drawn per message (`jitter_us`). Messages keep
    /// their order: a message never overtakes an earlier one.
    pub jitter: Duration,
    /// Probability that a message is silently lost (`drop`).
    pub drop: f64,
    /// Probability that a message is delivered twice (`duplicate`).
    pub duplicate: f64,
    /// Probability that a message is held back and delivered after the next
    /// one (`reorder`).
    pub reorder: f64,
    /// How long a held message waits for the next one before it goes on
    /// alone (`reorder_window_us`); `None` (`0` in the options): until the
    /// next message or the end of the connection.
    pub reorder_window: Option<Duration>,
    /// Probability that a send resets the connection instead (`reset`).
    pub reset: f64,
    /// Reset on the send that follows this many messages of a direction
    /// (`reset_after`).
    pub reset_after: Option<u64>,
    /// The first this-many messages of each direction are never dropped,
    /// duplicated, reordered or reset (`grace`): a handshake such as the
    /// engine's Hello frame goes through.
    pub grace: u64,
    /// Which messages are faulted (`direction`).
    pub direction: Direction,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        Self {
            seed: DEFAULT_SEED,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Some(DEFAULT_REORDER_WINDOW),
            reset: 0.0,
            reset_after: None,
            grace: 0,
            direction: Direction::Both,
        }
    }
}

impl ChaosOptions {
    /// Reads the options of a `[layers.<name>]` entry and the engine's
    /// `"transport": {"<name>": {...}}` object. Unknown keys, probabilities
    /// outside `[0, 1]` and unknown directions are refused.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] naming the offending option.
    pub fn from_context(ctx: &PluginContext<'_>) -> Result<Self, TransportError> {
        ctx.check_known_options(PLUGIN_NAME, KNOWN)?;
        let us = |key: &str| -> Result<Duration, TransportError> {
            Ok(Duration::from_micros(ctx.u64_option(
                PLUGIN_NAME,
                key,
                0,
            )?))
        };
        let probability = |key: &str| -> Result<f64, TransportError> {
            let p = ctx.f64_option(PLUGIN_NAME, key, 0.0)?;
            if (0.0..=1.0).contains(&p) {
                Ok(p)
            } else {
                Err(invalid(format!(
                    "option '{key}' is a probability, from 0 to 1, not {p}"
                )))
            }
        };
        let seed = match ctx.options.get("seed") {
            Some(v) if v.is_string() => match ctx.str_option(PLUGIN_NAME, "seed")? {
                Some("random") => random_seed(),
                Some(other) => {
                    return Err(invalid(format!(
                        "option 'seed' is a non-negative integer or \"random\", not \"{other}\""
                    )))
                }
                None => DEFAULT_SEED,
            },
            _ => ctx.u64_option(PLUGIN_NAME, "seed", DEFAULT_SEED)?,
        };
        let direction = match ctx.str_option(PLUGIN_NAME, "direction")? {
            None | Some("both") => Direction::Both,
            Some("connector") => Direction::Connector,
            Some("acceptor") => Direction::Acceptor,
            Some(other) => {
                return Err(invalid(format!(
                    "option 'direction' is \"both\", \"connector\" or \"acceptor\", not \"{other}\""
                )))
            }
        };
        let window = ctx.u64_option(
            PLUGIN_NAME,
            "reorder_window_us",
            DEFAULT_REORDER_WINDOW.as_micros() as u64,
        )?;
        Ok(Self {
            seed,
            latency: us("latency_us")?,
            jitter: us("jitter_us")?,
            drop: probability("drop")?,
            duplicate: probability("duplicate")?,
            reorder: probability("reorder")?,
            reorder_window: (window > 0).then(|| Duration::from_micros(window)),
            reset: probability("reset")?,
            reset_after: match ctx.options.get("reset_after") {
                None => None,
                Some(_) => Some(ctx.u64_option(PLUGIN_NAME, "reset_after", 0)?),
            },
            grace: ctx.u64_option(PLUGIN_NAME, "grace", 0)?,
            direction,
        })
    }

    /// Whether what a connection receives is delayed, dropped, duplicated or
    /// reordered (decided and done where messages are received).
    pub fn faults_delivery(&self) -> bool {
        self.delays() || self.drop > 0.0 || self.duplicate > 0.0 || self.reorder > 0.0
    }

    /// Whether messages wait before they are handed on.
    pub fn delays(&self) -> bool {
        !self.latency.is_zero() || !self.jitter.is_zero()
    }

    /// Whether sends may reset the connection (decided where messages are
    /// sent).
    pub fn faults_sends(&self) -> bool {
        self.reset > 0.0 || self.reset_after.is_some()
    }

    /// Whether the layer changes nothing at all.
    pub fn is_passthrough(&self) -> bool {
        !self.faults_delivery() && !self.faults_sends()
    }
}

impl fmt::Display for ChaosOptions {
    /// The options as they are written in the engine's JSON, with the seed
    /// first (what a log line needs for a replay).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"seed\": {}", self.seed)?;
        let us = |d: Duration| d.as_micros();
        if !self.latency.is_zero() {
            write!(f, ", \"latency_us\": {}", us(self.latency))?;
        }
        if !self.jitter.is_zero() {
            write!(f, ", \"jitter_us\": {}", us(self.jitter))?;
        }
        for (key, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
            ("reset", self.reset),
        ] {
            if p > 0.0 {
                write!(f, ", \"{key}\": {p}")?;
            }
        }
        if self.reorder > 0.0 {
            let w = self.reorder_window.map_or(0, us);
            write!(f, ", \"reorder_window_us\": {w}")?;
        }
        if let Some(n) = self.reset_after {
            write!(f, ", \"reset_after\": {n}")?;
        }
        if self.grace > 0 {
            write!(f, ", \"grace\": {}", self.grace)?;
        }
        match self.direction {
            Direction::Both => Ok(()),
            Direction::Connector => f.write_str(", \"direction\": \"connector\""),
            Direction::Acceptor => f.write_str(", \"direction\": \"acceptor\""),
        }
    }
}

fn invalid(reason: String) -> TransportError {
    TransportError::invalid_options(PLUGIN_NAME, reason)
}

/// A fresh seed for `seed = "random"`: the process's random hash keys mixed
/// with the clock. (It is logged, so the run can be replayed.)
fn random_seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.finish()
}
