//! QUIC transport plugin for Courier.
//!
//! Addresses are `quic://<host>:<port>#sha256=<fingerprint>`, IPv4 or IPv6
//! (`quic://[::1]:4433#sha256=...`), over UDP. The fingerprint is the
//! SHA-256 of the server's certificate, in 64 lowercase hex digits: a
//! listener prints it in its address ([`Listener::local_addr`]), and a client
//! that connects to that address accepts exactly that certificate. This is
//! how QUIC is secure by default without any PKI: a server that is given no
//! certificate makes a self-signed one when it starts listening.
//!
//! Listening on `quic://` (empty plugin part) binds `127.0.0.1` on an
//! ephemeral port: never another interface unless asked for by address.
//!
//! Each connection carries its messages on one bidirectional QUIC stream,
//! with the same length-prefixed framing as the byte-stream plugins (see
//! [`courier_transport::framing`]): messages arrive whole and in order, as
//! the transport contract asks. TLS is rustls with the ring provider, ALPN
//! [`ALPN`]. A peer that goes silent (crashed, unplugged) is detected within
//! the idle timeout, while keep-alives hold idle but live connections open.
//!
//! ```
//! use courier_quic::QuicTransport;
//! use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let quic = QuicTransport::new(1 << 20);
//! let mut listener = quic.listen(&"quic://".parse()?).await?;
//! let addr = listener.local_addr().clone(); // quic://127.0.0.1:<port>#sha256=<hex>
//! assert!(addr.rest().contains("#sha256="));
//! let (client, server) = tokio::join!(quic.connect(&addr), listener.accept());
//! let (mut tx, _rx) = client?.split();
//! let (_tx, mut rx) = server?.split();
//! tx.send(&[b"ping"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"ping");
//! # Ok(()) }
//! ```
//!
//! # Options
//!
//! As read from [`PluginContext::options`] (`protocols.toml`, or the
//! engine's JSON config), into a [`QuicConfig`]:
//!
//! | option | type | default | meaning |
//! |--------|------|---------|---------|
//! | `cert`, `key` | paths | none | PEM certificate chain and private key the server presents instead of a self-signed certificate; the listener's address still carries the fingerprint of that certificate |
//! | `ca_roots` | path | none | PEM bundle of trusted CAs: addresses without a fingerprint are then accepted, and the server is verified the WebPKI way for its name |
//! | `server_name` | string | the host of the address | the name checked against the certificate (and sent as SNI) when verifying with `ca_roots` |
//! | `insecure_skip_verify` | bool | `false` | accept addresses without a fingerprint and any server certificate: for tests only |
//! | `idle_timeout_ms` | integer | 10000 | a silent peer is declared dead after this long; keep-alives go out at a third of it |
//! | `max_concurrent_streams` | integer | 1024 | streams of each direction a peer may have open at once (quinn's default is 100); Courier itself uses one per connection |
//! | `port_unreachable` | bool | `true` | end a client connection as soon as the server's host answers "port unreachable" (below) |
//!
//! An address without a fingerprint is refused unless `ca_roots` or
//! `insecure_skip_verify` is given; an address with one is always checked
//! against it.
//!
//! # Connections
//!
//! The dialer opens the connection's stream and writes the stream preamble
//! on it at once (QUIC tells the acceptor about a stream only when bytes
//! arrive on it), so [`Listener::accept`] returns a connection before its
//! first message, as with TCP. Each handshake runs in a task of its own and
//! ready connections queue for `accept`: a peer that stalls, fails its
//! handshake (a wrong fingerprint, another ALPN) or sends garbage datagrams
//! holds up no other; failures are logged with `tracing` at debug level.
//! Dropping the listener stops accepting; accepted connections live on.
//!
//! Each client connection has an endpoint of its own: a UDP socket bound to
//! loopback for a loopback target (to the unspecified address of the
//! target's family otherwise) and *connected* to the server. Loopback
//! targets are dialed from a loopback-bound socket.
//!
//! # A server that is gone: "port unreachable"
//!
//! UDP has no connection to refuse or reset. But when nothing listens on a
//! UDP port of a host that is up (the server process exited or was
//! killed), the host answers each datagram sent there with ICMP "port
//! unreachable", and a connected UDP socket reports it (`ECONNREFUSED`).
//! The client socket records it (quinn's own socket ignores that error),
//! so:
//!
//! * `connect` to a port nobody listens on fails at once with
//!   [`io::ErrorKind::ConnectionRefused`], as a TCP connect would, instead
//!   of waiting for the idle timeout;
//! * an established client connection whose server dies ends soon after
//!   the client sends anything (a message, the engine's keepalive probe,
//!   quinn's keep-alive): the error is reported on the socket's next send,
//!   typically quinn's retransmission of that datagram, and the
//!   connection's reads fail with [`io::ErrorKind::ConnectionRefused`],
//!   "the server's host answered 'port unreachable'", once they have
//!   returned all that had arrived (the answer to a remote shutdown, sent
//!   just before the server exited, is not lost). Option `port_unreachable = false` turns
//!   this off (the connect check stays); the connection then ends at the
//!   idle timeout, or the engine's keepalive.
//!
//! quinn's own packets are the probes: nothing extra goes on the wire. A
//! host that is down, or a network that drops packets, answers nothing:
//! the idle timeout and the engine's keepalive bound those. The accepting
//! side shares one unconnected socket between its connections and does not
//! hear "port unreachable": a killed client is noticed by the engine's
//! keepalive, or the idle timeout.
//!
//! An ICMP message carries no secret: an attacker off the path who knows
//! the server's address and port and the client's address can forge "port
//! unreachable" for each of the client's possible ports (some 28,000 on
//! Linux) and so end its connections, much as forged TCP resets once
//! could. Where that matters more than a prompt end, set
//! `port_unreachable = false`.

#![forbid(unsafe_code)]

mod addr;
mod socket;
mod streams;
mod tls;

#[cfg(test)]
mod bench;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use courier_transport::framing::PREAMBLE;
use courier_transport::stream::{StreamReceiver, StreamSender};
use courier_transport::{
    Address, Connection, DynTransport, Listener, Plugin, PluginContext, Transport, TransportError,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectError, ConnectionError, Endpoint, EndpointConfig, Incoming, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use crate::addr::FINGERPRINT_PREFIX;
use crate::socket::{unreachable_error, ClientSocket, Unreachable};
pub use crate::streams::{QuicRecvStream, QuicSendStream};
use crate::streams::{Watcher, Why};
use crate::tls::{Identity, ServerCheck};

/// The plugin name used in `protocols.toml`.
pub const PLUGIN_NAME: &str = "quic";

/// Default listen address when none is given: loopback, ephemeral port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"courier/1";

/// The options this plugin knows.
pub const OPTIONS: &[&str] = &[
    "cert",
    "key",
    "ca_roots",
    "insecure_skip_verify",
    "server_name",
    "idle_timeout_ms",
    "max_concurrent_streams",
    "port_unreachable",
];

/// Default of [`QuicConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`QuicConfig::max_concurrent_streams`].
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Flow-control window of one stream: how much a sender may have in flight
/// before the receiver reads it. On loopback 256 KiB, 1 MiB and 4 MiB move
/// 1 MiB messages equally fast (see `src/bench.rs`); 1 MiB keeps 10 MB/s at
/// 100 ms of round trip, near quinn's own default (1.25 MB).
const STREAM_WINDOW: u32 = 1 << 20;

/// Flow-control window of a whole connection, all streams together: what one
/// peer can make the other buffer, however many streams it opens. Courier
/// reads one stream per connection; the rest is slack.
const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;

/// Connections that finished their handshake and wait for `accept`.
const READY_QUEUE: usize = 128;

/// Handshakes in progress at once on one listener; more are refused.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Application close code: the dialer opened no stream in time.
const CLOSE_NO_STREAM: u32 = 1;

/// The `quic` plugin: builds [`QuicTransport`]s from options.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuicPlugin;

impl Plugin for QuicPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn reach(&self) -> courier_transport::Reach {
        courier_transport::Reach::Network
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        let config = QuicConfig::from_options(ctx)?;
        let transport = QuicTransport::build(
            Address::new(ctx.protocol, "")?,
            ctx.max_message_size,
            config,
        )?;
        Ok(Arc::new(transport))
    }
}

/// The settings of a [`QuicTransport`]; see the crate docs for each option.
///
/// It is read with serde from the plugin's options, each field from the
/// option of the same name (`idle_timeout` from `idle_timeout_ms`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct QuicConfig {
    /// PEM file of the certificate chain a server presents (with `key`).
    #[serde(deserialize_with = "non_empty")]
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of `cert`.
    #[serde(deserialize_with = "non_empty")]
    pub key: Option<PathBuf>,
    /// PEM bundle of CAs trusted to verify servers named without fingerprint.
    #[serde(deserialize_with = "non_empty")]
    pub ca_roots: Option<PathBuf>,
    /// Accept any server certificate when the address has no fingerprint.
    pub insecure_skip_verify: bool,
    /// The name to verify the server's certificate for with `ca_roots`.
    #[serde(deserialize_with = "non_empty")]
    pub server_name: Option<String>,
    /// How long a silent peer is waited for before the connection is dead.
    #[serde(rename = "idle_timeout_ms", deserialize_with = "millis")]
    pub idle_timeout: Duration,
    /// How many streams of each direction a peer may have open at once.
    #[serde(deserialize_with = "positive")]
    pub max_concurrent_streams: u32,
    /// End a client connection as soon as the server's host answers "port
    /// unreachable" (the server process is gone).
    pub port_unreachable: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            ca_roots: None,
            insecure_skip_verify: false,
            server_name: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            port_unreachable: true,
        }
    }
}

fn invalid_options(reason: impl Into<String>) -> TransportError {
    TransportError::invalid_options(PLUGIN_NAME, reason)
}

impl QuicConfig {
    /// Reads the plugin options ([`OPTIONS`]); unknown ones are refused.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] naming the option that is unknown
    /// or has a value of the wrong type.
    pub fn from_options(ctx: &PluginContext<'_>) -> Result<Self, TransportError> {
        ctx.options(PLUGIN_NAME)
    }
}

/// A string option that, when given, is not empty (a path, a name).
fn non_empty<'de, D: Deserializer<'de>, T: From<String>>(d: D) -> Result<Option<T>, D::Error> {
    struct NonEmpty;
    impl Visitor<'_> for NonEmpty {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-empty string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
            if s.is_empty() {
                Err(E::invalid_value(Unexpected::Str(s), &self))
            } else {
                Ok(s.to_owned())
            }
        }
    }
    d.deserialize_str(NonEmpty).map(|s| Some(T::from(s)))
}

/// A count of at least 1.
fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    NonZeroU32::deserialize(d).map(NonZeroU32::get)
}

/// A duration of at least 1 ms, in milliseconds.
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    positive(d).map(|ms| Duration::from_millis(ms.into()))
}

/// Messages over QUIC connections, one bidirectional stream each.
///
/// Cheap to clone: clones share the settings and certificates. Each client
/// connection has an endpoint (a UDP socket connected to its server) of
/// its own.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<protocol>://`, the template of every address this transport prints.
    base: Address,
    max: usize,
    config: QuicConfig,
    provider: Arc<CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
    /// The configured server certificate; `None`: self-signed per listener.
    identity: Option<Arc<Identity>>,
    roots: Option<Arc<RootCertStore>>,
}

impl QuicTransport {
    /// A transport for protocol `quic` with the default options (self-signed
    /// server certificates, fingerprint addresses only), refusing messages
    /// over `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self::assemble(
            Address::new(PLUGIN_NAME, "")
                .unwrap_or_else(|_| unreachable!("'quic' is a valid name")),
            max_message_size,
            QuicConfig::default(),
            tls::provider(),
            None,
            None,
        )
    }

    /// A transport for protocol `quic` with `config`. Certificate files are
    /// read now, so a wrong path or a key that does not match its
    /// certificate is reported here.
    ///
    /// # Errors
    /// [`TransportError::InvalidOptions`] naming the file or the setting.
    pub fn with_config(
        max_message_size: usize,
        config: QuicConfig,
    ) -> Result<Self, TransportError> {
        Self::build(Address::new(PLUGIN_NAME, "")?, max_message_size, config)
    }

    fn build(base: Address, max: usize, config: QuicConfig) -> Result<Self, TransportError> {
        if config.idle_timeout < Duration::from_millis(1) {
            return Err(invalid_options(
                "the idle timeout must be at least 1 ms (QUIC counts it in milliseconds)",
            ));
        }
        if config.max_concurrent_streams == 0 {
            return Err(invalid_options("max_concurrent_streams must be at least 1"));
        }
        if config.insecure_skip_verify && config.ca_roots.is_some() {
            return Err(invalid_options(
                "'ca_roots' and 'insecure_skip_verify' contradict each other: give one",
            ));
        }
        let provider = tls::provider();
        let identity = match (&config.cert, &config.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let identity = Identity::from_pem_files(cert, key).map_err(invalid_options)?;
                // Build the server side once now: it checks the key matches.
                tls::server_crypto(&provider, &identity).map_err(|e| {
                    invalid_options(format!(
                        "cannot use the certificate {} with the key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                Some(Arc::new(identity))
            }
            _ => {
                return Err(invalid_options(
                    "options 'cert' and 'key' go together: give both PEM files, or neither \
                     for a self-signed certificate",
                ))
            }
        };
        let roots = match &config.ca_roots {
            None => None,
            Some(path) => Some(Arc::new(tls::load_roots(path).map_err(invalid_options)?)),
        };
        if config.insecure_skip_verify {
            tracing::warn!(
                "quic transport with insecure_skip_verify: servers reached by an address \
                 without fingerprint are not authenticated"
            );
        }
        Ok(Self::assemble(base, max, config, provider, identity, roots))
    }

    fn assemble(
        base: Address,
        max: usize,
        config: QuicConfig,
        provider: Arc<CryptoProvider>,
        identity: Option<Arc<Identity>>,
        roots: Option<Arc<RootCertStore>>,
    ) -> Self {
        let transport = Arc::new(transport_config(&config));
        Self {
            inner: Arc::new(Inner {
                base,
                max,
                config,
                provider,
                transport,
                identity,
                roots,
            }),
        }
    }

    /// The settings this transport was built with.
    pub fn config(&self) -> &QuicConfig {
        &self.inner.config
    }

    fn idle(&self) -> Duration {
        self.inner.config.idle_timeout
    }

    fn address(&self, sock: SocketAddr) -> Address {
        self.inner.base.with_rest(sock.to_string())
    }

    /// How `connect` checks the server named by `target`.
    fn server_check(
        &self,
        addr: &Address,
        target: &addr::Target,
    ) -> Result<ServerCheck, TransportError> {
        if let Some(fp) = &target.fingerprint {
            return Ok(ServerCheck::Pinned(fp.clone()));
        }
        if let Some(roots) = &self.inner.roots {
            return Ok(ServerCheck::Roots(roots.clone()));
        }
        if self.inner.config.insecure_skip_verify {
            return Ok(ServerCheck::Insecure);
        }
        Err(TransportError::invalid_address(
            addr,
            "the server's certificate fingerprint is missing: a QUIC address ends with \
             '#sha256=<64 hex digits>', as the listener's address shows it (e.g. \
             'quic://127.0.0.1:4433#sha256=9f86d0...'); to connect without one, configure the \
             transport with 'ca_roots' (a PEM file of trusted CAs), or, for tests only, \
             'insecure_skip_verify = true'",
        ))
    }

    /// A client endpoint of its own for reaching `remote`: a UDP socket
    /// bound to loopback for a loopback target, to the unspecified address
    /// otherwise, of the target's family, and connected to `remote`, so that
    /// "port unreachable" reaches `unreachable` (see `socket.rs`).
    fn client_endpoint(
        &self,
        remote: SocketAddr,
        unreachable: Arc<Unreachable>,
    ) -> io::Result<Endpoint> {
        let socket = ClientSocket::connected(client_bind_addr(remote), remote, unreachable)?;
        Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            None,
            Arc::new(socket),
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// Starts the handshake on a new endpoint.
    fn start_connect(
        &self,
        addr: &Address,
        config: &quinn::ClientConfig,
        remote: SocketAddr,
        server_name: &str,
        unreachable: Arc<Unreachable>,
    ) -> Result<quinn::Connecting, TransportError> {
        let endpoint = self
            .client_endpoint(remote, unreachable)
            .map_err(|source| connect_error(addr, source))?;
        // The endpoint lives on while its connection does.
        match endpoint.connect_with(config.clone(), remote, server_name) {
            Ok(connecting) => Ok(connecting),
            Err(ConnectError::InvalidServerName(name)) => Err(TransportError::invalid_address(
                addr,
                format!(
                    "'{name}' is not a valid TLS server name: give the name the \
                     certificate is for with the option 'server_name'"
                ),
            )),
            Err(e) => Err(connect_error(addr, io::Error::other(e))),
        }
    }

    /// The error of a failed handshake, naming both fingerprints when the
    /// server presented another certificate than the address asks for.
    fn handshake_error(
        &self,
        addr: &Address,
        check: &ServerCheck,
        presented: &Mutex<Option<String>>,
        e: &ConnectionError,
    ) -> TransportError {
        if let ServerCheck::Pinned(expected) = check {
            let got = presented
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(got) = got.filter(|got| got != expected) {
                return connect_error(
                    addr,
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "the server presented a certificate with fingerprint \
                             {FINGERPRINT_PREFIX}{got}, but the address expects \
                             {FINGERPRINT_PREFIX}{expected}: this is not the server the address \
                             names (or it restarted with a new self-signed certificate)"
                        ),
                    ),
                );
            }
        }
        let source = match e {
            ConnectionError::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no QUIC handshake within the idle timeout of {} ms (is a Courier QUIC \
                     server listening there?)",
                    self.idle().as_millis()
                ),
            ),
            ConnectionError::TransportError(t) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the TLS handshake failed on this side: {t}"),
            ),
            ConnectionError::ConnectionClosed(c) => io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("the server refused the QUIC handshake: {c}"),
            ),
            other => streams::connection_lost(other, self.idle()),
        };
        connect_error(addr, source)
    }
}

/// quinn's settings for both sides.
fn transport_config(config: &QuicConfig) -> quinn::TransportConfig {
    let idle_ms = u64::try_from(config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let idle = quinn::IdleTimeout::from(VarInt::from_u64(idle_ms).unwrap_or(VarInt::MAX));
    let streams = VarInt::from_u32(config.max_concurrent_streams);
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(
            (config.idle_timeout / 3).max(Duration::from_millis(1)),
        ))
        .max_concurrent_bidi_streams(streams)
        .max_concurrent_uni_streams(streams)
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW));
    t
}

/// [`DEFAULT_LISTEN`] as a socket address.
fn default_listen() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// Where a client endpoint for `remote` binds: loopback for loopback,
/// otherwise the unspecified address of the same family.
fn client_bind_addr(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V4(a) if a.ip().is_loopback() => (Ipv4Addr::LOCALHOST, 0).into(),
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(a) if a.ip().is_loopback() => (Ipv6Addr::LOCALHOST, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

fn connect_error(addr: &Address, source: io::Error) -> TransportError {
    TransportError::Connect {
        address: addr.to_string(),
        source,
    }
}

fn listen_error(addr: &Address, source: io::Error) -> TransportError {
    TransportError::Listen {
        address: addr.to_string(),
        source,
    }
}

impl Transport for QuicTransport {
    type Listener = QuicListener;
    type Connection = QuicConnection;

    fn protocol(&self) -> &str {
        self.inner.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.inner.max
    }

    async fn listen(&self, addr: &Address) -> Result<QuicListener, TransportError> {
        let target = addr::parse(addr)?;
        let local = if target.host.is_empty() {
            default_listen()
        } else {
            addr::resolve(&target.host, target.port)
                .await
                .map_err(|source| listen_error(addr, source))?
        };
        let identity = match &self.inner.identity {
            Some(identity) => identity.clone(),
            None => Arc::new(Identity::self_signed().map_err(|e| {
                listen_error(
                    addr,
                    io::Error::other(format!("cannot make a self-signed certificate: {e}")),
                )
            })?),
        };
        if let Some(fp) = target.fingerprint.as_ref() {
            if *fp != identity.fingerprint {
                return Err(TransportError::invalid_address(
                    addr,
                    format!(
                        "this server's certificate has fingerprint {FINGERPRINT_PREFIX}{}, \
                         not the one in the address (listen on 'quic://<host>:<port>': the \
                         listener's address gives the fingerprint; configure 'cert' and 'key' \
                         to keep one across restarts)",
                        identity.fingerprint
                    ),
                ));
            }
        }
        let crypto = tls::server_crypto(&self.inner.provider, &identity)
            .map_err(|e| listen_error(addr, io::Error::other(e)))?;
        let crypto = QuicServerConfig::try_from(crypto)
            .map_err(|e| listen_error(addr, io::Error::other(e)))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(self.inner.transport.clone());
        let endpoint =
            Endpoint::server(server, local).map_err(|source| listen_error(addr, source))?;
        let bound = endpoint
            .local_addr()
            .map_err(|source| listen_error(addr, source))?;
        let local_addr = self.inner.base.with_rest(format!(
            "{bound}#{FINGERPRINT_PREFIX}{}",
            identity.fingerprint
        ));
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let task = tokio::spawn(accept_loop(endpoint.clone(), tx, self.clone())).abort_handle();
        tracing::debug!(address = %local_addr, "quic listener started");
        Ok(QuicListener {
            endpoint,
            local_addr,
            fingerprint: identity.fingerprint.clone(),
            ready,
            task,
        })
    }

    async fn connect(&self, addr: &Address) -> Result<QuicConnection, TransportError> {
        let target = addr::parse(addr)?;
        if target.host.is_empty() {
            return Err(TransportError::invalid_address(
                addr,
                "expected <host>:<port>#sha256=<fingerprint> after 'quic://', as a Courier \
                 QUIC listener's address shows it",
            ));
        }
        let check = self.server_check(addr, &target)?;
        let remote = addr::resolve(&target.host, target.port)
            .await
            .map_err(|source| connect_error(addr, source))?;
        let server_name = self
            .inner
            .config
            .server_name
            .clone()
            .unwrap_or_else(|| target.host.clone());
        let presented = Arc::new(Mutex::new(None));
        let crypto = tls::client_crypto(&self.inner.provider, &check, &presented)
            .map_err(|e| connect_error(addr, io::Error::other(e)))?;
        let crypto = QuicClientConfig::try_from(crypto)
            .map_err(|e| connect_error(addr, io::Error::other(e)))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.inner.transport.clone());

        let unreachable = Arc::new(Unreachable::default());
        let connecting =
            self.start_connect(addr, &config, remote, &server_name, unreachable.clone())?;
        // Nothing listening there: the host answers the handshake's first
        // datagram with "port unreachable", and the connect fails at once,
        // as a TCP connect would, instead of at the idle timeout.
        let connection = tokio::select! {
            done = connecting => {
                done.map_err(|e| self.handshake_error(addr, &check, &presented, &e))?
            }
            () = unreachable.wait() => return Err(connect_error(addr, unreachable_error())),
        };
        // The acceptor learns of the stream when bytes arrive on it: send the
        // preamble now, so `accept` returns before the first message.
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| connect_error(addr, streams::connection_lost(&e, self.idle())))?;
        send.write_all(&PREAMBLE)
            .await
            .map_err(|e| connect_error(addr, io::Error::from(e)))?;
        let why = Why {
            idle: self.idle(),
            unreachable: self.inner.config.port_unreachable.then(|| {
                let watcher = tokio::spawn(close_when_unreachable(
                    connection.clone(),
                    unreachable.clone(),
                ));
                (unreachable, Arc::new(Watcher(watcher.abort_handle())))
            }),
        };
        Ok(QuicConnection {
            send: QuicSendStream::new(send, true, why.clone()),
            recv: QuicRecvStream::new(recv, why),
            connection,
            peer: addr.clone(),
            max: self.inner.max,
        })
    }
}

/// Closes a client connection once its server's host answers "port
/// unreachable": the server is gone, and its stream halves then fail with
/// an error that says so. The task is aborted when both halves are dropped
/// (it holds a handle on the connection, which would keep it open).
async fn close_when_unreachable(connection: quinn::Connection, unreachable: Arc<Unreachable>) {
    tokio::select! {
        () = unreachable.wait() => {
            // The reader ends the connection once it has read what had
            // arrived (`streams.rs`); closing here would drop that, such
            // as the answer to a remote shutdown. Nothing is sent on a
            // connection whose server is gone: its sends fail as it ends.
            tracing::debug!(
                remote = %connection.remote_address(),
                "the server's port is unreachable: the QUIC connection ends after what was received"
            );
        }
        _ = connection.closed() => {}
    }
}

/// Accepts QUIC connections until the listener goes away; each handshake
/// runs in its own task, so a slow or failing peer holds up no other.
async fn accept_loop(
    endpoint: Endpoint,
    tx: mpsc::Sender<QuicConnection>,
    transport: QuicTransport,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                    tracing::debug!(
                        remote = %incoming.remote_address(),
                        "too many QUIC handshakes in progress: refusing one"
                    );
                    incoming.refuse();
                    continue;
                }
                handshakes.spawn(handshake(incoming, tx.clone(), transport.clone()));
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            () = tx.closed() => break,
        }
    }
}

/// Completes one handshake and waits for the dialer's stream, then hands
/// the connection to `accept`. Failures are logged and dropped: they concern
/// this peer only.
async fn handshake(incoming: Incoming, tx: mpsc::Sender<QuicConnection>, transport: QuicTransport) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, "QUIC handshake failed: {e}");
            return;
        }
    };
    let idle = transport.idle();
    let (send, recv) = match tokio::time::timeout(idle, connection.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            tracing::debug!(%remote, "QUIC connection ended before it opened its stream: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "QUIC peer opened no stream within the idle timeout");
            connection.close(VarInt::from_u32(CLOSE_NO_STREAM), b"no stream opened");
            return;
        }
    };
    let why = Why {
        idle,
        unreachable: None,
    };
    let conn = QuicConnection {
        send: QuicSendStream::new(send, false, why.clone()),
        recv: QuicRecvStream::new(recv, why),
        connection,
        peer: transport.address(remote),
        max: transport.inner.max,
    };
    // An error means the listener is gone: the connection is dropped (closed).
    let _ = tx.send(conn).await;
}

/// A listening QUIC endpoint.
///
/// Dropping it stops accepting (handshakes in progress are abandoned);
/// connections already accepted live on.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: Endpoint,
    local_addr: Address,
    fingerprint: String,
    ready: mpsc::Receiver<QuicConnection>,
    task: AbortHandle,
}

impl QuicListener {
    /// The SHA-256 fingerprint of the certificate this listener presents,
    /// in lowercase hex (also the end of [`Listener::local_addr`]).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        self.task.abort();
        // UDP has no listening socket to close: the endpoint lives on while
        // accepted connections do. Until they are gone, refuse new
        // handshakes explicitly (CONNECTION_REFUSED reaches the dialer at
        // once; without a server config quinn would only send a stateless
        // reset, which a handshaking client ignores until its timeout).
        // Then the endpoint is released and the port closes.
        let endpoint = self.endpoint.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    loop {
                        tokio::select! {
                            incoming = endpoint.accept() => match incoming {
                                Some(incoming) => incoming.refuse(),
                                None => break,
                            },
                            () = endpoint.wait_idle() => break,
                        }
                    }
                });
            }
            Err(_) => self.endpoint.set_server_config(None),
        }
    }
}

impl Listener for QuicListener {
    type Connection = QuicConnection;

    fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    async fn accept(&mut self) -> Result<QuicConnection, TransportError> {
        self.ready.recv().await.ok_or_else(|| {
            listen_error(
                &self.local_addr,
                io::Error::other("the QUIC endpoint stopped accepting connections"),
            )
        })
    }
}

/// An established QUIC connection and its stream.
#[derive(Debug)]
pub struct QuicConnection {
    connection: quinn::Connection,
    send: QuicSendStream,
    recv: QuicRecvStream,
    peer: Address,
    max: usize,
}

impl QuicConnection {
    /// The peer's UDP address (it may change if the peer migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The current estimate of the round-trip time to the peer.
    pub fn rtt(&self) -> Duration {
        self.connection.rtt()
    }
}

impl Connection for QuicConnection {
    type Sender = StreamSender<QuicSendStream>;
    type Receiver = StreamReceiver<QuicRecvStream>;

    fn peer_addr(&self) -> &Address {
        &self.peer
    }

    fn split(self) -> (Self::Sender, Self::Receiver) {
        // The stream halves keep the connection alive; when both are gone
        // quinn closes it.
        (
            StreamSender::new(self.send, self.peer.clone(), self.max),
            StreamReceiver::new(self.recv, self.peer, self.max),
        )
    }
}

#[cfg(test)]
mod tests {
    use courier_transport::{MessageReceiver, MessageSender};

    use super::*;

    /// A bare quinn client (no Courier stream) trusting `listener`'s
    /// certificate, offering `alpn`.
    fn raw_client(listener: &QuicListener, alpn: &[u8]) -> (Endpoint, quinn::ClientConfig) {
        let slot = Arc::new(Mutex::new(None));
        let check = ServerCheck::Pinned(listener.fingerprint().to_owned());
        let mut crypto = tls::client_crypto(&tls::provider(), &check, &slot).unwrap();
        crypto.alpn_protocols = vec![alpn.to_vec()];
        let config =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).unwrap()));
        let endpoint = Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        (endpoint, config)
    }

    async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .unwrap_or_else(|_| panic!("hung: {what}"))
    }

    #[tokio::test]
    async fn a_client_that_opens_no_stream_holds_up_no_other() {
        let t = QuicTransport::new(1024);
        let mut l = t.listen(&"quic://".parse().unwrap()).await.unwrap();
        let server = l.endpoint.local_addr().unwrap();
        let (endpoint, config) = raw_client(&l, ALPN);
        // Handshake done, but it never opens its stream.
        let stalled = guard("raw handshake", async {
            endpoint
                .connect_with(config, server, "localhost")
                .unwrap()
                .await
        })
        .await
        .unwrap();
        let addr = l.local_addr().clone();
        let (c, s) = guard("connect", async {
            tokio::join!(t.connect(&addr), l.accept())
        })
        .await;
        let (c, s) = (c.unwrap(), s.unwrap());
        // The accepted connection is the Courier client's, not the stalled one.
        assert_ne!(s.remote_address(), endpoint.local_addr().unwrap());
        let (mut tx, _) = c.split();
        let (_, mut rx) = s.split();
        tx.send(&[b"not blocked"]).await.unwrap();
        assert_eq!(
            &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
            b"not blocked"
        );
        drop(stalled);
    }

    #[tokio::test]
    async fn a_client_without_the_courier_alpn_is_refused_and_the_listener_goes_on() {
        let t = QuicTransport::new(1024);
        let mut l = t.listen(&"quic://".parse().unwrap()).await.unwrap();
        let server = l.endpoint.local_addr().unwrap();
        let (endpoint, config) = raw_client(&l, b"h3");
        let err = guard("raw handshake", async {
            endpoint
                .connect_with(config, server, "localhost")
                .unwrap()
                .await
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("120"),
            "no_application_protocol alert: {err}"
        );
        let addr = l.local_addr().clone();
        let (c, s) = guard("connect", async {
            tokio::join!(t.connect(&addr), l.accept())
        })
        .await;
        let (mut tx, _) = c.unwrap().split();
        let (_, mut rx) = s.unwrap().split();
        tx.send(&[b"ok"]).await.unwrap();
        assert_eq!(&guard("recv", rx.recv()).await.unwrap().unwrap()[..], b"ok");
    }

    #[tokio::test]
    async fn accepted_connections_outlive_their_listener() {
        let t = QuicTransport::new(1024);
        let mut l = t.listen(&"quic://".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().clone();
        let (c, s) = guard("connect", async {
            tokio::join!(t.connect(&addr), l.accept())
        })
        .await;
        drop(l);
        let (mut tx, mut crx) = c.unwrap().split();
        let (mut stx, mut rx) = s.unwrap().split();
        tx.send(&[b"ping"]).await.unwrap();
        assert_eq!(
            &guard("recv", rx.recv()).await.unwrap().unwrap()[..],
            b"ping"
        );
        stx.send(&[b"pong"]).await.unwrap();
        assert_eq!(
            &guard("recv", crx.recv()).await.unwrap().unwrap()[..],
            b"pong"
        );
    }

    #[test]
    fn the_default_listen_address_is_loopback() {
        assert_eq!(default_listen().to_string(), DEFAULT_LISTEN);
        assert!(default_listen().ip().is_loopback());
    }

    #[test]
    fn client_endpoints_bind_loopback_for_loopback_targets() {
        let cases = [
            ("127.0.0.1:9", "127.0.0.1:0"),
            ("10.1.2.3:9", "0.0.0.0:0"),
            ("[::1]:9", "[::1]:0"),
            ("[2001:db8::1]:9", "[::]:0"),
        ];
        for (target, bind) in cases {
            let target: SocketAddr = target.parse().unwrap();
            assert_eq!(client_bind_addr(target).to_string(), bind);
        }
    }
}
