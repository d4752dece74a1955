//! A benchmark, not a test (it asserts nothing about speed): calls a
//! second through a group of 3 replicas against direct calls to one
//! replica (and, to tell the group's cost from that of spreading calls,
//! direct calls to the 3 in turn, and a group of 1), in one process,
//! over `mem` and `tcp` (loopback), one call at a time and 16 at once,
//! the kinds interleaved. Run it in a release build:
//!
//! ```text
//! cargo test --release -p courier-group --test calls_bench -- --ignored --nocapture
//! ```
//!
//! `COURIER_GROUP_BENCH_SECS` sets each run's length (default 2 s),
//! `COURIER_GROUP_BENCH_ROUNDS` the rounds of each kind (default 3),
//! `COURIER_GROUP_BENCH_PROTOCOLS` the protocols (default `mem,tcp`),
//! `COURIER_GROUP_BENCH_TASKS` one of the two concurrencies (1 or 16).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod calls_support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_group::GroupClient;

use calls_support::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Calls a second of `call`, from `tasks` tasks at once, for `secs`.
async fn rate<F, Fut>(tasks: usize, secs: u64, call: F) -> f64
where
    F: Fn(u32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (stop, count, call) = (stop.clone(), count.clone(), call.clone());
        handles.push(tokio::spawn(async move {
            let mut key = t as u32 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                key += 1;
                call(key).await;
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it by hand in a release build (see the file's head)"]
async fn group_against_direct_calls() {
    let secs = env("COURIER_GROUP_BENCH_SECS", 2);
    let rounds = env("COURIER_GROUP_BENCH_ROUNDS", 3);
    println!("load average before: {}", loadavg());
    let protocols =
        std::env::var("COURIER_GROUP_BENCH_PROTOCOLS").unwrap_or_else(|_| "mem,tcp".to_owned());
    for protocol in protocols.split(',') {
        let replicas = replicas(protocol, 3).await;
        let client = client(protocol).await;
        let direct = client.remote::<u32, (u32, u32)>("get");
        let one = client.lookup(&replicas[0].address()).await.unwrap();
        // Every kind of call has the same timeout (a deadline costs a
        // timer per call).
        let timeout = Duration::from_secs(10);
        let direct = direct.on_provider(&one, PROVIDER).timeout(timeout);
        let group = GroupClient::new(&client, TestMembers::new(addresses(&replicas)));
        let get = group
            .function::<u32, (u32, u32)>("get")
            .provider(PROVIDER)
            .idempotent()
            .timeout(timeout);
        // Direct calls spread over the three in turn: what spreading
        // costs here (three servers share this process's threads, and the
        // client's calls fill three connections instead of one).
        let mut three = Vec::new();
        for r in &replicas {
            let a = client.lookup(&r.address()).await.unwrap();
            three.push(
                client
                    .remote::<u32, (u32, u32)>("get")
                    .on_provider(&a, PROVIDER)
                    .timeout(timeout),
            );
        }
        let three = Arc::new(three);
        // The group's own cost, with nothing to spread: a group of one.
        let alone = GroupClient::new(&client, TestMembers::new([replicas[0].address()]))
            .function::<u32, (u32, u32)>("get")
            .provider(PROVIDER)
            .idempotent()
            .timeout(timeout);
        for tasks in [1usize, 16].into_iter().filter(|t| {
            env("COURIER_GROUP_BENCH_TASKS", 0) as usize == *t
                || env("COURIER_GROUP_BENCH_TASKS", 0) == 0
        }) {
            let (mut d, mut g, mut a, mut r) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let t = three.clone();
                r.push(
                    rate(tasks, secs, move |k| {
                        let t = t.clone();
                        async move {
                            t[k as usize % 3].call(&k).await.unwrap();
                        }
                    })
                    .await,
                );
                let c = direct.clone();
                d.push(
                    rate(tasks, secs, move |k| {
                        let c = c.clone();
                        async move {
                            c.call(&k).await.unwrap();
                        }
                    })
                    .await,
                );
                let f = get.clone();
                g.push(
                    rate(tasks, secs, move |k| {
                        let f = f.clone();
                        async move {
                            f.call(&k).await.unwrap();
                        }
                    })
                    .await,
                );
                let f = alone.clone();
                a.push(
                    rate(tasks, secs, move |k| {
                        let f = f.clone();
                        async move {
                            f.call(&k).await.unwrap();
                        }
                    })
                    .await,
                );
            }
            let (dm, gm, am, rm) = (
                median(d.clone()),
                median(g.clone()),
                median(a.clone()),
                median(r.clone()),
            );
            println!("{protocol} {tasks} in flight, calls/s (median of {rounds} runs of {secs} s; the runs):");
            println!("  direct to one        {dm:>8.0}  {d:.0?}");
            println!("  direct, 3 in turn    {rm:>8.0}  {r:.0?}  {:.2}x", rm / dm);
            println!("  group of 3           {gm:>8.0}  {g:.0?}  {:.2}x", gm / dm);
            println!("  group of 1           {am:>8.0}  {a:.0?}  {:.2}x", am / dm);
        }
        println!("group stats: {:?}", get.stats());
    }
    println!("load average after: {}", loadavg());
}
