//! Shared helpers for Courier's cross-transport conformance suite.
//!
//! The integration tests in `tests/tests/` run every scenario on every
//! transport. The transports are listed once, in [`for_each_protocol!`]:
//! adding a name there (`quic`, `shm`, ...) runs the whole suite on it, and
//! [`PROTOCOLS`] follows. Protocol-specific pieces of the suite — a raw
//! socket to write garbage on ([`raw_connect`]), an address nobody listens at
//! ([`dead_address`]) — are keyed by protocol name and say which arm to add
//! when a protocol is missing.
//!
//! Nothing here synchronises by sleeping: tests wait for events (a channel,
//! a line printed by a child process, a socket closing), and [`guard`] puts
//! a generous upper bound on each wait so that a hang fails the test instead
//! of stalling the run.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

pub mod netns;

/// The helpers shared with plugin authors live in `courier-testkit`.
pub use courier_testkit::{
    assert_hello, call_hello, client, guard, guard_blocking, lookup, pattern, register_hello,
    server, HANG_GUARD,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// Calls `$callback! { tcp, unix, quic, shm }`: the one list of protocols the suite runs
/// on (`shm` on Linux only, where the plugin is built). Add a protocol here
/// (and, if its addresses are not sockets, an arm to [`raw_connect`] and
/// [`dead_address`]) to run every scenario on it.
///
/// Test files use it to generate one module per protocol, so that a failure
/// names both the protocol and the scenario (`tcp::hello`, `unix::hello`):
///
/// ```
/// macro_rules! names {
///     ($($proto:ident),*) => { [$(stringify!($proto)),*] };
/// }
/// let protocols = courier_conformance::for_each_protocol!(names);
/// assert_eq!(&protocols[..], courier_conformance::PROTOCOLS);
/// ```
#[cfg(target_os = "linux")]
#[macro_export]
macro_rules! for_each_protocol {
    ($callback:ident) => {
        $callback! { tcp, unix, quic, shm }
    };
}

/// The protocols the suite runs on; without `shm`, which is Linux-only.
#[cfg(not(target_os = "linux"))]
#[macro_export]
macro_rules! for_each_protocol {
    ($callback:ident) => {
        $callback! { tcp, unix, quic }
    };
}

/// Calls `$callback! { tcp, unix, shm }`: the protocols whose connections
/// start on a socket stream a test can open with [`raw_connect`] and write
/// garbage on (QUIC's are UDP datagrams: see the quic tests of
/// `bad_input.rs`). `shm` on Linux only.
#[cfg(target_os = "linux")]
#[macro_export]
macro_rules! for_each_socket_protocol {
    ($callback:ident) => {
        $callback! { tcp, unix, shm }
    };
}

/// The socket protocols; without `shm`, which is Linux-only.
#[cfg(not(target_os = "linux"))]
#[macro_export]
macro_rules! for_each_socket_protocol {
    ($callback:ident) => {
        $callback! { tcp, unix }
    };
}

/// Calls `$callback! { tcp, unix }`: the protocols whose connections are
/// framed byte streams (the preamble and length prefixes of
/// `docs/wire-format.md`), for the tests that write such bytes by hand.
#[macro_export]
macro_rules! for_each_stream_protocol {
    ($callback:ident) => {
        $callback! { tcp, unix }
    };
}

macro_rules! protocol_names {
    ($($proto:ident),*) => { &[$(stringify!($proto)),*] };
}

/// The protocols of [`for_each_protocol!`], as strings.
pub const PROTOCOLS: &[&str] = for_each_protocol!(protocol_names);

/// Waits (yielding, bounded by [`HANG_GUARD`]) until `done` holds: for
/// conditions no event announces, such as a descriptor count.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    guard(what, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// Reads one length-prefixed message (the framing of stream transports)
/// from a raw stream, under [`guard`]; panics if the stream ends first.
pub async fn read_message<R: AsyncRead + Unpin + ?Sized>(raw: &mut R) -> Vec<u8> {
    guard("a message", async {
        let mut len = [0u8; 4];
        raw.read_exact(&mut len).await.expect("a length prefix");
        let mut message = vec![0u8; u32::from_le_bytes(len) as usize];
        raw.read_exact(&mut message).await.expect("a message");
        message
    })
    .await
}

/// Deterministic bytes that are not a Courier stream: they do not start with
/// the preamble `CRR\x01` (xorshift, seeded).
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if let Some(first) = out.first_mut() {
        if *first == b'C' {
            *first = b'X';
        }
    }
    out
}

/// One message as a stream transport frames it: a 4-byte little-endian
/// length, then the frame header, then the payload (no preamble).
pub fn length_prefixed(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(header.len() + payload.len()).expect("message under 4 GiB");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(payload);
    out
}

/// The bytes a well-behaved client sends first: the stream preamble
/// `CRR\x01` and a Hello frame announcing no address (a client-mode engine).
pub fn preamble_and_hello() -> Vec<u8> {
    use courier::frame::{Header, Kind};
    let mut out = courier::transport::framing::PREAMBLE.to_vec();
    out.extend_from_slice(&length_prefixed(&Header::new(Kind::Hello).encode(), b""));
    out
}

/// A raw byte stream to a server, below the engine (to write garbage on).
pub trait RawSocket: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> RawSocket for T {}

/// Opens a raw stream to an engine's `address` (`tcp://host:port`,
/// `unix:///path`), with no preamble and no Hello.
///
/// Keyed by protocol: a new stream protocol adds an arm here.
pub async fn raw_connect(address: &str) -> io::Result<Box<dyn RawSocket>> {
    let (proto, rest) = address
        .split_once("://")
        .unwrap_or_else(|| panic!("not an address: {address}"));
    match proto {
        "tcp" => Ok(Box::new(tokio::net::TcpStream::connect(rest).await?)),
        "unix" => Ok(Box::new(tokio::net::UnixStream::connect(rest).await?)),
        // The handshake socket of the shm plugin: abstract unless a path.
        #[cfg(target_os = "linux")]
        "shm" => {
            let std_stream = if rest.starts_with('/') {
                std::os::unix::net::UnixStream::connect(rest)?
            } else {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(rest.as_bytes())?;
                std::os::unix::net::UnixStream::connect_addr(&addr)?
            };
            std_stream.set_nonblocking(true)?;
            Ok(Box::new(tokio::net::UnixStream::from_std(std_stream)?))
        }
        other => panic!(
            "no raw connector for protocol '{other}': add one to courier_conformance::raw_connect"
        ),
    }
}

/// A raw listening socket of a protocol, below the engine: a "server" the
/// test controls byte by byte (it can stop reading). Removes its socket
/// file, if any, when dropped.
#[derive(Debug)]
pub enum RawListener {
    /// A tcp listener.
    Tcp(tokio::net::TcpListener),
    /// A unix-domain listener and its socket file.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl RawListener {
    /// Listens on a fresh loopback address of `proto`; returns the listener
    /// and the address an engine looks up to reach it.
    ///
    /// Keyed by protocol: a new stream protocol adds an arm here.
    pub async fn bind(proto: &str) -> (Self, String) {
        match proto {
            "tcp" => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
                let address = format!("tcp://{}", l.local_addr().expect("local addr"));
                (Self::Tcp(l), address)
            }
            "unix" => {
                let path = unique_temp_path("raw.sock");
                let l = tokio::net::UnixListener::bind(&path).expect("bind unix");
                let address = format!("unix://{}", path.display());
                (Self::Unix(l, path), address)
            }
            other => panic!(
                "no raw listener for protocol '{other}': add one to courier_conformance::RawListener::bind"
            ),
        }
    }

    /// Accepts one connection (under [`guard`]).
    pub async fn accept(&self) -> Box<dyn RawSocket> {
        match self {
            Self::Tcp(l) => Box::new(guard("accept", l.accept()).await.expect("accept").0),
            Self::Unix(l, _) => Box::new(guard("accept", l.accept()).await.expect("accept").0),
        }
    }
}

impl Drop for RawListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How a raw stream ended, seen from the reading side.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// End of stream, after this many bytes from the server.
    Eof(usize),
    /// A read error (a reset), after this many bytes from the server.
    Error(io::ErrorKind, usize),
}

/// Reads `socket` until the server closes it (end of stream or an error),
/// under [`guard`]: returns how it ended. Panics if the server keeps it open.
pub async fn wait_for_close(socket: &mut Box<dyn RawSocket>, what: &str) -> Closed {
    guard(what, async {
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) => return Closed::Eof(total),
                Ok(n) => total += n,
                Err(e) => return Closed::Error(e.kind(), total),
            }
        }
    })
    .await
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh path under the system's temporary directory (not created).
pub fn unique_temp_path(tag: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "courier-conformance-{}-{n}-{tag}",
        std::process::id()
    ))
}

/// An address of `proto` at which nothing listens: connecting is refused at
/// once (not timed out). Keyed by protocol: a new protocol adds an arm here.
pub fn dead_address(proto: &str) -> String {
    match proto {
        "tcp" => {
            // A port that was just free: bind, note it, close.
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a tcp port");
            let port = l.local_addr().expect("local addr").port();
            drop(l);
            format!("tcp://127.0.0.1:{port}")
        }
        "unix" => format!("unix://{}", unique_temp_path("nobody.sock").display()),
        // A UDP port that was just free; the plugin's connected socket gets
        // "port unreachable" at once. Any fingerprint will do.
        "quic" => {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a udp port");
            let port = s.local_addr().expect("local addr").port();
            drop(s);
            format!("quic://127.0.0.1:{port}#sha256={}", "ab".repeat(32))
        }
        "shm" => format!(
            "shm://courier-conformance-nobody-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ),
        other => panic!(
            "no dead address for protocol '{other}': add one to courier_conformance::dead_address"
        ),
    }
}

/// An explicit, fresh listen address of `proto` for `Engine::new`
/// (`tcp://127.0.0.1:0`, `unix:///tmp/...sock`). Keyed by protocol: a new
/// protocol adds an arm here.
pub fn listen_address(proto: &str) -> String {
    match proto {
        "tcp" => "tcp://127.0.0.1:0".to_owned(),
        "unix" => format!("unix://{}", unique_temp_path("engine.sock").display()),
        "quic" => "quic://127.0.0.1:0".to_owned(),
        "shm" => format!(
            "shm://courier-conformance-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ),
        other => panic!(
            "no listen address for protocol '{other}': add one to courier_conformance::listen_address"
        ),
    }
}

/// An address of `proto` that parses as an address but whose plugin part
/// the transport refuses (`InvalidAddress`). Keyed by protocol: a new
/// protocol adds an arm here.
pub fn malformed_address(proto: &str) -> String {
    match proto {
        // No port.
        "tcp" => "tcp://127.0.0.1".to_owned(),
        // Not an absolute path.
        "unix" => "unix://relative/engine.sock".to_owned(),
        // A path that is not absolute and an abstract name may not contain.
        "shm" => "shm://".to_owned(),
        // No certificate fingerprint (and no CA roots configured).
        "quic" => "quic://127.0.0.1:4433".to_owned(),
        other => panic!(
            "no malformed address for protocol '{other}': add one to courier_conformance::malformed_address"
        ),
    }
}

/// The path of one of `courier`'s example binaries (`hello_server`,
/// `hello_client`), next to the running test: `target/<profile>/deps/<test>`
/// → `target/<profile>/examples/<name>`.
///
/// # Panics
/// If it is not built, with a message saying how to build it.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary {} not found: run `cargo build --examples` (or `cargo test --workspace`, \
         which builds them) before these tests",
        path.display()
    );
    path
}

/// A child process started by a test: stdout read line by line, stderr
/// collected in the background, killed if the test drops it (our own child
/// only).
#[derive(Debug)]
pub struct Process {
    /// The child. Tests may kill it (`child.kill()`), which sends SIGKILL.
    pub child: Child,
    name: String,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

impl Process {
    /// Starts `program` with `args`, stdin closed, stdout and stderr piped.
    pub fn spawn(program: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s).await;
            s
        });
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Self {
            child,
            name,
            stdout,
            stderr: Some(stderr),
        }
    }

    /// The next stdout line (under [`guard`]); `None` at end of output.
    pub async fn next_line(&mut self) -> Option<String> {
        let what = format!("a line from {}", self.name);
        guard(&what, self.stdout.next_line())
            .await
            .unwrap_or_else(|e| panic!("reading the stdout of {}: {e}", self.name))
    }

    /// Reads stdout until a line starting with `prefix`; returns the rest of
    /// that line. Panics (with the child's stderr) if output ends first.
    pub async fn expect_line(&mut self, prefix: &str) -> String {
        let mut seen = Vec::new();
        while let Some(line) = self.next_line().await {
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
            seen.push(line);
        }
        let status = guard("exit status", self.child.wait()).await;
        let stderr = self.take_stderr().await;
        panic!(
            "{} ended its output without a line starting with {prefix:?}; status {status:?}; \
             stdout: {seen:?}; stderr: {stderr}",
            self.name
        );
    }

    /// The rest of stdout, until the child closes it.
    pub async fn remaining_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Some(line) = self.next_line().await {
            lines.push(line);
        }
        lines
    }

    /// Waits for the child to exit (under [`guard`]).
    pub async fn wait(&mut self) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        guard(&what, self.child.wait())
            .await
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name))
    }

    /// Everything the child wrote on stderr (once it closed stderr).
    pub async fn take_stderr(&mut self) -> String {
        match self.stderr.take() {
            Some(h) => guard("stderr", h).await.unwrap_or_default(),
            None => String::new(),
        }
    }
}

/// Runs `program args` to completion (under [`guard`]; killed if it hangs)
/// and returns its status, stdout and stderr.
pub async fn run_to_end(program: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let mut p = Process::spawn(program, args);
    let stdout = p.remaining_lines().await.join("\n");
    let status = p.wait().await;
    let stderr = p.take_stderr().await;
    (status, stdout, stderr)
}

/// Removes the socket file of a `unix://` address whose server was killed
/// (a killed process cannot remove it), and its private directory when the
/// engine made one. Other protocols: nothing to do.
pub fn remove_stale_socket(address: &str) {
    if let Some(path) = address.strip_prefix("unix://") {
        let path = Path::new(path);
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            let private = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("courier-"));
            if private {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}
