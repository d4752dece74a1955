//! Transport-level addresses: `<protocol>://<plugin part>`.

use std::fmt;
use std::str::FromStr;

use crate::TransportError;

/// A transport address such as `tcp://127.0.0.1:41235` or `unix:///tmp/x.sock`.
///
/// An address is two strings: the protocol name before `://` and the part after
/// it, which only the transport plugin interprets (a host and port, a path, a
/// segment name, ...). Parsing checks the shape, not the plugin part: the plugin
/// reports a malformed plugin part when it is asked to listen or connect.
///
/// An empty plugin part (`tcp://`, or just the protocol name given to the
/// engine) asks the plugin for its default listen address, which is always on
/// loopback.
///
/// ```
/// use courier_transport::Address;
///
/// let addr: Address = "tcp://127.0.0.1:7000".parse()?;
/// assert_eq!(addr.protocol(), "tcp");
/// assert_eq!(addr.rest(), "127.0.0.1:7000");
/// assert_eq!(addr.to_string(), "tcp://127.0.0.1:7000");
/// assert!("127.0.0.1:7000".parse::<Address>().is_err());
/// # Ok::<(), courier_transport::TransportError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    protocol: String,
    rest: String,
}

impl Address {
    /// Builds an address from a protocol name and a plugin part.
    ///
    /// # Errors
    /// [`TransportError::InvalidAddress`] when the protocol name is empty or
    /// holds characters other than ASCII letters, digits, `+`, `-`, `_` and `.`.
    pub fn new(
        protocol: impl Into<String>,
        rest: impl Into<String>,
    ) -> Result<Self, TransportError> {
        let protocol = protocol.into();
        let rest = rest.into();
        check_protocol_name(&protocol).map_err(|reason| TransportError::InvalidAddress {
            address: format!("{protocol}://{rest}"),
            reason,
        })?;
        Ok(Self { protocol, rest })
    }

    /// The protocol name, as written (it may be an alias such as `ofi+tcp`).
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Everything after `://`, interpreted by the plugin only.
    pub fn rest(&self) -> &str {
        &self.rest
    }

    /// Another plugin part under the same protocol name.
    pub fn with_rest(&self, rest: impl Into<String>) -> Self {
        Self {
            protocol: self.protocol.clone(),
            rest: rest.into(),
        }
    }

    /// The same plugin part under another protocol name (used to replace an
    /// alias by the canonical name).
    pub fn with_protocol(&self, protocol: &str) -> Self {
        Self {
            protocol: protocol.to_owned(),
            rest: self.rest.clone(),
        }
    }
}

/// Checks that `name` can be a protocol name; returns the reason when not.
pub(crate) fn check_protocol_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the protocol name before '://' is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '_' | '.')))
    {
        return Err(format!("protocol name '{name}' contains '{c}'"));
    }
    Ok(())
}

impl FromStr for Address {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((protocol, rest)) = s.split_once("://") else {
            return Err(TransportError::InvalidAddress {
                address: s.to_owned(),
                reason: "expected '<protocol>://<address>', e.g. 'tcp://127.0.0.1:7000'".into(),
            });
        };
        Self::new(protocol, rest)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.protocol, self.rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        for s in [
            "tcp://127.0.0.1:1",
            "tcp://[::1]:80",
            "unix:///tmp/a.sock",
            "ofi+tcp://h:1",
            "tcp://",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "tcp", "://x", "t cp://x", "tcp:/x", "tc/p://x"] {
            let err = s.parse::<Address>().unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidAddress { .. }),
                "{s}: {err}"
            );
            assert!(err.to_string().contains("invalid address"), "{err}");
        }
    }
}
