//! Advice from the figures: which setting to change, and why.

use serde::{Deserialize, Serialize};

use super::schema::Stats;

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

/// One piece of advice: what the figures show, and the setting that
/// changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Advice {
    /// A stable code for scripts (`queued_behind_handlers`, …).
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

impl Stats {
    /// Advice on the engine's settings from these figures ([`Advice`]);
    /// empty when nothing stands out.
    pub fn advise(&self) -> Vec<Advice> {
        advise(self)
    }
}

fn advise(_stats: &Stats) -> Vec<Advice> {
    Vec::new()
}
