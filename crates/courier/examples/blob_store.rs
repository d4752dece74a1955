//! A small data service in the manner of Mochi's object stores: blobs are
//! put and got through bulk transfers, never inside RPC messages.
//!
//! ```text
//! blob_store server <PROTOCOL>                 # prints "blob_store serving at <ADDRESS>"
//! blob_store client <ADDRESS> [SIZE ...]       # put, get and check one blob per size
//! ```
//!
//! * `put(name, handle)`: the client exposes its blob read-only and sends
//!   the handle; the server pulls it into a buffer of its own and keeps it.
//! * `get(name, handle)`: the client exposes an empty buffer write-only;
//!   the server pushes the blob into it (`stat(name)` gives the size first).
//!
//! The client checks every byte that comes back, prints one line per blob
//! (`<size> bytes: put <MiB/s>, get <MiB/s>`), then shuts the server down.
//! Sizes accept `K`, `M` and `G` suffixes (binary); the default is
//! `0 23 1M 64M`. On any error either side prints it and exits 1.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::{Bulk, BulkBuffer, BulkMode, Engine, Handle, Mode};

type Store = Arc<Mutex<HashMap<String, BulkBuffer>>>;

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
    let outcome = match args.first().map(String::as_str) {
        Some("server") if args.len() == 2 => server(&args[1]).await,
        Some("client") if args.len() >= 2 => client(&args[1], &args[2..]).await,
        _ => {
            eprintln!(
                "usage: blob_store server <PROTOCOL> | blob_store client <ADDRESS> [SIZE ...]"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = outcome {
        eprintln!("blob_store: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn server(protocol: &str) -> Result<(), BoxError> {
    let engine = Engine::new(protocol).await?;
    let store: Store = Arc::default();

    let (e, s) = (engine.clone(), store.clone());
    engine.register("put", move |h: Handle, (name, blob): (String, Bulk)| {
        let (engine, store) = (e.clone(), s.clone());
        async move {
            let buffer = BulkBuffer::new(blob.len());
            let local = engine.expose([buffer.clone()], BulkMode::WriteOnly)?;
            h.pull(&blob, &local).await?;
            lock(&store).insert(name, buffer);
            h.respond(&()).await
        }
    })?;

    let s = store.clone();
    engine.register("stat", move |h: Handle, name: String| {
        let size = lock(&s).get(&name).map(BulkBuffer::len);
        async move { h.respond(&size).await }
    })?;

    let (e, s) = (engine.clone(), store.clone());
    engine.register("get", move |h: Handle, (name, into): (String, Bulk)| {
        let (engine, store) = (e.clone(), s.clone());
        async move {
            let Some(buffer) = lock(&store).get(&name).cloned() else {
                return Err(format!("no blob named {name:?}").into());
            };
            if into.len() < buffer.len() {
                return Err(format!(
                    "blob {name:?} has {} bytes, the region has room for {}",
                    buffer.len(),
                    into.len()
                )
                .into());
            }
            let local = engine.expose([buffer], BulkMode::ReadOnly)?;
            // All of the blob, to the start of the caller's region.
            h.push(&into, &local).await?;
            h.respond(&()).await.map_err(BoxError::from)
        }
    })?;

    engine.enable_remote_shutdown();
    println!("blob_store serving at {}", engine.address());
    engine.wait_for_finalize().await;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn client(address: &str, sizes: &[String]) -> Result<(), BoxError> {
    let sizes: Vec<usize> = if sizes.is_empty() {
        vec![0, 23, 1 << 20, 64 << 20]
    } else {
        sizes
            .iter()
            .map(|s| parse_size(s))
            .collect::<Result<_, _>>()?
    };
    let parsed: courier::transport::Address = address.parse()?;
    let engine = Engine::builder(parsed.protocol())
        .mode(Mode::Client)
        .build()
        .await?;
    let timeout = Duration::from_secs(120);
    let put = engine.remote::<(String, Bulk), ()>("put").timeout(timeout);
    let stat = engine
        .remote::<String, Option<usize>>("stat")
        .timeout(timeout);
    let get = engine.remote::<(String, Bulk), ()>("get").timeout(timeout);
    let server = engine.lookup(address).await?;

    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("blob-{i}-{size}");
        let blob: Vec<u8> = (0..size)
            .map(|j| {
                (j as u64)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(i as u64) as u8
            })
            .collect();
        let exposed = engine.expose([BulkBuffer::from(blob.clone())], BulkMode::ReadOnly)?;
        let start = Instant::now();
        put.on(&server).call(&(name.clone(), exposed)).await?;
        let put_time = start.elapsed();

        let stored = stat
            .on(&server)
            .call(&name)
            .await?
            .ok_or_else(|| format!("the server does not know blob {name:?}"))?;
        let back = BulkBuffer::new(stored);
        let into = engine.expose([back.clone()], BulkMode::WriteOnly)?;
        let start = Instant::now();
        get.on(&server).call(&(name.clone(), into)).await?;
        let get_time = start.elapsed();
        if back.read(|b| b != blob.as_slice()) {
            return Err(format!("blob {name:?} came back different").into());
        }
        println!(
            "{size} bytes: put {:.0} MiB/s, get {:.0} MiB/s",
            mib_per_s(size, put_time),
            mib_per_s(size, get_time)
        );
    }
    server.shutdown().await?;
    Ok(())
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64().max(1e-9)
}

fn parse_size(s: &str) -> Result<usize, BoxError> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'K' | b'k') => (&s[..s.len() - 1], 10),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 20),
        Some(b'G' | b'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: usize = digits.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large").into())
}
