//! Files streamed between two processes, in chunks, with flow control: a
//! slow disk or a slow peer slows the other side down instead of filling
//! its memory.
//!
//! ```text
//! stream_file server <PROTOCOL> <DIR>          # prints "stream_file serving at <ADDRESS>"
//! stream_file put <ADDRESS> <FILE> <NAME>      # uploads FILE as DIR/NAME on the server
//! stream_file get <ADDRESS> <NAME> <FILE>      # downloads DIR/NAME into FILE
//! stream_file shutdown <ADDRESS>               # stops the server
//! ```
//!
//! * `upload(name)` is client-streaming: the client sends the file's
//!   chunks as items, closes its stream, and the server answers the
//!   length and checksum of what it wrote.
//! * `download(name)` is server-streaming: the server sends the file's
//!   chunks as items, then answers their length and checksum.
//!
//! Each side checks the other's figures against its own and prints
//! `<bytes> bytes, <MiB/s> MiB/s, fnv1a <checksum>`. Chunks are 1 MiB. A
//! name with a `/` or starting with `.` is refused. On any error either
//! side prints it and exits 1.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use courier::{Engine, Handle};

/// Bytes per item.
const CHUNK: usize = 1 << 20;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        // Colours on a terminal only (and not with NO_COLOR): plain text in a file or a pipe.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let outcome = match (arg(0), args.len()) {
        ("server", 3) => server(arg(1), Path::new(arg(2))).await,
        ("put", 4) => put(arg(1), Path::new(arg(2)), arg(3)).await,
        ("get", 4) => get(arg(1), arg(2), Path::new(arg(3))).await,
        ("shutdown", 2) => shutdown(arg(1)).await,
        _ => {
            eprintln!(
                "usage: stream_file server <PROTOCOL> <DIR> | put <ADDRESS> <FILE> <NAME> | \
                 get <ADDRESS> <NAME> <FILE> | shutdown <ADDRESS>"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = outcome {
        eprintln!("stream_file: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// FNV-1a 64 over a file's bytes, chunk by chunk.
#[derive(Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What both sides report of a transfer: bytes and checksum.
type Summary = (u64, u64);

/// `dir/name`, if `name` is a plain file name.
fn within(dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(format!("'{name}' is not a plain file name"));
    }
    Ok(dir.join(name))
}

/// Reads up to a chunk (a blocking read, on a thread that may block).
fn read_chunk(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    tokio::task::block_in_place(|| {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    })
}

async fn server(protocol: &str, dir: &Path) -> Result<(), BoxError> {
    let engine = Engine::new(protocol).await?;
    let dir: Arc<Path> = dir.into();

    let up = dir.clone();
    engine.register("upload", move |h: Handle, name: String| {
        let dir = up.clone();
        async move {
            let path = within(&dir, &name)?;
            let mut file = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (mut len, mut sum) = (0u64, Checksum::new());
            while let Some(chunk) = h.recv_item_raw().await.map_err(|e| e.to_string())? {
                tokio::task::block_in_place(|| file.write_all(&chunk))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                len += chunk.len() as u64;
                sum.update(&chunk);
            }
            h.respond(&(len, sum.0)).await.map_err(|e| e.to_string())
        }
    })?;

    engine.register("download", move |h: Handle, name: String| {
        let dir = dir.clone();
        async move {
            let path = within(&dir, &name)?;
            let mut file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let (mut len, mut sum) = (0u64, Checksum::new());
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = read_chunk(&mut file, &mut buf)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                // Waits while the client is a window ahead of its reads.
                h.send_item_raw(&buf[..n])
                    .await
                    .map_err(|e| e.to_string())?;
                len += n as u64;
                sum.update(&buf[..n]);
            }
            h.respond(&(len, sum.0)).await.map_err(|e| e.to_string())
        }
    })?;

    engine.enable_remote_shutdown();
    println!("stream_file serving at {}", engine.address());
    engine.wait_for_finalize().await;
    Ok(())
}

/// A client engine and the server's address.
async fn connect(address: &str) -> Result<(Engine, courier::Address), BoxError> {
    let parsed: courier::transport::Address = address.parse()?;
    let engine = Engine::builder(parsed.protocol()).client().build().await?;
    let server = engine.lookup(address).await?;
    Ok((engine, server))
}

fn report(
    what: &str,
    (len, sum): Summary,
    theirs: Summary,
    started: Instant,
) -> Result<(), BoxError> {
    if (len, sum) != theirs {
        return Err(format!(
            "{what}: this side counted {len} bytes (fnv1a {sum:016x}), the other {} ({:016x})",
            theirs.0, theirs.1
        )
        .into());
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{len} bytes, {:.1} MiB/s, fnv1a {sum:016x}",
        len as f64 / (1024.0 * 1024.0) / secs
    );
    Ok(())
}

async fn put(address: &str, path: &Path, name: &str) -> Result<(), BoxError> {
    let (engine, server) = connect(address).await?;
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let started = Instant::now();
    let upload = engine.remote::<String, Summary>("upload");
    let mut stream = upload
        .on(&server)
        .stream::<[u8], ()>(&name.to_owned())
        .await?;
    let (mut len, mut sum) = (0u64, Checksum::new());
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = read_chunk(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        stream.raw().send(&buf[..n]).await?;
        len += n as u64;
        sum.update(&buf[..n]);
    }
    stream.close().await?;
    let theirs = stream.finish().await?;
    report("upload", (len, sum.0), theirs, started)?;
    engine.finalize().await;
    Ok(())
}

async fn get(address: &str, name: &str, path: &Path) -> Result<(), BoxError> {
    let (engine, server) = connect(address).await?;
    let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let started = Instant::now();
    let download = engine.remote::<String, Summary>("download");
    let mut stream = download
        .on(&server)
        .stream::<(), ()>(&name.to_owned())
        .await?;
    let (mut len, mut sum) = (0u64, Checksum::new());
    while let Some(chunk) = stream.raw().recv().await? {
        tokio::task::block_in_place(|| file.write_all(&chunk))?;
        len += chunk.len() as u64;
        sum.update(&chunk);
    }
    let theirs = stream.finish().await?;
    report("download", (len, sum.0), theirs, started)?;
    engine.finalize().await;
    Ok(())
}

async fn shutdown(address: &str) -> Result<(), BoxError> {
    let (engine, server) = connect(address).await?;
    server.shutdown().await?;
    engine.finalize().await;
    Ok(())
}
