//! What can go wrong when making, joining, leaving or reading a group.

use std::path::PathBuf;

/// An error of the membership: its message names what failed (the group,
/// the address, the file).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The engine has no address others could reach it at (a client-mode
    /// engine): it cannot be a member.
    #[error("a client-mode engine cannot be a member of group '{group}': build it in server mode")]
    NotListening {
        /// The group.
        group: String,
    },

    /// The group's options are not usable (a zero period, a probe timeout
    /// not shorter than the probe period, ...).
    #[error("invalid group options: {0}")]
    Options(String),

    /// No tokio runtime runs here: a group's task needs one.
    #[error("group '{group}' needs a tokio runtime, and none runs on this thread")]
    NoRuntime {
        /// The group.
        group: String,
    },

    /// This engine is already a member of a group of that name.
    #[error("this engine ({address}) is already a member of group '{group}'")]
    AlreadyMember {
        /// The group.
        group: String,
        /// The engine's address.
        address: String,
    },

    /// The engine could not register the group's RPCs.
    #[error("cannot register the RPCs of group '{group}': {source}")]
    Register {
        /// The group.
        group: String,
        /// The engine's error.
        #[source]
        source: Box<courier::Error>,
    },

    /// Joining failed: no address given answered as a member of the group.
    /// `tried` says what each address did.
    #[error("cannot join group '{group}': no member answered ({tried})")]
    NoMemberAnswered {
        /// The group.
        group: String,
        /// Each address tried and what went wrong with it, `; `-separated.
        tried: String,
    },

    /// A join was asked with no address to join through.
    #[error("cannot join group '{group}': no address to join through")]
    NoAddress {
        /// The group.
        group: String,
    },

    /// The group's task has stopped (the group was left, or its engine
    /// finalized).
    #[error("group '{group}' has stopped (left, or its engine finalized)")]
    Stopped {
        /// The group.
        group: String,
    },

    /// A group file could not be read (other than not existing, which
    /// [`crate::Group::open`] takes as "create the group").
    #[error("cannot read the group file {}: {source}", path.display())]
    FileUnreadable {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// A group file does not exist (reading it as a view source).
    #[error("the group file {} does not exist", path.display())]
    FileMissing {
        /// The file.
        path: PathBuf,
    },

    /// A group file is not a group file: not JSON, a field missing or of
    /// the wrong type, an empty group name, another wire version.
    #[error("the group file {} is malformed: {reason}", path.display())]
    FileMalformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A group file lists members, none of which answered: the group it
    /// describes is gone (or unreachable from here).
    #[error(
        "the group file {} is stale: no member of group '{group}' it lists answered ({tried}); \
         remove the file to start the group anew",
        path.display()
    )]
    FileStale {
        /// The file.
        path: PathBuf,
        /// The group it names.
        group: String,
        /// Each address tried and what went wrong with it.
        tried: String,
    },

    /// A group file could not be written.
    #[error("cannot write the group file {}: {source}", path.display())]
    FileWrite {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// Reading a member's view failed: the lookup, the call, or the
    /// member's answer.
    #[error("cannot read the view of group '{group}' from {address}: {source}")]
    View {
        /// The group asked for (`*` for whichever the member is in).
        group: String,
        /// The member's address.
        address: String,
        /// The engine's error.
        #[source]
        source: Box<courier::Error>,
    },
}

/// What the membership's functions return.
pub type Result<T, E = MembershipError> = std::result::Result<T, E>;
