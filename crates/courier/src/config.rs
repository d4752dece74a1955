//! Engine configuration: the builder's settings and the Margo-style JSON.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// Default `max_connections`: connections a server accepts at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default `max_in_flight_per_connection`: requests of one connection whose
/// handlers run at once before the engine stops reading that connection.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// Default `max_queued_response_bytes`: 64 MiB of responses waiting to be
/// written to one connection before the engine stops reading it.
pub const DEFAULT_MAX_QUEUED_RESPONSE_BYTES: usize = 64 << 20;

/// Default `hello_timeout_ms`: 10 seconds for an accepted connection to
/// deliver its first frame.
pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 10_000;

/// Whether an engine listens for connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Listens at an address, serves RPCs, and can also call others
    /// (Margo's `MARGO_SERVER_MODE`, the default).
    #[default]
    Server,
    /// Does not listen; calls servers (and can serve RPCs sent back to it on
    /// the connections it opened).
    Client,
}

/// Default maximum message size: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Default connect timeout: 5 seconds.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;

/// Default polling window after activity, in microseconds (see
/// `docs/benchmarks.md` for the measurements that chose it).
pub const DEFAULT_PROGRESS_SPIN_US: u64 = 50;

/// The engine's settings, as read from JSON and returned (filled in) by
/// `Engine::config`.
///
/// Every key is optional in the JSON; unknown keys are refused so a typo does
/// not go unnoticed. Margo's names are accepted where they exist
/// (`rpc_thread_count`, `use_progress_thread`).
///
/// ```json
/// {
///   "mode": "server",
///   "listen": "tcp://127.0.0.1:0",
///   "use_progress_thread": false,
///   "rpc_thread_count": 0,
///   "max_message_size": 67108864,
///   "connect_timeout_ms": 5000,
///   "default_timeout_ms": null,
///   "enable_remote_shutdown": false,
///   "progress_spin_us": 50,
///   "max_connections": 1024,
///   "max_in_flight_per_connection": 1024,
///   "max_queued_response_bytes": 67108864,
///   "hello_timeout_ms": 10000,
///   "bulk": { "chunk_size": 262144, "window": 8, "timeout_ms": null,
///             "direct": true, "direct_threshold": 65536, "direct_chunk": 4194304 },
///   "transport": { "nodelay": true }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Server or client.
    pub mode: Mode,
    /// Full listen address (`tcp://0.0.0.0:7000`); absent: the protocol's
    /// default loopback address.
    pub listen: Option<String>,
    /// Run the engine's I/O on a dedicated thread.
    pub use_progress_thread: bool,
    /// Threads that run handlers; 0 runs them on the progress loop.
    #[serde(alias = "num_rpc_threads")]
    pub rpc_thread_count: usize,
    /// Largest message (header + payload) sent or accepted.
    pub max_message_size: usize,
    /// How long connecting to a peer may take.
    pub connect_timeout_ms: u64,
    /// Timeout of calls that set none; `null`: wait as long as it takes.
    pub default_timeout_ms: Option<u64>,
    /// Accept `shutdown` requests from peers.
    pub enable_remote_shutdown: bool,
    /// Polling before parking: after each message, keep the engine's
    /// runtime polling for this many microseconds before it may sleep
    /// (Margo's `progress_spindown_msec`). 0: park at once.
    pub progress_spin_us: u64,
    /// Connections a server accepts at once; one more is closed as soon as
    /// it is accepted (see `limits.rs` and `docs/reliability.md`).
    pub max_connections: usize,
    /// Requests of one connection in flight at once; at the limit the
    /// engine stops reading that connection (backpressure) until one ends.
    pub max_in_flight_per_connection: usize,
    /// Bytes of responses waiting to be written to one connection; over it,
    /// the engine stops reading that connection's requests until they drain.
    pub max_queued_response_bytes: usize,
    /// How long an accepted connection may take to deliver its first frame
    /// (the Hello) before it is closed.
    pub hello_timeout_ms: u64,
    /// How bulk transfers run ([`crate::BulkOptions`]; its `timeout` is
    /// `timeout_ms` here).
    pub bulk: crate::BulkOptions,
    /// Options for the transport plugin (override `protocols.toml`'s).
    pub transport: Map<String, Value>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Server,
            listen: None,
            use_progress_thread: false,
            rpc_thread_count: 0,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            default_timeout_ms: None,
            enable_remote_shutdown: false,
            progress_spin_us: DEFAULT_PROGRESS_SPIN_US,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
            max_queued_response_bytes: DEFAULT_MAX_QUEUED_RESPONSE_BYTES,
            hello_timeout_ms: DEFAULT_HELLO_TIMEOUT_MS,
            bulk: crate::BulkOptions::default(),
            transport: Map::new(),
        }
    }
}

impl Config {
    /// Parses a JSON document (an object; every key optional).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key or the syntax error.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| Error::Config(e.to_string()))
    }

    /// Parses a JSON value (an object; every key optional).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key.
    pub fn from_value(value: Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.max_message_size < crate::frame::HEADER_LEN {
            return Err(Error::Config(format!(
                "max_message_size {} is smaller than the {}-byte frame header",
                self.max_message_size,
                crate::frame::HEADER_LEN
            )));
        }
        if self.connect_timeout_ms == 0 {
            return Err(Error::Config("connect_timeout_ms must be positive".into()));
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
            ("hello_timeout_ms", usize::from(self.hello_timeout_ms > 0)),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be positive")));
            }
        }
        for (key, value) in [
            ("bulk.chunk_size", self.bulk.chunk_size),
            ("bulk.window", self.bulk.window),
            ("bulk.direct_chunk", self.bulk.direct_chunk),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{key} must be positive")));
            }
        }
        if self.bulk.timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "bulk.timeout_ms must be positive (null: no timeout)".into(),
            ));
        }
        if self.max_in_flight_per_connection > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(Error::Config(format!(
                "max_in_flight_per_connection {} is over the largest supported, {}",
                self.max_in_flight_per_connection,
                tokio::sync::Semaphore::MAX_PERMITS
            )));
        }
        if self.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(Error::Config(format!(
                "max_connections {} is over the largest supported, {}",
                self.max_connections,
                tokio::sync::Semaphore::MAX_PERMITS
            )));
        }
        Ok(())
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn hello_timeout(&self) -> Duration {
        Duration::from_millis(self.hello_timeout_ms)
    }

    pub(crate) fn progress_spin(&self) -> Duration {
        Duration::from_micros(self.progress_spin_us)
    }

    pub(crate) fn default_timeout(&self) -> Option<Duration> {
        self.default_timeout_ms.map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_margo_names_and_refuses_typos() {
        let c =
            Config::from_json(r#"{"num_rpc_threads": 2, "use_progress_thread": true}"#).unwrap();
        assert_eq!(c.rpc_thread_count, 2);
        assert!(c.use_progress_thread);
        let err = Config::from_json(r#"{"rpc_threads": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `rpc_threads`"), "{err}");
        let err = Config::from_json("{").unwrap_err().to_string();
        assert!(err.starts_with("invalid engine configuration"), "{err}");
    }

    #[test]
    fn limits_are_keys_and_must_be_positive() {
        let c = Config::from_json(
            r#"{"max_connections": 3, "max_in_flight_per_connection": 2,
                "max_queued_response_bytes": 100, "hello_timeout_ms": 50}"#,
        )
        .unwrap();
        assert_eq!((c.max_connections, c.max_in_flight_per_connection), (3, 2));
        assert_eq!((c.max_queued_response_bytes, c.hello_timeout_ms), (100, 50));
        c.validate().unwrap();
        for key in [
            "max_connections",
            "max_in_flight_per_connection",
            "hello_timeout_ms",
        ] {
            let c = Config::from_json(&format!(r#"{{"{key}": 0}}"#)).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn bulk_options_are_a_json_object() {
        let c = Config::from_json(
            r#"{"bulk": {"chunk_size": 65536, "window": 2, "timeout_ms": 1500,
                         "direct": false, "direct_threshold": 1, "direct_chunk": 131072}}"#,
        )
        .unwrap();
        c.validate().unwrap();
        let o = c.bulk;
        assert_eq!((o.chunk_size, o.window, o.direct_chunk), (65536, 2, 131072));
        assert_eq!(o.timeout, Some(Duration::from_millis(1500)));
        assert!(!o.direct);
        assert_eq!(o.direct_threshold, 1);
        // Keys left out keep their defaults.
        let c = Config::from_json(r#"{"bulk": {"window": 3}}"#).unwrap();
        assert_eq!(
            c.bulk,
            crate::BulkOptions {
                window: 3,
                ..Default::default()
            }
        );
        let err = Config::from_json(r#"{"bulk": {"chunk": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `chunk`"), "{err}");
        for bad in [
            r#"{"chunk_size": 0}"#,
            r#"{"window": 0}"#,
            r#"{"direct_chunk": 0}"#,
            r#"{"timeout_ms": 0}"#,
        ] {
            let c = Config::from_json(&format!(r#"{{"bulk": {bad}}}"#)).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("bulk."), "{err}");
        }
    }

    #[test]
    fn default_round_trips_through_json() {
        let c = Config::default();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(Config::from_value(v).unwrap(), c);
    }
}
