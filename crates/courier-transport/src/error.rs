//! The transport layer's error type.

use std::io;

use crate::Address;

/// What went wrong below the engine: resolving a protocol, parsing an address,
/// listening, connecting, or moving a message.
///
/// Every message names the thing that failed (the address, the peer, the
/// protocol), so it can be shown to a user as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The protocol name is neither a protocol nor an alias in the registry.
    #[error("unknown protocol '{name}' (known protocols: {known})")]
    UnknownProtocol {
        /// The name that was asked for.
        name: String,
        /// The known names and aliases, comma-separated.
        known: String,
    },

    /// The protocol is declared (in `protocols.toml`) but the plugin that
    /// implements it is not part of this program.
    #[error(
        "protocol '{protocol}' is implemented by the '{plugin}' transport plugin, \
         which is not built into this program (plugins available: {available})"
    )]
    PluginNotAvailable {
        /// The canonical protocol name.
        protocol: String,
        /// The plugin it needs.
        plugin: String,
        /// The plugins that are registered, comma-separated.
        available: String,
    },

    /// An address string is malformed, or its plugin part is not one the plugin
    /// understands.
    #[error("invalid address '{address}': {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Listening on an address failed (in use, permission denied, ...).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address that was asked for.
        address: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Connecting to a peer failed (refused, unreachable, no such file, ...).
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address that was asked for.
        address: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A message is larger than the configured maximum. On send, nothing was
    /// written; on receive, the peer announced it and the connection is closed.
    #[error("message of {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// The size of the message (or the size the peer announced).
        size: u64,
        /// The configured maximum.
        max: usize,
    },

    /// An I/O error on an established connection.
    #[error("i/o error on the connection with {peer}: {source}")]
    Io {
        /// The peer's address.
        peer: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The peer sent bytes that are not a valid message stream; the connection
    /// cannot be used any more.
    #[error("malformed data from {peer}: {reason}")]
    Malformed {
        /// The peer's address.
        peer: String,
        /// What was wrong.
        reason: String,
    },

    /// The connection was closed earlier (by this side or by a failed send).
    #[error("the connection with {peer} is closed")]
    Closed {
        /// The peer's address.
        peer: String,
    },

    /// The options given to a plugin (from `protocols.toml` or the engine's
    /// JSON config) are not valid for it.
    #[error("invalid options for the '{plugin}' plugin: {reason}")]
    InvalidOptions {
        /// The plugin's name.
        plugin: String,
        /// What is wrong.
        reason: String,
    },

    /// A protocol table (`protocols.toml`) could not be read or parsed.
    #[error("protocol table {origin}: {reason}")]
    ProtocolTable {
        /// Where the table came from (a path, or "built-in").
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

impl TransportError {
    /// [`TransportError::InvalidAddress`] for `address`, saying `reason`:
    /// what a plugin returns for a plugin part it cannot use.
    ///
    /// ```
    /// use courier_transport::{Address, TransportError};
    ///
    /// let addr: Address = "tcp://nowhere".parse()?;
    /// let err = TransportError::invalid_address(&addr, "expected host:port");
    /// assert_eq!(err.to_string(), "invalid address 'tcp://nowhere': expected host:port");
    /// # Ok::<(), TransportError>(())
    /// ```
    pub fn invalid_address(address: &Address, reason: impl Into<String>) -> Self {
        Self::InvalidAddress {
            address: address.to_string(),
            reason: reason.into(),
        }
    }

    /// [`TransportError::InvalidOptions`] of the plugin named `plugin`,
    /// saying `reason`: for a check that a type alone cannot express (two
    /// options that go together, a file that cannot be read).
    pub fn invalid_options(plugin: &str, reason: impl Into<String>) -> Self {
        Self::InvalidOptions {
            plugin: plugin.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether an error returned by **send** leaves the connection unusable.
    /// Only [`TransportError::MessageTooLarge`] does not: a sender refuses an
    /// oversized message before writing anything. (Every error returned by
    /// `recv` ends the connection, `MessageTooLarge` included.)
    pub fn is_fatal_to_connection(&self) -> bool {
        !matches!(self, Self::MessageTooLarge { .. })
    }
}
