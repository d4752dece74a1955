//! Unix-domain socket transport plugin for Courier.
//!
//! Addresses are `unix://<absolute path>`, e.g. `unix:///run/svc/engine.sock`.
//! Listening on `unix://` (empty plugin part) creates a private directory
//! (mode `0700`) under the system's temporary directory and a socket in it.
//! The socket file is always made owner-only (`0600`), and it is removed —
//! with the private directory, if one was made — when the listener is dropped
//! (the engine drops it on finalize).
//!
//! A stale socket file left by a dead process is replaced; a socket someone
//! is listening on is not ("address in use").
//!
//! ```
//! use courier_unix::UnixTransport;
//! use courier_transport::{Connection, Listener, MessageReceiver, MessageSender, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), courier_transport::TransportError> {
//! let unix = UnixTransport::new(1 << 20);
//! let mut listener = unix.listen(&"unix://".parse()?).await?;
//! let addr = listener.local_addr().clone();
//! let (client, server) = tokio::join!(unix.connect(&addr), listener.accept());
//! let (mut tx, _rx) = client?.split();
//! let (_tx, mut rx) = server?.split();
//! tx.send(&[b"ping"]).await?;
//! assert_eq!(&rx.recv().await?.unwrap()[..], b"ping");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use courier_transport::stream::{StreamAccept, StreamConnection, StreamListener};
use courier_transport::{Address, DynTransport, Plugin, PluginContext, Transport, TransportError};
use serde::Deserialize;
use tokio::net::{UnixListener as TokioListener, UnixStream};

/// The plugin name used in `protocols.toml`.
pub const PLUGIN_NAME: &str = "unix";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A listening Unix-domain socket; dropping it removes the socket file.
pub type UnixListener = StreamListener<BoundSocket>;

/// An established Unix-domain socket connection.
pub type UnixConnection = StreamConnection<UnixStream>;

/// The `unix` plugin: builds [`UnixTransport`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnixPlugin;

impl Plugin for UnixPlugin {
    fn name(&self) -> &str {
        PLUGIN_NAME
    }

    fn reach(&self) -> courier_transport::Reach {
        courier_transport::Reach::Host
    }

    /// After shared memory, before plugins that give no rank.
    fn path_rank(&self) -> u8 {
        20
    }

    fn create(&self, ctx: &PluginContext<'_>) -> Result<Arc<dyn DynTransport>, TransportError> {
        let UnixOptions {} = ctx.options(PLUGIN_NAME)?;
        Ok(Arc::new(UnixTransport {
            base: Address::new(ctx.protocol, "")?,
            max: ctx.max_message_size,
        }))
    }
}

/// The plugin's options: none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnixOptions {}

/// Messages over Unix-domain stream sockets.
#[derive(Debug, Clone)]
pub struct UnixTransport {
    base: Address,
    max: usize,
}

impl UnixTransport {
    /// A transport for protocol `unix`, refusing messages over
    /// `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            base: Address::new(PLUGIN_NAME, "")
                .unwrap_or_else(|_| unreachable!("'unix' is a valid name")),
            max: max_message_size,
        }
    }
}

fn socket_path(addr: &Address) -> Result<PathBuf, TransportError> {
    let path = Path::new(addr.rest());
    if !path.is_absolute() {
        return Err(TransportError::invalid_address(
            addr,
            "expected an absolute socket path, e.g. 'unix:///tmp/courier.sock'",
        ));
    }
    Ok(path.to_path_buf())
}

/// Creates a fresh owner-only directory for a default socket.
fn private_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("courier-{}-{n}-{nanos:08x}", std::process::id()));
        // `create` (not `create_all`) fails if the name exists, so a directory
        // planted by someone else is never used.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()))
}

/// Binds `path`, replacing a stale socket file nobody listens on.
async fn bind(path: &Path) -> io::Result<TokioListener> {
    match TokioListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            let refused = matches!(
                UnixStream::connect(path).await,
                Err(ref c) if c.kind() == io::ErrorKind::ConnectionRefused
            );
            if is_socket && refused {
                tracing::debug!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path)?;
                TokioListener::bind(path)
            } else {
                Err(e)
            }
        }
        other => other,
    }
}

impl Transport for UnixTransport {
    type Listener = UnixListener;
    type Connection = UnixConnection;

    fn protocol(&self) -> &str {
        self.base.protocol()
    }

    fn max_message_size(&self) -> usize {
        self.max
    }

    async fn listen(&self, addr: &Address) -> Result<UnixListener, TransportError> {
        let listen_err = |source| TransportError::Listen {
            address: addr.to_string(),
            source,
        };
        let (path, private) = if addr.rest().is_empty() {
            let dir = private_dir().map_err(listen_err)?;
            (dir.join("engine.sock"), Some(dir))
        } else {
            (socket_path(addr)?, None)
        };
        let cleanup = |e| {
            if let Some(dir) = &private {
                let _ = std::fs::remove_dir(dir);
            }
            listen_err(e)
        };
        let listener = bind(&path).await.map_err(cleanup)?;
        let guard = SocketFile {
            path: path.clone(),
            private_dir: private.clone(),
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| TransportError::Listen {
                address: addr.to_string(),
                source,
            },
        )?;
        let socket = BoundSocket {
            listener,
            _file: guard,
        };
        let local_addr = self.base.with_rest(path.display().to_string());
        Ok(StreamListener::new(socket, local_addr, self.max))
    }

    async fn connect(&self, addr: &Address) -> Result<UnixConnection, TransportError> {
        let path = socket_path(addr)?;
        let stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| TransportError::Connect {
                    address: addr.to_string(),
                    source,
                })?;
        Ok(StreamConnection::new(stream, addr.clone(), self.max))
    }
}

/// Removes the socket file (and private directory) when dropped.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    private_dir: Option<PathBuf>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), "cannot remove socket file: {e}");
        }
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A bound Unix-domain socket, which a [`UnixListener`] accepts from;
/// dropping it removes the socket file.
#[derive(Debug)]
pub struct BoundSocket {
    listener: TokioListener,
    _file: SocketFile,
}

impl StreamAccept for BoundSocket {
    type Stream = UnixStream;

    async fn accept_stream(&mut self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = self.listener.accept().await?;
        // An accepting socket's peer is unnamed: describe it by process id.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let who = match stream.peer_cred().ok().and_then(|c| c.pid()) {
            Some(pid) => format!("peer-pid-{pid}-conn-{n}"),
            None => format!("peer-conn-{n}"),
        };
        Ok((stream, who))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_transport::{Connection, Listener, MessageSender};

    #[tokio::test]
    async fn socket_is_owner_only_and_removed_on_drop() {
        let t = UnixTransport::new(1024);
        let l = t.listen(&"unix://".parse().unwrap()).await.unwrap();
        let path = PathBuf::from(l.local_addr().rest());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        drop(l);
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_is_not() {
        let t = UnixTransport::new(1024);
        let dir = private_dir().unwrap();
        let addr: Address = format!("unix://{}/s.sock", dir.display()).parse().unwrap();
        // A stale file: bind with std and drop without unlinking.
        drop(std::os::unix::net::UnixListener::bind(addr.rest()).unwrap());
        let live = t.listen(&addr).await.unwrap();
        let err = t.listen(&addr).await.unwrap_err();
        assert!(matches!(err, TransportError::Listen { .. }), "{err}");
        let mut c = t.connect(&addr).await.unwrap().split().0;
        c.send(&[b"x"]).await.unwrap();
        drop(live);
        std::fs::remove_dir(dir).unwrap();
    }

    #[tokio::test]
    async fn an_accepted_peer_is_named_by_its_process() {
        let t = UnixTransport::new(1024);
        let mut l = t.listen(&"unix://".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().clone();
        let (client, server) = tokio::join!(t.connect(&addr), l.accept());
        assert_eq!(client.unwrap().peer_addr(), &addr);
        let peer = server.unwrap().peer_addr().to_string();
        let prefix = format!("unix://peer-pid-{}-conn-", std::process::id());
        assert!(peer.starts_with(&prefix), "{peer}");
    }

    #[tokio::test]
    async fn relative_path_and_missing_socket_are_clear_errors() {
        let t = UnixTransport::new(1024);
        let err = t
            .connect(&"unix://tmp/x".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("absolute socket path"), "{err}");
        let err = t
            .connect(&"unix:///nonexistent/courier.sock".parse().unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot connect to unix:///nonexistent"),
            "{err}"
        );
    }
}
