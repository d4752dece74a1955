//! `courier bench --mode bulk`: pull and push MiB/s by transfer size, per
//! protocol, beside the transport's raw floor (and the plain-socket floor
//! for tcp and unix) and a single-core `memcpy` of the same size.
//!
//! The engine peer (a child process) exposes regions on request
//! (`bench.bulk_region`); this process pulls from an immutable one (`Bytes`,
//! sent without a copy) into a `BulkBuffer`, and pushes from immutable bytes
//! into a `BulkBuffer` of the peer, one transfer after another, each
//! transfer pipelining its own chunks (or copying directly, on shm). The floors move the same number of bytes as
//! messages of the transfer's size with as many in flight as a transfer's
//! window, each answered by an empty message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::transport::{Address as WireAddr, PluginOptions, Registry};
use courier::{Bulk, BulkBuffer, BulkMode, BulkOp, Bytes, Engine, Handle, RpcOptions};
use serde::Serialize;

use super::measure::{self, Spec};
use super::peer::{Peer, PeerArgs};
use super::{policy_label, size_label, BenchArgs, Layer, Plan, Proto};
use crate::{out, CliResult, Context, Error};

/// The RPC of the engine peer that exposes a region: a u64 size (LE) and a
/// kind byte in (0: immutable `Bytes`, read-only; 1: a `BulkBuffer`,
/// read-write), the region's handle (`Bulk::to_bytes`) out.
pub(crate) const REGION_RPC: &str = "bench.bulk_region";

const DEFAULT_SIZES: [usize; 5] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];
const QUICK_SIZES: [usize; 2] = [64 << 10, 1 << 20];
/// Bytes one measurement aims to move; fewer when the time cap comes first.
const BYTES_PER_MEASUREMENT: u64 = 256 << 20;
const QUICK_BYTES_PER_MEASUREMENT: u64 = 128 << 20;
const MIN_TRANSFERS: u64 = 4;

/// Registers `bench.bulk_region` on the engine peer. Regions stay exposed
/// until the peer exits.
pub(crate) fn register_region(engine: &Engine) -> courier::Result<()> {
    let keep: Arc<Mutex<Vec<Bulk>>> = Arc::default();
    let e = engine.clone();
    engine.register_raw(
        REGION_RPC,
        RpcOptions::default(),
        move |h: Handle, payload: Bytes| {
            let size = payload
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .and_then(|s| usize::try_from(s).ok());
            // Kind 0: the source of pulls, immutable (`Bytes`); else the
            // destination of pushes, a `BulkBuffer`.
            let immutable = payload.get(8) == Some(&0);
            let exposed = size.map(|s| {
                if immutable {
                    e.expose([Bytes::from(vec![0x5au8; s])], BulkMode::ReadOnly)
                } else {
                    e.expose([BulkBuffer::from(vec![0x5au8; s])], BulkMode::ReadWrite)
                }
            });
            let keep = keep.clone();
            async move {
                let bulk = match exposed {
                    Some(r) => r?,
                    None => return Err(courier::Error::BulkInvalid("expected a u64 size".into())),
                };
                let bytes = bulk.to_bytes()?;
                keep.lock().unwrap_or_else(|p| p.into_inner()).push(bulk);
                h.respond_raw(&bytes).await
            }
        },
    )
}

/// One row of the table and the JSON.
#[derive(Debug, Clone, Serialize)]
struct Row {
    protocol: String,
    size: usize,
    pull_mib_s: f64,
    push_mib_s: f64,
    raw_mib_s: Option<f64>,
    socket_mib_s: Option<f64>,
    memcpy_mib_s: f64,
    transfers: u64,
}

#[allow(clippy::cast_precision_loss)]
fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / f64::from(1u32 << 20) / took.as_secs_f64().max(1e-9)
}

/// Single-core copy bandwidth of `size`-byte buffers in this process.
fn memcpy_mib_s(size: usize, budget: u64) -> f64 {
    let src = vec![0x11u8; size];
    let mut dst = vec![0u8; size];
    let n = (budget / size.max(1) as u64).clamp(4, 100_000);
    dst.copy_from_slice(&src);
    let start = Instant::now();
    for _ in 0..n {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    mib_s(n * size as u64, start.elapsed())
}

pub(crate) async fn run(
    args: &BenchArgs,
    plan: &Plan,
    registry: &Registry,
    verbose: u8,
) -> CliResult {
    let sizes: Vec<usize> = if args.sizes.is_empty() {
        if plan.quick {
            QUICK_SIZES.to_vec()
        } else {
            DEFAULT_SIZES.to_vec()
        }
    } else {
        plan.sizes.iter().copied().filter(|&s| s > 0).collect()
    };
    let budget = if plan.quick {
        QUICK_BYTES_PER_MEASUREMENT
    } else {
        BYTES_PER_MEASUREMENT
    };
    let spin = plan
        .policies
        .first()
        .copied()
        .unwrap_or(courier::DEFAULT_PROGRESS_SPIN_US);
    out(format_args!(
        "courier bench --mode bulk: {} protocol(s), sizes {}, {} ({} runs, median)",
        plan.protocols.len(),
        sizes
            .iter()
            .map(|&s| size_label(s))
            .collect::<Vec<_>>()
            .join(", "),
        policy_label(spin),
        plan.runs
    ))?;
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for proto in &plan.protocols {
        let target = Target {
            plan,
            registry,
            proto,
            sizes: &sizes,
            budget,
            spin,
        };
        match measure_protocol(target, verbose).await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => errors.push(e.context(format!("bulk bench over {} failed", proto.name))),
        }
    }
    print_table(&rows)?;
    out(format_args!("({:.1} s)", started.elapsed().as_secs_f64()))?;
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "schema": "courier-bench-bulk/1",
            "machine": plan.machine,
            "config": {
                "command": std::env::args().collect::<Vec<_>>(),
                "sizes": sizes,
                "runs": plan.runs,
                "quick": plan.quick,
                "progress_spin_us": spin,
                "bytes_per_measurement": budget,
                "bulk_options": format!("{:?}", courier::BulkOptions::default()),
            },
            "results": rows,
            "errors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&json).map_err(|source| Error::Json {
            what: "the bulk results",
            source,
        })?;
        std::fs::write(path, text)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        out(format_args!("results written to {}", path.display()))?;
    }
    crate::fail_with_last(errors)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One protocol's measurement: what to run, with what.
#[derive(Clone, Copy)]
struct Target<'a> {
    plan: &'a Plan,
    registry: &'a Registry,
    proto: &'a Proto,
    sizes: &'a [usize],
    /// Bytes to move per size and run (the number of transfers follows).
    budget: u64,
    /// The polling window, in µs.
    spin: u64,
}

/// The peers of one protocol's measurement, one per layer.
#[derive(Clone, Copy)]
struct Peers<'a> {
    engine: &'a Peer,
    raw: &'a Peer,
    socket: Option<&'a Peer>,
}

async fn measure_protocol(target: Target<'_>, verbose: u8) -> CliResult<Vec<Row>> {
    let Target {
        plan, proto, spin, ..
    } = target;
    let mut peers = Vec::new();
    let spawn = |layer| {
        let args = PeerArgs {
            layer,
            protocol: proto.name.clone(),
            progress_spin_us: spin,
            max_message_size: plan.max_message_size,
            cpu: plan.peer_cpu,
            stream_window: None,
            oneway: false,
        };
        Peer::start(args, verbose, proto.in_process)
    };
    let engine_peer = spawn(Layer::Engine).await?;
    let raw_peer = match spawn(Layer::Raw).await {
        Ok(p) => p,
        Err(e) => {
            engine_peer.kill().await;
            return Err(e);
        }
    };
    let socket_peer = match proto.socket {
        None => None,
        Some(_) => match spawn(Layer::Socket).await {
            Ok(p) => Some(p),
            Err(e) => {
                engine_peer.kill().await;
                raw_peer.kill().await;
                return Err(e);
            }
        },
    };
    let peers_of = Peers {
        engine: &engine_peer,
        raw: &raw_peer,
        socket: socket_peer.as_ref(),
    };
    let result = measure_with(target, peers_of).await;
    peers.push(engine_peer);
    peers.push(raw_peer);
    peers.extend(socket_peer);
    for p in peers {
        if result.is_ok() {
            let _ = p.stop().await;
        } else {
            p.kill().await;
        }
    }
    result
}

async fn measure_with(target: Target<'_>, peers: Peers<'_>) -> CliResult<Vec<Row>> {
    let Target {
        plan,
        registry,
        proto,
        sizes,
        budget,
        spin,
    } = target;
    let Peers {
        engine: engine_peer,
        raw: raw_peer,
        socket: socket_peer,
    } = peers;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let client = Engine::builder(&proto.name)
        .client()
        .progress_spin(Duration::from_micros(spin))
        .max_message_size(plan.max_message_size)
        .build()
        .await
        .context(|| "client engine")?;
    let address = client
        .lookup(engine_peer.address())
        .await
        .context(|| "lookup of the engine peer")?;
    // Pulls copy from an immutable region of the peer into a buffer here;
    // pushes from immutable bytes here into a buffer of the peer: the
    // source is sent without a copy, the destination is written once.
    let mut handles = Vec::new();
    for kind in [0u8, 1] {
        let mut request = (largest as u64).to_le_bytes().to_vec();
        request.push(kind);
        let reply = client
            .remote_raw(REGION_RPC)
            .on(&address)
            .call(&request)
            .await
            .context(|| REGION_RPC)?;
        handles.push(Bulk::from_bytes(&reply)?);
    }
    let (pull_from, push_into) = (handles[0].clone(), handles[1].clone());
    let pull_into = client.expose(
        [BulkBuffer::from(vec![0xa5u8; largest])],
        BulkMode::WriteOnly,
    )?;
    let push_from = client.expose([Bytes::from(vec![0xa5u8; largest])], BulkMode::ReadOnly)?;
    let window = client.bulk_options().window.max(1);

    let (_, transport) =
        registry.create(&proto.name, &PluginOptions::new(), plan.max_message_size)?;
    let raw_addr: WireAddr = raw_peer
        .address()
        .parse()
        .context(|| "the raw peer's address")?;
    let polling = spin > 0;
    let buffer = Bytes::from(vec![0xa5u8; largest]);

    let mut rows = Vec::new();
    for &size in sizes {
        let transfers = (budget / size as u64).clamp(MIN_TRANSFERS, 100_000);
        let mut pulls = Vec::new();
        let mut pushes = Vec::new();
        let mut raws = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..plan.runs {
            for (op, remote, local, into) in [
                (BulkOp::Pull, &pull_from, &pull_into, &mut pulls),
                (BulkOp::Push, &push_into, &push_from, &mut pushes),
            ] {
                // The first `size` bytes of each side.
                let part = |b: &courier::Bulk| b.select(0, size);
                let (remote, local) = (&part(remote)?, &part(local)?);
                // Warm-up, then the measured transfers (stopped by the cap).
                for _ in 0..2 {
                    client
                        .transfer(op, &address, remote, local)
                        .await
                        .context(|| format!("{op:?} of {}", size_label(size)))?;
                }
                let start = Instant::now();
                let mut done = 0u64;
                while done < transfers && start.elapsed() < plan.time_cap {
                    client
                        .transfer(op, &address, remote, local)
                        .await
                        .context(|| format!("{op:?} of {}", size_label(size)))?;
                    done += 1;
                }
                into.push(mib_s(done * size as u64, start.elapsed()));
            }
            let spec = Spec {
                in_flight: window,
                calls: transfers.max(2 * window as u64),
                warmup: window as u64,
                time_cap: plan.time_cap,
            };
            let payload = buffer.slice(..size);
            raws.push(
                measure::raw(&transport, &raw_addr, &payload, &spec, polling)
                    .await
                    .context(|| format!("raw floor, {}", size_label(size)))?
                    .mib_per_s,
            );
            if let (Some(p), Some(kind)) = (socket_peer, proto.socket) {
                sockets.push(
                    measure::socket(kind, p.address(), &payload, &spec, polling)
                        .await
                        .context(|| format!("socket floor, {}", size_label(size)))?
                        .mib_per_s,
                );
            }
        }
        rows.push(Row {
            protocol: proto.name.clone(),
            size,
            pull_mib_s: median(pulls),
            push_mib_s: median(pushes),
            raw_mib_s: Some(median(raws)),
            socket_mib_s: (!sockets.is_empty()).then(|| median(sockets)),
            memcpy_mib_s: memcpy_mib_s(size, budget.min(1 << 30)),
            transfers,
        });
    }
    client.finalize().await;
    Ok(rows)
}

fn print_table(rows: &[Row]) -> CliResult {
    let header = [
        "protocol",
        "size",
        "pull MiB/s",
        "push MiB/s",
        "raw MiB/s",
        "socket MiB/s",
        "pull/floor",
        "push/floor",
        "memcpy MiB/s",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for r in rows {
        let floor = r.socket_mib_s.or(r.raw_mib_s).unwrap_or(0.0);
        let ratio = |v: f64| {
            if floor > 0.0 {
                format!("{:.2}", v / floor)
            } else {
                "-".into()
            }
        };
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        table.push(vec![
            r.protocol.clone(),
            size_label(r.size),
            format!("{:.0}", r.pull_mib_s),
            format!("{:.0}", r.push_mib_s),
            opt(r.raw_mib_s),
            opt(r.socket_mib_s),
            ratio(r.pull_mib_s),
            ratio(r.push_mib_s),
            format!("{:.0}", r.memcpy_mib_s),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < 2 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        out(line.join("  "))?;
    }
    out("floor: the socket floor for tcp and unix, else the transport's raw floor")
}
