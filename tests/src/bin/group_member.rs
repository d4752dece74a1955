//! A member of a group, for the network-namespace group tests
//! (`tests/tests/netns_group.rs`), which start several in several
//! namespaces.
//!
//! * `group_member member <LISTEN> <GROUP_FILE> <GROUP_OPTIONS_JSON> [ENGINE_CONFIG_JSON]`:
//!   an engine listening at `LISTEN` (its JSON configuration, e.g. the
//!   chaos layer's options, if given) serves `echo` (idempotent: a `u64`,
//!   answered with it and the member's address), then opens the group of
//!   `GROUP_FILE` (`Group::open`: creates it, or joins through the members
//!   the file lists). Prints `ADDRESS <address>` once a member, then
//!   `VIEW <live addresses, sorted, space-separated>` at each change of its
//!   view (the first at once).
//! * `group_member client <LISTEN> <GROUP_FILE> <GROUP_OPTIONS_JSON> <IN_FLIGHT>`:
//!   a member too (its view is the list it calls), serving nothing; calls
//!   `echo` through a `GroupFunction` over the other live members, declared
//!   idempotent, with `IN_FLIGHT` calls at a time and a 10 s timeout each.
//!   Prints `ADDRESS` and `VIEW` lines as a member does, `FAILED <error>`
//!   for each failed call, and every 200 ms
//!   `CALLS <succeeded> <failed> <address>=<answered> …`.
//! * `group_member bench <ADDRESSES> <SECONDS> <IN_FLIGHT>`: a client engine
//!   (not a member) calls `echo` for `SECONDS` each: directly at the first
//!   of the comma-separated `ADDRESSES` (`direct`), directly at each in
//!   turn (`direct-in-turn`), through a group of all of them (`group`,
//!   `StaticMembers`) and through a group of the first alone
//!   (`group-of-1`); five rounds, every other one in the reverse order;
//!   after each run of `group`, `SPREAD <address>=<calls answered> …`. Prints `BENCH <kind> <calls/s>` for each.
//!   `GROUP_MEMBER_BENCH_KINDS` (comma-separated) runs only those kinds;
//!   `GROUP_MEMBER_CLIENT_CONFIG` is the client engine's JSON config.
//!
//! Logs follow `RUST_LOG`, on stderr. Any error ends it with status 1 and the error on stderr. With
//! `GROUP_MEMBER_JOIN_TRIES=N` in its environment, a member tries to open
//! the group up to `N` times (for a network that loses messages).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier::{Engine, RpcOptions};
use courier_group::{Group, GroupClient, GroupOptions, Members, StaticMembers};

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("group_member: {what}: {e}");
    std::process::exit(1)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Logs (RUST_LOG) on stderr, without colours: the tests read them
    // (the chaos layer's dropped messages, `courier_chaos=debug`).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("member") if args.len() >= 4 => {
            let config = args.get(4).map_or("{}", String::as_str);
            let (engine, group) = join(&args[1], &args[2], &args[3], config).await;
            let address = engine.address().to_string();
            engine
                .register_with(
                    "echo",
                    RpcOptions::default().idempotent(),
                    move |h: courier::Handle, n: u64| {
                        let address = address.clone();
                        async move { h.respond(&(n, address)).await }
                    },
                )
                .unwrap_or_else(|e| fail("registering echo", e));
            print_views(&group).await;
        }
        Some("client") if args.len() == 5 => {
            let in_flight: usize = args[4].parse().unwrap_or_else(|e| fail("IN_FLIGHT", e));
            let (engine, group) = join(&args[1], &args[2], &args[3], "{}").await;
            tokio::spawn(call_group(engine, group.clone(), in_flight));
            print_views(&group).await;
        }
        Some("bench") if args.len() == 4 => {
            let seconds: u64 = args[2].parse().unwrap_or_else(|e| fail("SECONDS", e));
            let in_flight: usize = args[3].parse().unwrap_or_else(|e| fail("IN_FLIGHT", e));
            bench(&args[1], Duration::from_secs(seconds), in_flight).await;
        }
        _ => {
            eprintln!(
                "usage: group_member member LISTEN GROUP_FILE GROUP_OPTIONS_JSON [ENGINE_CONFIG_JSON]\n       \
                 group_member client LISTEN GROUP_FILE GROUP_OPTIONS_JSON IN_FLIGHT\n       \
                 group_member bench ADDRESSES SECONDS IN_FLIGHT"
            );
            std::process::exit(2);
        }
    }
}

/// An engine at `listen`, a member of the group of `file`.
async fn join(listen: &str, file: &str, options: &str, config: &str) -> (Engine, Group) {
    let options = GroupOptions::from_json(options).unwrap_or_else(|e| fail("group options", e));
    let engine = Engine::builder(listen)
        .config_json(config)
        .build()
        .await
        .unwrap_or_else(|e| fail(&format!("an engine at {listen}"), e));
    // On a lossy network (the chaos layer), a join may lose all of its
    // messages: `GROUP_MEMBER_JOIN_TRIES` tries it again, as an operator
    // would (default: once).
    let tries: u32 = std::env::var("GROUP_MEMBER_JOIN_TRIES")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    let mut tried = 1;
    let group = loop {
        match Group::open(&engine, Path::new(file), options.clone()).await {
            Ok(group) => break group,
            Err(e) if tried < tries => {
                eprintln!("group_member: join {tried} of {tries} failed, trying again: {e}");
                tried += 1;
            }
            Err(e) => fail(&format!("opening the group of {file}"), e),
        }
    };
    println!("ADDRESS {}", group.address());
    (engine, group)
}

/// Prints the live members at each change of the view, forever.
async fn print_views(group: &Group) {
    let mut views = group.watch();
    loop {
        let mut live: Vec<String> = views
            .borrow_and_update()
            .live()
            .map(|m| m.address.clone())
            .collect();
        live.sort();
        println!("VIEW {}", live.join(" "));
        if views.changed().await.is_err() {
            fail("the view", "the group stopped");
        }
    }
}

/// The live members of a group but the viewer itself: a client member.
struct Others(Group);

impl Members for Others {
    fn live(&self) -> Vec<String> {
        let me = self.0.address();
        self.0.live().into_iter().filter(|a| *a != me).collect()
    }

    fn version(&self) -> u64 {
        self.0.version()
    }
}

async fn call_group(engine: Engine, group: Group, in_flight: usize) {
    let echo = GroupClient::new(&engine, Arc::new(Others(group)))
        .function::<u64, (u64, String)>("echo")
        .idempotent()
        .timeout(Duration::from_secs(10));
    let succeeded = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let by: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    for w in 0..in_flight as u64 {
        let (echo, succeeded, failed, by) =
            (echo.clone(), succeeded.clone(), failed.clone(), by.clone());
        tokio::spawn(async move {
            let mut n = w << 40;
            loop {
                n += 1;
                match echo.call(&n).await {
                    Ok((m, from)) if m == n => {
                        succeeded.fetch_add(1, Ordering::SeqCst);
                        *by.lock().unwrap().entry(from).or_default() += 1;
                    }
                    Ok((m, from)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        println!("FAILED {from} answered {m} to {n}");
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        println!("FAILED {e}");
                    }
                }
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let by: Vec<String> = by
            .lock()
            .unwrap()
            .iter()
            .map(|(a, n)| format!("{a}={n}"))
            .collect();
        println!(
            "CALLS {} {} {}",
            succeeded.load(Ordering::SeqCst),
            failed.load(Ordering::SeqCst),
            by.join(" ")
        );
    }
}

async fn bench(addresses: &str, span: Duration, in_flight: usize) {
    let addresses: Vec<&str> = addresses.split(',').collect();
    // `GROUP_MEMBER_CLIENT_CONFIG`: the client engine's JSON config (its
    // polling policy, say).
    let config = std::env::var("GROUP_MEMBER_CLIENT_CONFIG").unwrap_or_else(|_| "{}".to_owned());
    let client = Engine::builder(addresses[0].split("://").next().unwrap_or("tcp"))
        .client()
        .config_json(&config)
        .build()
        .await
        .unwrap_or_else(|e| fail("a client engine", e));
    let mut looked_up = Vec::new();
    for a in &addresses {
        looked_up.push(client.lookup(a).await.unwrap_or_else(|e| fail(a, e)));
    }
    let looked_up = Arc::new(looked_up);
    let direct = client
        .remote::<u64, (u64, String)>("echo")
        .timeout(Duration::from_secs(10));
    let group_of = |members: &[&str]| {
        GroupClient::new(&client, Arc::new(StaticMembers::new(members.to_vec())))
            .function::<u64, (u64, String)>("echo")
            .idempotent()
            .timeout(Duration::from_secs(10))
    };
    let (all, one) = (group_of(&addresses), group_of(&addresses[..1]));
    // `GROUP_MEMBER_BENCH_KINDS=group,direct-in-turn` runs only those (to
    // profile one).
    let chosen = std::env::var("GROUP_MEMBER_BENCH_KINDS").ok();
    let kinds: Vec<&str> = ["direct", "direct-in-turn", "group", "group-of-1"]
        .into_iter()
        .filter(|k| {
            chosen
                .as_deref()
                .is_none_or(|c| c.split(',').any(|c| c == *k))
        })
        .collect();
    for round in 0..5 {
        // Every other round in the reverse order: no kind always follows
        // the same one.
        let mut order = kinds.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let (d, to) = (direct.clone(), looked_up.clone());
            let group = if kind == "group" {
                all.clone()
            } else {
                one.clone()
            };
            // Which replica answered the group's calls.
            let spread: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
            let tally = spread.clone();
            let calls = run_for(span, in_flight, move |n| {
                let (direct, to, group, tally) =
                    (d.clone(), to.clone(), group.clone(), tally.clone());
                async move {
                    match kind {
                        "direct" => direct.on(&to[0]).call(&n).await.map(|_| ()),
                        // In turn: the n-th call of each task to the n-th member.
                        "direct-in-turn" => {
                            let member = &to[(n % to.len() as u64) as usize];
                            direct.on(member).call(&n).await.map(|_| ())
                        }
                        _ => group.call(&n).await.map(|(_, from)| {
                            *tally.lock().unwrap().entry(from).or_default() += 1;
                        }),
                    }
                }
            })
            .await;
            println!("BENCH {kind} {:.0}", calls as f64 / span.as_secs_f64());
            if kind == "group" {
                let spread: Vec<String> = spread
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(a, n)| format!("{a}={n}"))
                    .collect();
                println!("SPREAD {}", spread.join(" "));
            }
        }
    }
}

/// Calls `call` from `in_flight` tasks for `span`; the calls that succeeded.
async fn run_for<F, Fut>(span: Duration, in_flight: usize, call: F) -> u64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = courier::Result<()>> + Send,
{
    let end = Instant::now() + span;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..in_flight as u64 {
        let (call, done) = (call.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w << 40;
            while Instant::now() < end {
                n += 1;
                call(n).await.unwrap_or_else(|e| fail("a bench call", e));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed)
}
