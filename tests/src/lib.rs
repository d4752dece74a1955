//! Shared helpers for the conformance suite (filled in by the suite).
