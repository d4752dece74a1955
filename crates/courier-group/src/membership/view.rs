//! What a member knows of its group: the view.

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
}
