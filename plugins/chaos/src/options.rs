//! The chaos layer's options: what to inject, where, and from which seed.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use courier_transport::{PluginContext, TransportError};
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use crate::PLUGIN_NAME;

/// The seed used when none is given: runs with the same options fault the
/// same way unless told otherwise.
pub const DEFAULT_SEED: u64 = 0;

/// How long a message held back for reordering waits for the next one
/// before it goes on alone, by default.
pub const DEFAULT_REORDER_WINDOW: Duration = Duration::from_millis(10);

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

/// Which messages the layer faults, named by the side that sends them
/// (written `"both"`, `"connector"` or `"acceptor"` in the options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
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
///
/// It is read with serde from the layer's options, each field from the
/// option named in its docs; unknown keys, probabilities outside `[0, 1]`
/// and unknown directions are refused.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ChaosOptions {
    /// The seed every fault decision derives from (`seed`: an integer, or
    /// `"random"` for a fresh one).
    #[serde(deserialize_with = "seed")]
    pub seed: u64,
    /// How long each message waits before it is handed on (`latency_us`).
    #[serde(rename = "latency_us", deserialize_with = "micros")]
    pub latency: Duration,
    /// Up to this much more, drawn per message (`jitter_us`). Messages keep
    /// their order: a message never overtakes an earlier one.
    #[serde(rename = "jitter_us", deserialize_with = "micros")]
    pub jitter: Duration,
    /// Probability that a message is silently lost (`drop`).
    #[serde(deserialize_with = "probability")]
    pub drop: f64,
    /// Probability that a message is delivered twice (`duplicate`).
    #[serde(deserialize_with = "probability")]
    pub duplicate: f64,
    /// Probability that a message is held back and delivered after the next
    /// one (`reorder`).
    #[serde(deserialize_with = "probability")]
    pub reorder: f64,
    /// How long a held message waits for the next one before it goes on
    /// alone (`reorder_window_us`); `None` (`0` in the options): until the
    /// next message or the end of the connection.
    #[serde(rename = "reorder_window_us", deserialize_with = "window")]
    pub reorder_window: Option<Duration>,
    /// Probability that a send resets the connection instead (`reset`).
    #[serde(deserialize_with = "probability")]
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
    /// `"transport": {"<name>": {...}}` object.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] naming the offending option.
    pub fn from_context(ctx: &PluginContext<'_>) -> Result<Self, TransportError> {
        ctx.options(PLUGIN_NAME)
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

/// `seed`: a non-negative integer, or `"random"` for a fresh seed.
fn seed<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Seed;
    impl Visitor<'_> for Seed {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer or \"random\"")
        }
        fn visit_u64<E: de::Error>(self, seed: u64) -> Result<u64, E> {
            Ok(seed)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<u64, E> {
            match s {
                "random" => Ok(random_seed()),
                _ => Err(E::invalid_value(Unexpected::Str(s), &self)),
            }
        }
    }
    d.deserialize_any(Seed)
}

/// A duration in microseconds.
fn micros<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_micros)
}

/// `reorder_window_us`: microseconds, `0` for no window.
fn window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    micros(d).map(|w| (!w.is_zero()).then_some(w))
}

/// A number from 0 to 1 (an integer is a number).
fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let p = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(de::Error::invalid_value(
            Unexpected::Float(p),
            &"a probability, from 0 to 1",
        ))
    }
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
