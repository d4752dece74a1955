//! Group calls over the membership: a client calls a group of 3 replicas
//! whose list is a member's SWIM view (a membership `Group` is the
//! `Members`), while one replica is killed (finalized) and restarted at its
//! address, where it rejoins; no call fails, and the client follows the
//! view out and back in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod calls_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier_group::{Group, GroupClient, GroupOptions, MemberState, View};

use calls_support::*;

/// Fast times, for tests: a death is known within about a second.
fn fast() -> GroupOptions {
    GroupOptions {
        probe_period: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(80),
        suspect_to_down: Duration::from_millis(600),
        gossip_period: Duration::from_millis(100),
        announce_period: Duration::from_millis(500),
        announce_to_down_period: Duration::from_millis(500),
        join_timeout: Duration::from_secs(5),
        ..GroupOptions::default()
    }
}

async fn wait_view(group: &Group, what: &str, ok: impl Fn(&View) -> bool) {
    let mut views = group.watch();
    within(what, views.wait_for(|v| ok(v))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_a_member_dies_and_rejoins() {
    let name = format!("calls-{}", std::process::id());
    let restart_at = format!("mem://courier-group-calls-{}", std::process::id());
    let mut replicas = vec![
        replica("mem", 0, None).await,
        replica("mem", 1, None).await,
        replica(&restart_at, 2, None).await,
    ];
    let seed = Group::create(&replicas[0].engine, &name, fast())
        .await
        .unwrap();
    let mut members = vec![seed.clone()];
    for r in &replicas[1..] {
        members.push(
            Group::join(&r.engine, &name, &seed.address(), fast())
                .await
                .unwrap(),
        );
    }
    wait_view(&seed, "three members alive", |v| v.live().count() == 3).await;

    // The client reads the seed member's view.
    let client = client("mem").await;
    let get = GroupClient::new(&client, Arc::new(seed.clone()))
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .timeout(Duration::from_secs(10));
    let load = Load::start(&get, 8);
    let b = replicas[2].behaviour.clone();
    until("replica 2 to serve 100 calls", || {
        b.served.load(Ordering::SeqCst) >= 100
    })
    .await;
    let dead = replicas.remove(2);
    let address = dead.address();
    members.remove(2);
    dead.engine.finalize().await;
    drop(dead);
    wait_view(&seed, "replica 2 down", |v| {
        v.state_of(&address) == Some(MemberState::Down)
    })
    .await;
    load.wait_for_more("100 calls with replica 2 out of the view", 100)
        .await;

    let back = replica(&restart_at, 2, None).await;
    let _rejoined = Group::join(&back.engine, &name, &seed.address(), fast())
        .await
        .unwrap();
    wait_view(&seed, "replica 2 alive again", |v| {
        v.state_of(&address) == Some(MemberState::Alive)
    })
    .await;
    let b = back.behaviour.clone();
    until("the restarted replica to serve 100 calls", || {
        b.served.load(Ordering::SeqCst) >= 100
    })
    .await;
    let calls = load.ok();
    let failures = load.stop().await;
    let stats = get.stats();
    assert!(
        failures.is_empty(),
        "{} failed calls, e.g. {:?}; {stats:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(stats.failed, 0, "{stats:?}");
    eprintln!("{} calls, {stats:?}", calls);
}
