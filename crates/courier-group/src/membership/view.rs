//! What a member knows of its group: the view.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a member, as one member sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Some member's probe went unanswered: down unless it refutes the
    /// suspicion within `suspect_to_down`. Still live for the purpose of
    /// calls.
    Suspect,
    /// Declared down: it stopped answering (it died, or cannot be reached).
    Down,
    /// It left the group on purpose ([`crate::Group::leave`]).
    Left,
}

impl MemberState {
    /// Alive or suspected: a member calls may go to.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }

    /// The state's name, as printed and in JSON (`alive`, `suspect`,
    /// `down`, `left`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member in a view.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Its address, as `Engine::lookup` takes it (maybe an address set).
    pub address: String,
    /// Its state.
    pub state: MemberState,
    /// Its generation: new at each start and each rejoin (microseconds
    /// since the epoch when it was made), so a member restarted at the same
    /// address has a larger one.
    pub generation: u64,
}

/// A member's view of its group: every member it knows, itself included,
/// live and departed (until `forget_down_after`), sorted by address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The group's name.
    pub group: String,
    /// The address of the member whose view this is.
    pub viewer: String,
    /// Changes (grows by one) whenever the members or their states change
    /// in this member's view; a view's versions are its own, not the
    /// group's.
    pub version: u64,
    /// The members, sorted by address.
    pub members: Vec<Member>,
}

impl View {
    /// The live members (alive or suspected).
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.state.is_live())
    }

    /// The member at `address`, if the view has it.
    pub fn member(&self, address: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.address == address)
    }

    /// The state of the member at `address`, if the view has it.
    pub fn state_of(&self, address: &str) -> Option<MemberState> {
        self.member(address).map(|m| m.state)
    }

    /// What changed from `earlier` (an older view, maybe another member's)
    /// to this one, member by member, sorted by address: a member new to
    /// the view, one whose state or generation changed (a restart at the
    /// same address), one the view forgot.
    ///
    /// ```
    /// use courier_group::{Member, MemberState, View};
    ///
    /// let member = |state, generation| Member { address: "tcp://h:1".into(), state, generation };
    /// let view = |members| View { group: "kv".into(), viewer: "tcp://h:0".into(), version: 1, members };
    /// let before = view(vec![member(MemberState::Alive, 1)]);
    /// let after = view(vec![member(MemberState::Down, 1)]);
    /// let changes = after.changes_since(&before);
    /// assert_eq!(changes.len(), 1);
    /// assert_eq!(changes[0].to_string(), "tcp://h:1 down");
    /// ```
    pub fn changes_since(&self, earlier: &Self) -> Vec<Change> {
        let by_address = |v: &Self| -> BTreeMap<String, Member> {
            v.members
                .iter()
                .map(|m| (m.address.clone(), m.clone()))
                .collect()
        };
        let (mut old, new) = (by_address(earlier), by_address(self));
        let mut changes = Vec::new();
        for (address, after) in new {
            let before = old.remove(&address);
            let unchanged = before
                .as_ref()
                .is_some_and(|b| b.state == after.state && b.generation == after.generation);
            if !unchanged {
                changes.push(Change {
                    before,
                    after: Some(after),
                });
            }
        }
        changes.extend(old.into_values().map(|before| Change {
            before: Some(before),
            after: None,
        }));
        changes.sort_by(|a, b| a.address().cmp(b.address()));
        changes
    }
}

/// How one member changed between two views ([`View::changes_since`]).
///
/// Displayed as a line: `ADDRESS STATE`, `ADDRESS alive (rejoined)` for a
/// newer generation at the same address, `ADDRESS forgotten` for a member
/// the newer view no longer has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The member in the earlier view (`None`: new to the view).
    pub before: Option<Member>,
    /// The member in the later view (`None`: forgotten).
    pub after: Option<Member>,
}

impl Change {
    /// The member's address.
    pub fn address(&self) -> &str {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .map_or("", |m| m.address.as_str())
    }

    /// Whether the member came back as a newer generation at its address.
    pub fn rejoined(&self) -> bool {
        matches!((&self.before, &self.after), (Some(b), Some(a)) if a.generation > b.generation)
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.after {
            None => write!(f, "{} forgotten", self.address()),
            Some(a) if self.rejoined() => write!(f, "{} {} (rejoined)", a.address, a.state),
            Some(a) => write!(f, "{} {}", a.address, a.state),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn member(address: &str, state: MemberState, generation: u64) -> Member {
        Member {
            address: address.into(),
            state,
            generation,
        }
    }

    fn view(members: Vec<Member>) -> View {
        View {
            group: "g".into(),
            viewer: "a".into(),
            version: 0,
            members,
        }
    }

    #[test]
    fn changes_name_each_member_that_came_changed_rejoined_or_went() {
        use MemberState::*;
        let before = view(vec![
            member("a", Alive, 1),
            member("b", Alive, 1),
            member("c", Alive, 1),
            member("d", Suspect, 1),
        ]);
        let after = view(vec![
            member("a", Alive, 1),
            member("b", Alive, 2),
            member("bb", Alive, 1),
            member("d", Down, 1),
            member("e", Left, 1),
        ]);
        let lines: Vec<String> = after
            .changes_since(&before)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "b alive (rejoined)",
                "bb alive",
                "c forgotten",
                "d down",
                "e left"
            ]
        );
        assert!(after.changes_since(&after).is_empty());
        assert_eq!(view(vec![]).changes_since(&before).len(), 4);
    }
}
