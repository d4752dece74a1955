//! Shared-memory transport plugin for Courier (in progress).
