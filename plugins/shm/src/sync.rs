//! The atomics the ring protocol is written against.
//!
//! [`crate::ring`] names its atomics through `super::sync`, never through
//! `std` directly. Here they are the standard ones, which have the same size
//! and layout as the plain integers, so a ring's control block can be laid
//! over shared memory. `loom_model.rs` compiles the very same `ring.rs` a
//! second time next to a `sync` module of loom's atomics, and checks the
//! protocol there (the style of tokio's `loom/mod.rs`, per module instead of
//! per build, so that the model tests need no `--cfg loom` rebuild of the
//! dependencies).

pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    #[cfg(test)]
    pub(crate) use std::sync::atomic::AtomicU8;
}

#[cfg(test)]
pub(crate) use std::sync::Arc;
