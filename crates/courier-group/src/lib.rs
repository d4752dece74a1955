//! Groups of Courier engines (issue 21): a membership that converges
//! across hosts, and calls to a group that keep working while members die
//! and return.
//!
//! Two halves meet at [`Members`]: the membership (`membership`, SWIM by
//! the `foca` crate, carried over Courier's own RPCs so that it works on
//! every transport) says which members are alive; a group call
//! (`calls`) chooses among them, retries what is safe to retry, and stays
//! within its caller's deadline. [`StaticMembers`] is a group given by a
//! fixed list.

#![forbid(unsafe_code)]

mod calls;
pub mod membership;

pub use calls::{
    Backoff, GroupClient, GroupClientBuilder, GroupFunction, GroupStats, Hedge, MemberStatus,
    RawGroupFunction, RetryBudget,
};
pub use membership::{
    Change, Dropped, Group, GroupFile, GroupOptions, Member, MemberState, MembershipError, View,
    WIRE_VERSION,
};

/// Where a group call finds the members it may call.
pub trait Members: Send + Sync + 'static {
    /// The addresses (as [`courier::Engine::lookup`] takes them) of the
    /// members believed alive now, in no particular order.
    fn live(&self) -> Vec<String>;

    /// A number that changes whenever [`Members::live`] may have changed
    /// (the view's version), so a caller can keep what it derived from
    /// the list until then.
    fn version(&self) -> u64;
}

/// A group given by a fixed list of addresses: never changes.
#[derive(Debug, Clone)]
pub struct StaticMembers {
    addresses: Vec<String>,
}

impl StaticMembers {
    /// A group of `addresses`.
    pub fn new(addresses: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            addresses: addresses.into_iter().map(Into::into).collect(),
        }
    }
}

impl Members for StaticMembers {
    fn live(&self) -> Vec<String> {
        self.addresses.clone()
    }

    fn version(&self) -> u64 {
        0
    }
}
