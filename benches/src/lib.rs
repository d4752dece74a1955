//! Micro-benchmarks for Courier (see benches/).
