//! A group's times and rates, and how they map to foca's configuration.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{MembershipError, Result};

/// Default probe period: foca's LAN configuration (after memberlist's).
pub const DEFAULT_PROBE_PERIOD_MS: u64 = 1_000;
/// Default probe timeout (foca's `probe_rtt`, LAN).
pub const DEFAULT_PROBE_TIMEOUT_MS: u64 = 500;
/// Default time from suspected to down: foca's LAN formula,
/// `max(1, log10(n)) × 4 × probe period`, for groups of up to 10 members.
pub const DEFAULT_SUSPECT_TO_DOWN_MS: u64 = 4_000;
/// Default number of members asked to probe indirectly (foca's LAN value).
pub const DEFAULT_INDIRECT_PROBES: usize = 3;
/// Default number of times an update is piggybacked: foca's LAN formula,
/// `log10(n + 1) × 4`, for groups of up to 30 members.
pub const DEFAULT_MAX_TRANSMISSIONS: u8 = 5;
/// Default gossip period (foca's LAN value).
pub const DEFAULT_GOSSIP_PERIOD_MS: u64 = 200;
/// Default number of members each gossip round goes to (foca's LAN value).
pub const DEFAULT_GOSSIP_FANOUT: usize = 3;
/// Default period of asking one member for more members (foca's LAN value).
pub const DEFAULT_ANNOUNCE_PERIOD_MS: u64 = 30_000;
/// Default period of announcing to members believed down, which heals a
/// partition (foca's LAN value).
pub const DEFAULT_ANNOUNCE_TO_DOWN_PERIOD_MS: u64 = 65_000;
/// Default time a down or departed member stays in the view (foca's
/// default, 24 h).
pub const DEFAULT_FORGET_DOWN_AFTER_MS: u64 = 24 * 60 * 60 * 1_000;
/// Default time a join waits for each address it tries.
pub const DEFAULT_JOIN_TIMEOUT_MS: u64 = 3_000;
/// Default largest membership message (foca packet). Larger than foca's
/// UDP default of 1400 bytes: the messages ride on Courier RPCs, not on
/// datagrams, and a larger one carries more of the view at once.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 16 * 1024;

/// A group's times and rates. Every member of a group should use the same.
///
/// The defaults are foca's LAN configuration (`Config::new_lan`, itself
/// after memberlist's), sized for groups of up to about 30 members; see
/// the `DEFAULT_*` constants of this module. A member that stops
/// answering is suspected within about `probe_period` and declared down
/// `suspect_to_down` later: with the defaults, a death is known within
/// about 5 s, and spread within a few gossip periods more.
///
/// In JSON (`courier serve --group-options`), every field is optional and
/// durations are in milliseconds:
///
/// ```
/// let options: courier_group::GroupOptions =
///     serde_json::from_str(r#"{"probe_period_ms": 200, "probe_timeout_ms": 80}"#).unwrap();
/// assert_eq!(options.probe_period, std::time::Duration::from_millis(200));
/// assert_eq!(options.suspect_to_down, std::time::Duration::from_secs(4));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupOptions {
    /// How often each member probes another, chosen at random
    /// (`probe_period_ms`).
    #[serde(rename = "probe_period_ms", with = "millis")]
    pub probe_period: Duration,
    /// How long a direct probe waits for its answer before asking others
    /// to probe (`probe_timeout_ms`); shorter than the probe period.
    #[serde(rename = "probe_timeout_ms", with = "millis")]
    pub probe_timeout: Duration,
    /// How long a suspected member has to refute the suspicion before it
    /// is declared down (`suspect_to_down_ms`).
    #[serde(rename = "suspect_to_down_ms", with = "millis")]
    pub suspect_to_down: Duration,
    /// How many members are asked to probe a member that did not answer.
    pub indirect_probes: usize,
    /// How many times each update is sent along with other messages.
    pub max_transmissions: u8,
    /// How often updates are also gossiped on their own
    /// (`gossip_period_ms`).
    #[serde(rename = "gossip_period_ms", with = "millis")]
    pub gossip_period: Duration,
    /// How many members each gossip round goes to.
    pub gossip_fanout: usize,
    /// How often a member asks another for the members it knows
    /// (`announce_period_ms`).
    #[serde(rename = "announce_period_ms", with = "millis")]
    pub announce_period: Duration,
    /// How often a member announces itself to members believed down, so
    /// that the two sides of a healed partition find each other again
    /// (`announce_to_down_period_ms`).
    #[serde(rename = "announce_to_down_period_ms", with = "millis")]
    pub announce_to_down_period: Duration,
    /// How long a down or departed member stays in the view
    /// (`forget_down_after_ms`).
    #[serde(rename = "forget_down_after_ms", with = "millis")]
    pub forget_down_after: Duration,
    /// How long a join waits for each address it tries (`join_timeout_ms`).
    #[serde(rename = "join_timeout_ms", with = "millis")]
    pub join_timeout: Duration,
    /// The largest membership message, in bytes.
    pub max_packet_bytes: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(DEFAULT_PROBE_PERIOD_MS),
            probe_timeout: Duration::from_millis(DEFAULT_PROBE_TIMEOUT_MS),
            suspect_to_down: Duration::from_millis(DEFAULT_SUSPECT_TO_DOWN_MS),
            indirect_probes: DEFAULT_INDIRECT_PROBES,
            max_transmissions: DEFAULT_MAX_TRANSMISSIONS,
            gossip_period: Duration::from_millis(DEFAULT_GOSSIP_PERIOD_MS),
            gossip_fanout: DEFAULT_GOSSIP_FANOUT,
            announce_period: Duration::from_millis(DEFAULT_ANNOUNCE_PERIOD_MS),
            announce_to_down_period: Duration::from_millis(DEFAULT_ANNOUNCE_TO_DOWN_PERIOD_MS),
            forget_down_after: Duration::from_millis(DEFAULT_FORGET_DOWN_AFTER_MS),
            join_timeout: Duration::from_millis(DEFAULT_JOIN_TIMEOUT_MS),
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
        }
    }
}

impl GroupOptions {
    /// Options from JSON text (every field optional, durations in ms).
    ///
    /// # Errors
    /// [`MembershipError::Options`]: not JSON, an unknown field, a value
    /// of the wrong type, or options [`GroupOptions::validate`] refuses.
    pub fn from_json(text: &str) -> Result<Self> {
        let options: Self = serde_json::from_str(text)
            .map_err(|e| MembershipError::Options(format!("cannot read the JSON: {e}")))?;
        options.validate()?;
        Ok(options)
    }

    /// Checks that foca can run with these options.
    ///
    /// # Errors
    /// [`MembershipError::Options`], naming the field: a zero duration or
    /// count, or a probe timeout not shorter than the probe period.
    pub fn validate(&self) -> Result<()> {
        self.to_foca().map(|_| ())
    }

    /// foca's configuration for these options.
    pub(crate) fn to_foca(&self) -> Result<foca::Config> {
        let bad = |what: &str| Err(MembershipError::Options(what.to_owned()));
        let durations = [
            ("probe_period_ms", self.probe_period),
            ("probe_timeout_ms", self.probe_timeout),
            ("suspect_to_down_ms", self.suspect_to_down),
            ("gossip_period_ms", self.gossip_period),
            ("announce_period_ms", self.announce_period),
            ("announce_to_down_period_ms", self.announce_to_down_period),
            ("forget_down_after_ms", self.forget_down_after),
            ("join_timeout_ms", self.join_timeout),
        ];
        for (name, d) in durations {
            if d.is_zero() {
                return bad(&format!("{name} must be at least 1"));
            }
        }
        if self.probe_timeout >= self.probe_period {
            return bad(&format!(
                "probe_timeout_ms ({}) must be shorter than probe_period_ms ({})",
                self.probe_timeout.as_millis(),
                self.probe_period.as_millis()
            ));
        }
        let nonzero = |name: &str, n: usize| {
            NonZeroUsize::new(n)
                .ok_or_else(|| MembershipError::Options(format!("{name} must be at least 1")))
        };
        let indirect = nonzero("indirect_probes", self.indirect_probes)?;
        let fanout = nonzero("gossip_fanout", self.gossip_fanout)?;
        // A packet must hold at least a header and one member update.
        if self.max_packet_bytes < 512 {
            return bad("max_packet_bytes must be at least 512");
        }
        let packet = nonzero("max_packet_bytes", self.max_packet_bytes)?;
        let Some(max_transmissions) = NonZeroU8::new(self.max_transmissions) else {
            return bad("max_transmissions must be at least 1");
        };
        let one = NonZeroUsize::MIN;
        let two = one.saturating_add(1);
        Ok(foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_timeout,
            num_indirect_probes: indirect,
            max_transmissions,
            suspect_to_down_after: self.suspect_to_down,
            remove_down_after: self.forget_down_after,
            max_packet_size: packet,
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_period,
                num_members: one,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_to_down_period,
                num_members: two,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_period,
                num_members: fanout,
            }),
        })
    }
}

/// Durations as whole milliseconds in JSON.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_json() {
        let d = GroupOptions::default();
        d.validate().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"probe_period_ms\":1000"), "{json}");
        assert_eq!(GroupOptions::from_json(&json).unwrap(), d);
        assert_eq!(GroupOptions::from_json("{}").unwrap(), d);
        let c = d.to_foca().unwrap();
        assert_eq!(c.probe_period, Duration::from_secs(1));
        assert_eq!(c.suspect_to_down_after, Duration::from_secs(4));
    }

    #[test]
    fn bad_options_name_the_field() {
        let e = GroupOptions::from_json(r#"{"probe_period_ms": 100, "probe_timeout_ms": 100}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("probe_timeout_ms"), "{e}");
        let e = GroupOptions::from_json(r#"{"gossip_fanout": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gossip_fanout"), "{e}");
        let e = GroupOptions::from_json(r#"{"probe_periode_ms": 100}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("probe_periode_ms"), "{e}");
        let e = GroupOptions::from_json(r#"{"suspect_to_down_ms": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("suspect_to_down_ms"), "{e}");
    }
}
