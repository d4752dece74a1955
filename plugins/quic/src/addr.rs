//! The plugin part of `quic://` addresses: `<host>:<port>[#sha256=<hex>]`.

use std::io;
use std::net::{IpAddr, SocketAddr};

use courier_transport::{Address, TransportError};

use crate::tls::FINGERPRINT_HEX_LEN;

/// What the fragment of an address starts with.
pub(crate) const FINGERPRINT_PREFIX: &str = "sha256=";

/// A parsed plugin part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host as written, without IPv6 brackets (empty: none given).
    pub(crate) host: String,
    /// The port (0 when no host was given).
    pub(crate) port: u16,
    /// The certificate fingerprint, lowercase hex, if the address has one.
    pub(crate) fingerprint: Option<String>,
}

/// Splits and checks the plugin part of `addr`. An empty host part is
/// allowed here (listen uses a default); `connect` refuses it.
pub(crate) fn parse(addr: &Address) -> Result<Target, TransportError> {
    let (host_port, fingerprint) = match addr.rest().split_once('#') {
        None => (addr.rest(), None),
        Some((hp, fragment)) => (hp, Some(parse_fingerprint(addr, fragment)?)),
    };
    if host_port.is_empty() {
        return Ok(Target {
            host: String::new(),
            port: 0,
            fingerprint,
        });
    }
    let (host, port) = split_host_port(host_port).ok_or_else(|| {
        TransportError::invalid_address(
            addr,
            "expected <host>:<port>, with IPv6 addresses in brackets, \
             e.g. 'quic://127.0.0.1:4433' or 'quic://[::1]:4433'",
        )
    })?;
    let port = port.parse::<u16>().map_err(|_| {
        TransportError::invalid_address(addr, format!("'{port}' is not a port number (0 to 65535)"))
    })?;
    Ok(Target {
        host: host.to_owned(),
        port,
        fingerprint,
    })
}

fn parse_fingerprint(addr: &Address, fragment: &str) -> Result<String, TransportError> {
    let hex = fragment
        .strip_prefix(FINGERPRINT_PREFIX)
        .filter(|h| h.len() == FINGERPRINT_HEX_LEN && h.chars().all(|c| c.is_ascii_hexdigit()));
    match hex {
        Some(h) => Ok(h.to_ascii_lowercase()),
        None => Err(TransportError::invalid_address(
            addr,
            format!(
                "the part after '#' must be '{FINGERPRINT_PREFIX}' and the {FINGERPRINT_HEX_LEN} \
                 hex digits of the server certificate's SHA-256 fingerprint, not '#{fragment}'"
            ),
        )),
    }
}

/// `host:port` or `[v6]:port` into its host (brackets removed) and port.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(after) = s.strip_prefix('[') {
        let (host, rest) = after.split_once(']')?;
        let port = rest.strip_prefix(':')?;
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    // A colon in the host is an IPv6 address without brackets.
    (!host.is_empty() && !host.contains(':')).then_some((host, port))
}

/// The socket address of `host:port`: an IP literal as it is, a name through
/// the system resolver (its first answer).
pub(crate) async fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the name '{host}' resolves to no address"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(s: &str) -> Result<Target, TransportError> {
        parse(&s.parse().unwrap())
    }

    #[test]
    fn parses_hosts_ports_and_fingerprints() {
        let fp = "ab".repeat(32);
        let t = target(&format!(
            "quic://127.0.0.1:4433#sha256={}",
            fp.to_uppercase()
        ))
        .unwrap();
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.port, 4433);
        assert_eq!(t.fingerprint.as_deref(), Some(fp.as_str()));
        let t = target("quic://[::1]:0").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.fingerprint), ("::1", 0, None));
        let t = target("quic://localhost:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 9));
        let t = target("quic://").unwrap();
        assert!(t.host.is_empty());
    }

    #[test]
    fn refuses_malformed_parts() {
        for bad in [
            "quic://127.0.0.1",
            "quic://::1:80",
            "quic://[::1]80",
            "quic://[]:80",
            "quic://:80",
            "quic://host:99999",
            "quic://host:port",
            "quic://127.0.0.1:1#sha1=00",
            "quic://127.0.0.1:1#sha256=abc",
        ] {
            let err = target(bad).unwrap_err();
            assert!(
                matches!(err, TransportError::InvalidAddress { .. }),
                "{bad}: {err}"
            );
        }
        let err = target(&format!("quic://h:1#sha256={}", "g".repeat(64)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256="), "{err}");
    }
}
