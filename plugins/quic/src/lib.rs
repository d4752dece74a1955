//! QUIC transport plugin for Courier (in progress).
