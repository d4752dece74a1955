//! Heap allocations per RPC, counted on the client side and on the server
//! side apart, to measure the engine's per-call waste before and after a
//! change of its hot path.
//!
//! ```sh
//! cargo run --release -p courier-benches --bin allocs -- \
//!     [--protocols mem,tcp,unix,shm,quic] [--calls 20000] [--warmup 2000] \
//!     [--in-flight 1,32] [--size 64] [--rpcs raw,typed] [--json]
//! ```
//!
//! One process holds both engines. The server engine is built on a runtime
//! of its own (one worker thread), the client engine on another, and no
//! progress or RPC thread is asked for, so every thread the engines run on
//! is a worker (or blocking-pool thread) of one of those two runtimes. Each
//! runtime tags its threads with a side as they start (`on_thread_start`);
//! the global allocator below adds every allocation (`alloc`,
//! `alloc_zeroed`, `realloc`: one each, with the size asked for) to the
//! counters of its thread's side. The main thread, which only spawns the
//! calling tasks and waits for them, is `other`.
//!
//! For each protocol, RPC kind and number of calls in flight: a warm-up
//! (connection setup, buffers grown lazily, first-use tables), a pause for
//! the server to finish, counters reset, the measured calls, the same pause,
//! counters read. Two RPCs: `raw` echoes `--size` bytes
//! (`register_raw` + `respond_raw`, `remote_raw(..).call`), `typed` takes a
//! `u64` and returns it (`register` + `respond`, `remote::<u64, u64>`).
//!
//! Only Courier's public API is used, so that this one file also builds
//! against older commits of the engine (for "before" figures).
//!
//! `COURIER_ALLOC_SAMPLE=N` takes a backtrace of every N-th allocation of
//! either side during the measured calls and prints on stderr, per side,
//! where they come from: the first frame outside the allocator and std, the
//! first engine frame above it, and an estimate of allocations per RPC (the
//! samples of every row together: sample one protocol, RPC and in-flight at
//! a time). What capturing allocates counts as `other`, but the pauses it
//! adds change how messages batch at k > 1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use courier_benches::EnginePair;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier::{Engine, Handle, Mode, RpcOptions};
use tokio::runtime::Runtime;

use counting::Side;

/// The counting allocator: the one place where this program needs
/// `unsafe` (implementing `GlobalAlloc`).
mod counting {
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::backtrace::Backtrace;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Whose work a thread does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Side {
        /// Untagged threads (the main thread, the test harness).
        Other = 0,
        /// The client engine's runtime.
        Client = 1,
        /// The server engine's runtime.
        Server = 2,
    }

    impl Side {
        pub(crate) const ALL: [Self; 3] = [Self::Client, Self::Server, Self::Other];

        pub(crate) fn name(self) -> &'static str {
            match self {
                Self::Other => "other",
                Self::Client => "client",
                Self::Server => "server",
            }
        }

        fn from_u8(v: u8) -> Self {
            match v {
                1 => Self::Client,
                2 => Self::Server,
                _ => Self::Other,
            }
        }
    }

    thread_local! {
        // Const-initialized, no destructor: reading it never allocates and
        // works at any point of a thread's life.
        static SIDE: Cell<u8> = const { Cell::new(0) };
        static IN_SAMPLE: Cell<bool> = const { Cell::new(false) };
    }

    static ALLOCS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    static BYTES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

    /// Take a backtrace every `SAMPLE_EVERY` allocations (0: never) while
    /// `SAMPLING` is set.
    static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
    static SAMPLING: AtomicBool = AtomicBool::new(false);
    static SAMPLE_TICK: AtomicU64 = AtomicU64::new(0);
    static SAMPLES: Mutex<Vec<Sample>> = Mutex::new(Vec::new());

    /// One sampled allocation: its side, its size, its stack.
    #[derive(Debug)]
    pub(crate) struct Sample {
        pub(crate) side: Side,
        pub(crate) size: usize,
        pub(crate) trace: Backtrace,
    }

    /// Tags the calling thread.
    pub(crate) fn set_side(side: Side) {
        SIDE.with(|s| s.set(side as u8));
    }

    fn side() -> Side {
        Side::from_u8(SIDE.try_with(Cell::get).unwrap_or(0))
    }

    /// Counts of one side: allocations, and bytes asked for.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(crate) struct Count {
        pub(crate) allocs: u64,
        pub(crate) bytes: u64,
    }

    /// The counts of every side, indexed by `Side as usize`.
    pub(crate) fn snapshot() -> [Count; 3] {
        std::array::from_fn(|i| Count {
            allocs: ALLOCS[i].load(Ordering::SeqCst),
            bytes: BYTES[i].load(Ordering::SeqCst),
        })
    }

    pub(crate) fn reset() {
        for i in 0..3 {
            ALLOCS[i].store(0, Ordering::SeqCst);
            BYTES[i].store(0, Ordering::SeqCst);
        }
    }

    pub(crate) fn set_sample_every(n: u64) {
        SAMPLE_EVERY.store(n, Ordering::SeqCst);
    }

    pub(crate) fn sampling(on: bool) {
        SAMPLING.store(on, Ordering::SeqCst);
    }

    pub(crate) fn take_samples() -> Vec<Sample> {
        std::mem::take(&mut *SAMPLES.lock().unwrap_or_else(|e| e.into_inner()))
    }

    #[inline]
    fn record(size: usize) {
        // Capturing a sample allocates: those allocations come back here,
        // find the flag set, and count as `other`, neither sampled nor
        // locked for.
        let sampling = IN_SAMPLE.try_with(Cell::get).unwrap_or(true);
        let side = if sampling { Side::Other } else { side() };
        ALLOCS[side as usize].fetch_add(1, Ordering::Relaxed);
        BYTES[side as usize].fetch_add(size as u64, Ordering::Relaxed);
        if side != Side::Other && SAMPLING.load(Ordering::Relaxed) {
            maybe_sample(side, size);
        }
    }

    #[cold]
    fn maybe_sample(side: Side, size: usize) {
        let every = SAMPLE_EVERY.load(Ordering::Relaxed);
        if every == 0
            || !SAMPLE_TICK
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(every)
        {
            return;
        }
        if IN_SAMPLE.try_with(|f| f.replace(true)).unwrap_or(true) {
            return;
        }
        let trace = Backtrace::force_capture();
        if let Ok(mut samples) = SAMPLES.lock() {
            samples.push(Sample { side, size, trace });
        }
        let _ = IN_SAMPLE.try_with(|f| f.set(false));
    }

    /// `System`, counting.
    #[derive(Debug)]
    pub(crate) struct Counting;

    // SAFETY: every method forwards to `System` with the caller's own
    // arguments, so `System`'s guarantees are ours; counting only touches
    // atomics and a const-initialized thread-local, and never calls back
    // into the allocator except while sampling, where the thread-local flag
    // keeps that from recursing.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: the caller's contract for `alloc`, passed on as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            record(layout.size());
            // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            record(new_size);
            // SAFETY: the caller's contract for `realloc`, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract for `dealloc`, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// The raw RPC's name: echoes its payload.
const RAW: &str = "allocs_echo_raw";
/// The typed RPC's name: `u64` in, the same `u64` out.
const TYPED: &str = "allocs_echo_u64";

/// Time for the server to finish the work of the last calls (responses
/// sent, request state dropped) before counters are reset or read.
const SETTLE: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
struct Options {
    protocols: Vec<String>,
    calls: usize,
    warmup: usize,
    in_flight: Vec<usize>,
    size: usize,
    rpcs: Vec<Rpc>,
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Raw,
    Typed,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Typed => "typed",
        }
    }
}

const USAGE: &str = "usage: allocs [--protocols mem,tcp,unix,shm,quic] [--calls N] \
[--warmup N] [--in-flight 1,32] [--size BYTES] [--rpcs raw,typed] [--json]";

fn parse_list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{flag}: bad value '{s}'"))
        })
        .collect()
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        protocols: ["mem", "tcp", "unix", "shm", "quic"]
            .map(String::from)
            .to_vec(),
        calls: 20_000,
        warmup: 2_000,
        in_flight: vec![1, 32],
        size: 64,
        rpcs: vec![Rpc::Raw, Rpc::Typed],
        json: false,
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "--json" {
            o.json = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--protocols" => o.protocols = parse_list(&flag, &value)?,
            "--calls" => o.calls = parse_list(&flag, &value)?.pop().unwrap_or(0),
            "--warmup" => o.warmup = parse_list(&flag, &value)?.pop().unwrap_or(0),
            "--in-flight" => o.in_flight = parse_list(&flag, &value)?,
            "--size" => o.size = parse_list(&flag, &value)?.pop().unwrap_or(0),
            "--rpcs" => {
                o.rpcs = value
                    .split(',')
                    .map(|r| match r {
                        "raw" => Ok(Rpc::Raw),
                        "typed" => Ok(Rpc::Typed),
                        _ => Err(format!("--rpcs: '{r}' is neither raw nor typed")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if o.calls == 0 || o.in_flight.is_empty() || o.in_flight.contains(&0) {
        return Err("--calls and --in-flight must be positive".to_owned());
    }
    Ok(o)
}

/// A runtime whose threads are tagged `side`.
fn runtime(side: Side) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("allocs-{}", side.name()))
        .on_thread_start(move || counting::set_side(side))
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Both engines of one protocol, each on its own runtime.
struct Pair(EnginePair);

impl std::ops::Deref for Pair {
    type Target = EnginePair;

    fn deref(&self) -> &EnginePair {
        &self.0
    }
}

impl Pair {
    fn finish(self) {
        self.0.finish();
    }

    fn new(protocol: &str) -> courier::Result<Self> {
        let server_rt = runtime(Side::Server);
        let client_rt = runtime(Side::Client);
        let server = server_rt.block_on(Engine::builder(protocol).mode(Mode::Server).build())?;
        server.register_raw(
            RAW,
            RpcOptions::default(),
            |handle: Handle, payload| async move { handle.respond_raw(&payload).await },
        )?;
        server.register(TYPED, |handle: Handle, x: u64| async move {
            handle.respond(&x).await
        })?;
        let client = client_rt.block_on(Engine::builder(protocol).mode(Mode::Client).build())?;
        Ok(Self(EnginePair::connect(
            server_rt, client_rt, server, client,
        )?))
    }

    /// Makes `calls` calls of `rpc`, `in_flight` at a time, from tasks of
    /// the client runtime; the main thread only spawns and waits.
    fn run(&self, rpc: Rpc, calls: usize, in_flight: usize, size: usize) {
        let raw = self.client.remote_raw(RAW).on(&self.address);
        let typed = self.client.remote::<u64, u64>(TYPED).on(&self.address);
        let payload: Arc<[u8]> = (0..size).map(|i| i as u8).collect();
        let tasks: Vec<_> = (0..in_flight)
            .map(|t| {
                let mine = calls / in_flight + usize::from(t < calls % in_flight);
                let (raw, typed, payload) = (raw.clone(), typed.clone(), payload.clone());
                self.client_rt.spawn(async move {
                    for i in 0..mine as u64 {
                        match rpc {
                            Rpc::Raw => {
                                let back = raw.call(&payload).await.expect("raw call");
                                assert_eq!(back.len(), payload.len(), "echoed payload");
                            }
                            Rpc::Typed => {
                                let back = typed.call(&i).await.expect("typed call");
                                assert_eq!(back, i, "echoed u64");
                            }
                        }
                    }
                })
            })
            .collect();
        self.client_rt.block_on(async move {
            for t in tasks {
                t.await.expect("a calling task");
            }
        });
    }
}

/// One measurement.
#[derive(Debug, Clone)]
struct Row {
    protocol: String,
    rpc: Rpc,
    in_flight: usize,
    calls: usize,
    size: usize,
    counts: [counting::Count; 3],
}

impl Row {
    fn per_call(&self, side: Side) -> (f64, f64) {
        let c = self.counts[side as usize];
        let n = self.calls as f64;
        (c.allocs as f64 / n, c.bytes as f64 / n)
    }
}

fn measure(pair: &Pair, protocol: &str, rpc: Rpc, in_flight: usize, o: &Options) -> Row {
    pair.run(rpc, o.warmup, in_flight, o.size);
    std::thread::sleep(SETTLE);
    counting::reset();
    counting::sampling(true);
    pair.run(rpc, o.calls, in_flight, o.size);
    std::thread::sleep(SETTLE);
    counting::sampling(false);
    let counts = counting::snapshot();
    Row {
        protocol: protocol.to_owned(),
        rpc,
        in_flight,
        calls: o.calls,
        size: if rpc == Rpc::Raw { o.size } else { 8 },
        counts,
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:<6} {:>5} {:>9} | {:>12} {:>10} | {:>12} {:>10} | {:>7}",
        "protocol",
        "rpc",
        "k",
        "calls",
        "client a/rpc",
        "client B",
        "server a/rpc",
        "server B",
        "other a"
    );
    for r in rows {
        let (ca, cb) = r.per_call(Side::Client);
        let (sa, sb) = r.per_call(Side::Server);
        let rpc = match r.rpc {
            Rpc::Raw => format!("raw{}", r.size),
            Rpc::Typed => "u64".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<8} {:<6} {:>5} {:>9} | {:>12.2} {:>10.0} | {:>12.2} {:>10.0} | {:>7}",
            r.protocol,
            rpc,
            r.in_flight,
            r.calls,
            ca,
            cb,
            sa,
            sb,
            r.counts[Side::Other as usize].allocs
        );
    }
    s
}

fn json(rows: &[Row]) -> String {
    let mut s = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = write!(
            s,
            "  {{\"protocol\": \"{}\", \"rpc\": \"{}\", \"payload_bytes\": {}, \"in_flight\": {}, \"calls\": {}",
            r.protocol,
            r.rpc.name(),
            r.size,
            r.in_flight,
            r.calls
        );
        for side in Side::ALL {
            let c = r.counts[side as usize];
            let (a, b) = r.per_call(side);
            let _ = write!(
                s,
                ", \"{0}_allocs\": {1}, \"{0}_bytes\": {2}, \"{0}_allocs_per_rpc\": {3:.3}, \"{0}_bytes_per_rpc\": {4:.1}",
                side.name(),
                c.allocs,
                c.bytes,
                a,
                b
            );
        }
        s.push('}');
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("]\n");
    s
}

/// Frames that say nothing about who allocated.
fn is_plumbing(symbol: &str) -> bool {
    const SKIP: [&str; 12] = [
        "std::backtrace",
        "allocs::counting",
        "<allocs::counting",
        "__rust",
        "__rdl",
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "hashbrown::",
    ];
    SKIP.iter().any(|p| symbol.starts_with(p))
}

/// Where the sampled allocations come from: per side, sites by count,
/// a site being the first frame outside the allocator and std, and the
/// first frame of the engine (`courier::`) above it. `every` and `calls`
/// scale the counts back to allocations per RPC.
fn report_samples(samples: Vec<counting::Sample>, every: u64, calls: usize) {
    let engine = |s: &str| s.starts_with("courier::") || s.starts_with("<courier::");
    let mut sites: Vec<(Side, String, usize)> = Vec::new();
    for sample in samples {
        let text = sample.trace.to_string();
        let frames: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                let (n, sym) = l.trim_start().split_once(": ")?;
                n.parse::<usize>().ok().map(|_| sym.trim())
            })
            .filter(|s| !is_plumbing(s))
            .collect();
        let mut site = frames.first().copied().unwrap_or("?").to_owned();
        if let Some(caller) = frames.iter().skip(1).find(|f| engine(f)) {
            site = format!("{site}  <-  {caller}");
        }
        sites.push((sample.side, site, sample.size));
    }
    let scale = every as f64 / calls as f64;
    for side in [Side::Client, Side::Server] {
        // site -> (samples, bytes)
        let mut by_site: Vec<(String, usize, usize)> = Vec::new();
        for (_, site, size) in sites.iter().filter(|(s, _, _)| *s == side) {
            match by_site.iter_mut().find(|(k, _, _)| k == site) {
                Some((_, n, b)) => {
                    *n += 1;
                    *b += size;
                }
                None => by_site.push((site.clone(), 1, *size)),
            }
        }
        by_site.sort_by_key(|s| std::cmp::Reverse(s.1));
        let total: usize = by_site.iter().map(|c| c.1).sum();
        eprintln!(
            "\n{} side: {total} sampled allocations (1 in {every}); ~allocs/rpc, mean size, site",
            side.name()
        );
        for (site, n, bytes) in by_site.iter().take(20) {
            eprintln!("{:>6.2} {:>6}  {site}", *n as f64 * scale, bytes / n);
        }
    }
}

fn main() {
    let o = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let sample_every = std::env::var("COURIER_ALLOC_SAMPLE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    counting::set_sample_every(sample_every);

    let mut rows = Vec::new();
    for protocol in &o.protocols {
        let pair = match Pair::new(protocol) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{protocol}: skipped: {e}");
                continue;
            }
        };
        for &rpc in &o.rpcs {
            for &k in &o.in_flight {
                let started = Instant::now();
                let row = measure(&pair, protocol, rpc, k, &o);
                if !o.json {
                    eprintln!(
                        "{protocol} {} k={k}: {:.1} s",
                        rpc.name(),
                        started.elapsed().as_secs_f64()
                    );
                }
                rows.push(row);
            }
        }
        pair.finish();
    }
    if o.json {
        print!("{}", json(&rows));
    } else {
        println!(
            "allocations (a) and bytes asked for (B) per RPC; {} calls after {} warm-up calls",
            o.calls, o.warmup
        );
        print!("{}", table(&rows));
    }
    if sample_every > 0 {
        report_samples(counting::take_samples(), sample_every, o.calls * rows.len());
    }
}

#[cfg(test)]
mod tests {
    use super::counting::{self, Side};

    /// An allocation on a thread tagged `server` is counted for the server,
    /// with its size, and not for the client.
    #[test]
    fn a_tagged_thread_allocates_for_its_side() {
        let before = counting::snapshot();
        let size = std::thread::spawn(|| {
            counting::set_side(Side::Server);
            let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(4321));
            std::hint::black_box(&v);
            v.capacity()
        })
        .join()
        .unwrap();
        let after = counting::snapshot();
        let server = |c: [counting::Count; 3]| c[Side::Server as usize];
        assert_eq!(size, 4321);
        assert!(server(after).allocs > server(before).allocs);
        assert!(server(after).bytes - server(before).bytes >= 4321);
        assert_eq!(
            after[Side::Client as usize],
            before[Side::Client as usize],
            "nothing here runs on a client thread"
        );
    }
}
