//! The peers of `courier bench`, each in its own child process: the hidden
//! `courier bench-peer` subcommand (the child's side), and [`PeerProc`],
//! the parent's handle on such a child.
//!
//! A peer prints one line, `Bench peer listening at <address>`, then serves
//! until its standard input closes (the parent drops its end, or dies) or
//! it gets Ctrl-C / SIGTERM; it then closes its listener (a unix socket
//! file is removed) and exits 0.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use courier::transport::{Address as WireAddr, DynConnection, PluginOptions};
use courier::{Bytes, Engine, Handle, RpcOptions};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::{JoinHandle, JoinSet};

use super::measure::Spinner;
use super::{socket_kind, Layer, SocketKind, SINK_RPC};
use crate::child::{drain, exit_status, spawn_piped, stderr_tail, wait_ready, Ready};
use crate::{out, CliResult, Error};

/// The line a peer prints once it listens.
pub(crate) const PEER_READY: &str = "Bench peer listening at ";

/// How long a peer may take to print its address.
const STARTUP_GUARD: Duration = Duration::from_secs(20);
/// How long a peer may take to exit once its stdin is closed.
const EXIT_GUARD: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct PeerArgs {
    /// What to serve: `engine` (the RPC bench.sink), `raw` (the transport
    /// alone), `socket` (plain sockets, tcp and unix plugins only).
    #[arg(long, value_enum)]
    pub(crate) layer: Layer,

    /// The protocol (name or alias).
    #[arg(long, value_name = "P")]
    pub(crate) protocol: String,

    /// Polling policy: the engine's `progress_spin_us`; for the raw and
    /// socket peers, any value above 0 keeps the runtime polling while a
    /// connection is open.
    #[arg(long = "progress-spin-us", value_name = "US",
          default_value_t = courier::DEFAULT_PROGRESS_SPIN_US)]
    pub(crate) progress_spin_us: u64,

    /// The largest message accepted.
    #[arg(long = "max-message-size", value_name = "BYTES",
          default_value_t = courier::DEFAULT_MAX_MESSAGE_SIZE)]
    pub(crate) max_message_size: usize,

    /// Pin the peer (its one runtime thread) to this CPU.
    #[arg(long, value_name = "CPU")]
    pub(crate) cpu: Option<usize>,

    /// The engine peer's `streams.window_bytes` (default: the engine's).
    #[arg(long = "stream-window", value_name = "BYTES")]
    pub(crate) stream_window: Option<u64>,

    /// The raw peer speaks the one-way protocol of `courier bench --mode
    /// stream` (orders, each followed by its messages) instead of answering
    /// every message.
    #[arg(long)]
    pub(crate) oneway: bool,
}

/// Resolves when stdin reaches its end (read on a plain thread, which does
/// not keep the process alive at exit as a tokio blocking task would).
fn stdin_closed() -> CliResult<tokio::sync::oneshot::Receiver<()>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        })
        .map_err(|e| Error::io("start a thread to watch stdin", e))?;
    Ok(rx)
}

/// How a peer tells its parent where it listens: a line on stdout (a child
/// process) or a channel (a peer thread).
type Announce = Box<dyn FnOnce(&str) -> CliResult + Send>;

/// `courier bench-peer`.
pub(crate) async fn run(args: PeerArgs) -> CliResult {
    if let Some(cpu) = args.cpu {
        super::pin_current_thread(cpu)?;
    }
    let closed = stdin_closed()?;
    let stop = async move {
        tokio::select! {
            _ = closed => tracing::debug!("stdin closed"),
            () = crate::serve::stop_signal() => {}
        }
    };
    let announce: Announce = Box::new(|address| out(format_args!("{PEER_READY}{address}")));
    serve(args, announce, stop).await
}

/// Serves one layer until `stop` resolves.
async fn serve(
    args: PeerArgs,
    announce: Announce,
    stop: impl std::future::Future<Output = ()>,
) -> CliResult {
    let polling = args.progress_spin_us > 0;
    match args.layer {
        Layer::Engine | Layer::Counted | Layer::Timed => engine_peer(&args, announce, stop).await,
        Layer::Raw => raw_peer(&args, polling, announce, stop).await,
        Layer::Socket => {
            let registry = courier::default_registry()?;
            let entry = registry.resolve(&args.protocol)?;
            match socket_kind(&entry) {
                Some(SocketKind::Tcp) => tcp_peer(&args, polling, announce, stop).await,
                #[cfg(unix)]
                Some(SocketKind::Unix) => unix_peer(&args, polling, announce, stop).await,
                _ => Err(Error::Unsupported(format!(
                    "protocol '{}' (plugin '{}') has no plain-socket floor (tcp and unix only)",
                    entry.name, entry.plugin
                ))),
            }
        }
    }
}

async fn engine_peer(
    args: &PeerArgs,
    announce: Announce,
    stop: impl std::future::Future<Output = ()>,
) -> CliResult {
    let mut builder = Engine::builder(&args.protocol)
        .progress_spin(Duration::from_micros(args.progress_spin_us))
        .stats(args.layer == Layer::Counted)
        .stats_timing(args.layer == Layer::Timed)
        .max_message_size(args.max_message_size);
    if let Some(window) = args.stream_window {
        builder =
            builder.config_value(serde_json::json!({ "streams": { "window_bytes": window } }));
    }
    let engine = builder.build().await?;
    let registered = engine.register_raw(
        SINK_RPC,
        RpcOptions::default(),
        |handle: Handle, _payload: Bytes| async move { handle.respond_raw(&[]).await },
    );
    let registered = registered
        .and_then(|()| super::bulk::register_region(&engine))
        .and_then(|()| super::stream::register(&engine));
    let ready = registered
        .map_err(Error::from)
        .and_then(|()| announce(&engine.address().to_string()));
    if ready.is_ok() {
        stop.await;
    }
    engine.finalize().await;
    ready
}

async fn raw_peer(
    args: &PeerArgs,
    polling: bool,
    announce: Announce,
    stop: impl std::future::Future<Output = ()>,
) -> CliResult {
    let registry = courier::default_registry()?;
    let (entry, transport) =
        registry.create(&args.protocol, &PluginOptions::new(), args.max_message_size)?;
    let mut listener = transport
        .listen_dyn(&WireAddr::new(entry.name.clone(), "")?)
        .await?;
    announce(&listener.local_addr().to_string())?;
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept_dyn() => match accepted {
                Ok(conn) if args.oneway => {
                    conns.spawn(super::stream::serve_oneway(conn, polling));
                }
                Ok(conn) => {
                    conns.spawn(raw_answer(conn, polling));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    // Dropping the listener removes a unix socket file.
    drop(listener);
    Ok(())
}

/// Answers each message with an empty message.
async fn raw_answer(conn: Box<dyn DynConnection>, polling: bool) {
    let (mut tx, mut rx) = conn.split_dyn();
    let _spin = Spinner::start(polling);
    loop {
        match rx.recv_dyn().await {
            Ok(Some(_)) => {
                if let Err(e) = tx.send_dyn(&[]).await {
                    tracing::debug!("raw peer: send failed: {e}");
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("raw peer: receive failed: {e}");
                break;
            }
        }
    }
}

/// Reads length-prefixed messages, answers each with an empty one.
async fn socket_answer<S: AsyncRead + AsyncWrite + Unpin>(stream: S, polling: bool, max: usize) {
    let _spin = Spinner::start(polling);
    let mut s = BufReader::with_capacity(64 << 10, stream);
    let mut body = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        if s.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let len = u32::from_le_bytes(prefix) as usize;
        if len > max {
            tracing::warn!("socket peer: a message of {len} bytes is over the maximum of {max}");
            break;
        }
        body.resize(len, 0);
        if s.read_exact(&mut body).await.is_err() {
            break;
        }
        if s.write_all(&0u32.to_le_bytes()).await.is_err() {
            break;
        }
    }
}

async fn tcp_peer(
    args: &PeerArgs,
    polling: bool,
    announce: Announce,
    stop: impl std::future::Future<Output = ()>,
) -> CliResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::io("listen on 127.0.0.1:0", e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("read the listener's address", e))?;
    announce(&format!("{}://{local}", args.protocol))?;
    let mut conns = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => {
                    if let Err(e) = s.set_nodelay(true) {
                        tracing::warn!("TCP_NODELAY: {e}");
                    }
                    conns.spawn(socket_answer(s, polling, args.max_message_size));
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
    Ok(())
}

/// A fresh owner-only directory under the temp dir for the socket file.
#[cfg(unix)]
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let mut last = None;
    for n in 0..16u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "courier-bench-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
}

#[cfg(unix)]
async fn unix_peer(
    args: &PeerArgs,
    polling: bool,
    announce: Announce,
    stop: impl std::future::Future<Output = ()>,
) -> CliResult {
    let dir = private_dir().map_err(|e| Error::io("create a directory for the socket", e))?;
    let path = dir.join("socket.sock");
    let served = async {
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("listen on {}", path.display()), e))?;
        announce(&format!("{}://{}", args.protocol, path.display()))?;
        let mut conns = JoinSet::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => {
                        conns.spawn(socket_answer(s, polling, args.max_message_size));
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.shutdown().await;
        Ok(())
    };
    let result = served.await;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    result
}

// ---------------------------------------------------------------------------
// The parent's side.
// ---------------------------------------------------------------------------

/// A peer of the bench: a child process, or — for a protocol that reaches
/// its own process only, such as `mem` — a thread of this process with its
/// own one-thread runtime, as the child would have.
#[derive(Debug)]
pub(crate) enum Peer {
    Proc(Box<PeerProc>),
    Thread(PeerThread),
}

impl Peer {
    /// Starts a peer: in a child process, or on a thread when `in_process`.
    pub(crate) async fn start(args: PeerArgs, verbose: u8, in_process: bool) -> CliResult<Self> {
        if in_process {
            PeerThread::spawn(args).await.map(Self::Thread)
        } else {
            PeerProc::spawn(&args, verbose)
                .await
                .map(|p| Self::Proc(Box::new(p)))
        }
    }

    /// The address the peer listens at.
    pub(crate) fn address(&self) -> &str {
        match self {
            Self::Proc(p) => &p.address,
            Self::Thread(t) => &t.address,
        }
    }

    /// Asks the peer to stop and waits for it.
    pub(crate) async fn stop(self) -> CliResult {
        match self {
            Self::Proc(p) => p.stop().await,
            Self::Thread(t) => t.stop().await,
        }
    }

    /// Stops the peer at once.
    pub(crate) async fn kill(self) {
        match self {
            Self::Proc(p) => p.kill().await,
            Self::Thread(t) => {
                let _ = t.stop().await;
            }
        }
    }
}

/// Ends `peers` after their measurement: stops them if it succeeded (the
/// first failure to stop is then the result), kills them if it failed.
pub(crate) async fn stop_peers(
    measured: CliResult,
    peers: impl IntoIterator<Item = Peer>,
) -> CliResult {
    let mut result = measured;
    for p in peers {
        if result.is_ok() {
            result = p.stop().await;
        } else {
            p.kill().await;
        }
    }
    result
}

/// A peer on a thread of this process.
#[derive(Debug)]
pub(crate) struct PeerThread {
    what: String,
    address: String,
    /// Dropping it asks the peer to stop.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<CliResult>>,
}

impl PeerThread {
    async fn spawn(args: PeerArgs) -> CliResult<Self> {
        let what = format!(
            "the {} peer ({}, in process)",
            args.layer.name(),
            args.protocol
        );
        let (address_tx, address_rx) = tokio::sync::oneshot::channel::<String>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-peer".into())
            .spawn(move || -> CliResult {
                if let Some(cpu) = args.cpu {
                    super::pin_current_thread(cpu)?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::io("start the peer's tokio runtime", e))?;
                let announce: Announce = Box::new(move |address| {
                    let _ = address_tx.send(address.to_owned());
                    Ok(())
                });
                let stop = async move {
                    let _ = stop_rx.await;
                };
                runtime.block_on(serve(args, announce, stop))
            })
            .map_err(|e| Error::io(format!("start {what}"), e))?;
        match tokio::time::timeout(STARTUP_GUARD, address_rx).await {
            Ok(Ok(address)) => Ok(Self {
                what,
                address,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(_)) => {
                // The thread ended without an address: its result says why.
                let why = match tokio::task::spawn_blocking(move || thread.join()).await {
                    Ok(Ok(Err(e))) => e,
                    _ => Error::Peer("it stopped".into()),
                };
                Err(why.context(format!("{what} did not start")))
            }
            Err(_) => Err(Error::Peer(format!(
                "{what} gave no address within {} s",
                STARTUP_GUARD.as_secs()
            ))),
        }
    }

    async fn stop(mut self) -> CliResult {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let joined = tokio::time::timeout(
            EXIT_GUARD,
            tokio::task::spawn_blocking(move || thread.join()),
        )
        .await;
        match joined {
            Ok(Ok(Ok(Ok(())))) => Ok(()),
            Ok(Ok(Ok(Err(e)))) => Err(e.context(self.what)),
            Ok(_) => Err(Error::Peer(format!("{} panicked", self.what))),
            Err(_) => Err(Error::Peer(format!(
                "{} did not stop within {} s",
                self.what,
                EXIT_GUARD.as_secs()
            ))),
        }
    }
}

/// A `courier bench-peer` child process. Dropping it kills the child.
#[derive(Debug)]
pub(crate) struct PeerProc {
    what: String,
    child: Child,
    /// Closing it asks the peer to exit.
    stdin: Option<ChildStdin>,
    /// The address the peer printed.
    pub(crate) address: String,
    stdout: JoinHandle<Vec<String>>,
    stderr: Option<JoinHandle<Vec<String>>>,
    done: bool,
}

impl PeerProc {
    /// Starts `courier bench-peer --layer L --protocol P ...` and waits for
    /// its address.
    pub(crate) async fn spawn(args: &PeerArgs, verbose: u8) -> CliResult<Self> {
        let PeerArgs {
            layer,
            protocol,
            progress_spin_us: spin_us,
            max_message_size,
            cpu,
            stream_window,
            oneway,
        } = args;
        let what = format!("the {} peer ({protocol})", layer.name());
        let exe =
            std::env::current_exe().map_err(|e| Error::io("find the courier executable", e))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "bench-peer",
            "--layer",
            layer.name(),
            "--protocol",
            protocol,
        ])
        .arg("--progress-spin-us")
        .arg(spin_us.to_string())
        .arg("--max-message-size")
        .arg(max_message_size.to_string());
        if let Some(cpu) = cpu {
            cmd.arg("--cpu").arg(cpu.to_string());
        }
        if let Some(window) = stream_window {
            cmd.arg("--stream-window").arg(window.to_string());
        }
        if *oneway {
            cmd.arg("--oneway");
        }
        for _ in 0..verbose {
            cmd.arg("-v");
        }
        let mut child = spawn_piped(cmd, true, &what)?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill().await;
            return Err(Error::Peer(format!("the pipes of {what} are missing")));
        };
        let stderr = drain(BufReader::new(stderr).lines(), format!("{what} stderr"));
        let mut lines = BufReader::new(stdout).lines();
        let out_tag = format!("{what} stdout");
        let why = match wait_ready(&mut lines, PEER_READY, &out_tag, STARTUP_GUARD).await {
            Ready::At(address) => {
                tracing::debug!("{what} listens at {address}");
                let stdout = drain(lines, out_tag);
                return Ok(Self {
                    what,
                    child,
                    stdin: Some(stdin),
                    address,
                    stdout,
                    stderr: Some(stderr),
                    done: false,
                });
            }
            Ready::Ended => {
                let status = exit_status(&mut child, EXIT_GUARD).await;
                Error::Peer(format!(
                    "{what} stopped before printing its address ({status})"
                ))
            }
            Ready::Failed(e) => {
                let _ = child.kill().await;
                Error::io(format!("read the output of {what}"), e)
            }
            Ready::Silent => {
                let _ = child.kill().await;
                Error::Peer(format!(
                    "{what} printed no '{PEER_READY}<address>' line within {} s",
                    STARTUP_GUARD.as_secs()
                ))
            }
        };
        drop(stdin);
        Err(why.with_stderr(stderr_tail(stderr).await))
    }

    /// Closes the peer's stdin and waits for it to exit 0.
    pub(crate) async fn stop(mut self) -> CliResult {
        drop(self.stdin.take());
        let waited = tokio::time::timeout(EXIT_GUARD, self.child.wait()).await;
        let problem = match waited {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(Error::Peer(format!("{} {status}", self.what))),
            Ok(Err(e)) => Some(Error::io(format!("wait for {}", self.what), e)),
            Err(_) => Some(Error::Peer(format!(
                "{} did not exit within {} s of its stdin closing",
                self.what,
                EXIT_GUARD.as_secs()
            ))),
        };
        match problem {
            None => {
                self.done = true;
                self.stdout.abort();
                Ok(())
            }
            Some(p) => {
                let tail = match self.stderr.take() {
                    Some(t) => stderr_tail(t).await,
                    None => None,
                };
                self.kill().await;
                Err(p.with_stderr(tail))
            }
        }
    }

    /// Kills the peer, waits for it, and removes a unix socket it left.
    pub(crate) async fn kill(mut self) {
        if !self.done {
            if let Err(e) = self.child.kill().await {
                tracing::warn!("cannot kill {}: {e}", self.what);
            }
            remove_socket_file(&self.address);
            self.done = true;
        }
        self.stdout.abort();
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if !self.done {
            // kill_on_drop sends the signal too; the socket file is ours to remove.
            let _ = self.child.start_kill();
            remove_socket_file(&self.address);
        }
    }
}

/// After a peer was killed: removes the unix socket file its address names
/// (only a socket), and its directory if it is one of ours and empty.
fn remove_socket_file(address: &str) {
    let Some((_, rest)) = address.split_once("://") else {
        return;
    };
    let path = Path::new(rest);
    if !path.is_absolute() {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if is_socket {
            let _ = std::fs::remove_file(path);
        }
    }
    if let Some(dir) = path.parent() {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("courier-"));
        if ours {
            // Fails, as it should, unless the directory is empty.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
