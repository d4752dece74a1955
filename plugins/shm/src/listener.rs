//! Socket names (`shm://<name>`), listening and accepting.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::SocketAddr as StdSocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_transport::{Address, Listener, TransportError};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::conn::{Settings, ShmConnection};
use crate::handshake;

/// Longest abstract socket name (`sun_path` is 108 bytes, one is the
/// leading NUL).
const MAX_ABSTRACT_NAME: usize = 107;

/// How long a server waits for a client's handshake, and a client for the
/// server's answer.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Where an `shm://` name lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SocketName {
    /// Linux's abstract namespace (no file; gone with its last socket).
    Abstract(String),
    /// A socket file.
    Path(PathBuf),
}

impl SocketName {
    /// Parses the plugin part of `addr`: a name starting with `/` is a
    /// socket path, anything else a name in the abstract namespace.
    pub(crate) fn parse(addr: &Address) -> Result<Self, TransportError> {
        let name = addr.rest();
        let invalid = |reason: String| TransportError::invalid_address(addr, reason);
        if name.is_empty() {
            return Err(invalid(
                "expected a socket name, e.g. 'shm://my-service' (or 'shm:///run/my.sock')".into(),
            ));
        }
        if name.contains('\0') {
            return Err(invalid("the name contains a NUL byte".into()));
        }
        if name.starts_with('/') {
            return Ok(Self::Path(PathBuf::from(name)));
        }
        if name.len() > MAX_ABSTRACT_NAME {
            return Err(invalid(format!(
                "the name is {} bytes long, at most {MAX_ABSTRACT_NAME} fit",
                name.len()
            )));
        }
        Ok(Self::Abstract(name.to_owned()))
    }

    /// A fresh name nobody else can have picked:
    /// `courier-<pid>-<counter>-<random>`.
    pub(crate) fn unique() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        Self::Abstract(format!(
            "courier-{}-{n}-{:016x}",
            std::process::id(),
            h.finish()
        ))
    }

    pub(crate) fn socket_addr(&self) -> io::Result<StdSocketAddr> {
        match self {
            Self::Abstract(name) => StdSocketAddr::from_abstract_name(name.as_bytes()),
            Self::Path(path) => StdSocketAddr::from_pathname(path),
        }
    }

    /// The plugin part of the address that reaches this name.
    pub(crate) fn rest(&self) -> String {
        match self {
            Self::Abstract(name) => name.clone(),
            Self::Path(path) => path.display().to_string(),
        }
    }
}

/// Binds `name`; a socket file left by a dead process is replaced, a live
/// one is not ("address in use"). Socket files are made owner-only.
pub(crate) async fn bind(name: &SocketName) -> io::Result<UnixListener> {
    let addr = name.socket_addr()?;
    let std_listener = match std::os::unix::net::UnixListener::bind_addr(&addr) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => match name {
            SocketName::Path(path) if is_stale(path).await => {
                tracing::debug!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path)?;
                std::os::unix::net::UnixListener::bind_addr(&addr)?
            }
            _ => return Err(e),
        },
        other => other?,
    };
    if let SocketName::Path(path) = name {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener)
}

async fn is_stale(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    is_socket
        && matches!(
            UnixStream::connect(path).await,
            Err(ref e) if e.kind() == io::ErrorKind::ConnectionRefused
        )
}

/// Removes a socket file when the listener is dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::debug!(path = %self.0.display(), "cannot remove socket file: {e}");
        }
    }
}

/// A listening shared-memory endpoint.
///
/// Handshakes run concurrently in tasks of the current runtime, so a client
/// that connects and stalls delays nobody (and is dropped after a timeout).
/// Dropping the listener stops listening, aborts handshakes in progress and
/// removes the socket file, if the name was a path.
#[derive(Debug)]
pub struct ShmListener {
    listener: UnixListener,
    local_addr: Address,
    settings: Settings,
    pending: JoinSet<Result<ShmConnection, TransportError>>,
    _file: Option<SocketFile>,
}

impl ShmListener {
    pub(crate) fn new(
        listener: UnixListener,
        name: &SocketName,
        local_addr: Address,
        settings: Settings,
    ) -> Self {
        Self {
            listener,
            local_addr,
            settings,
            pending: JoinSet::new(),
            _file: match name {
                SocketName::Path(p) => Some(SocketFile(p.clone())),
                SocketName::Abstract(_) => None,
            },
        }
    }

    fn start_handshake(&mut self, stream: UnixStream) {
        // An accepted socket's peer is unnamed: describe it by process id.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let who = match stream.peer_cred().ok().and_then(|c| c.pid()) {
            Some(pid) => format!("{}#peer-pid-{pid}-conn-{n}", self.local_addr.rest()),
            None => format!("{}#peer-conn-{n}", self.local_addr.rest()),
        };
        let peer = self.local_addr.with_rest(who);
        let settings = self.settings;
        self.pending.spawn(async move {
            match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                handshake::server(stream, peer.clone(), settings),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(TransportError::Io {
                    peer: peer.to_string(),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
                    ),
                }),
            }
        });
    }
}

impl Listener for ShmListener {
    type Connection = ShmConnection;

    fn local_addr(&self) -> &Address {
        &self.local_addr
    }

    async fn accept(&mut self) -> Result<ShmConnection, TransportError> {
        loop {
            tokio::select! {
                biased;
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    return done.unwrap_or_else(|e| Err(TransportError::Listen {
                        address: self.local_addr.to_string(),
                        source: io::Error::other(format!("a handshake task failed: {e}")),
                    }));
                }
                accepted = self.listener.accept() => {
                    let (stream, _) = accepted.map_err(|source| TransportError::Listen {
                        address: self.local_addr.to_string(),
                        source,
                    })?;
                    self.start_handshake(stream);
                }
            }
        }
    }
}
