//! GroupClient calls that fail: retried on another member for an idempotent RPC
//! (a member finalized under a call), never for another; the retry
//! budget; and the test, a client that sees no failed call while
//! one of three replicas is killed and restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod calls_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use courier::{Engine, Error};
use courier_group::{GroupClient, GroupFunction, RetryBudget};

use calls_support::*;

/// Three replicas; the group shows only the first until a call hangs in
/// it, then all three; then the first is finalized under the call.
async fn finalize_under_a_call(
    rpc: &str,
    idempotent: bool,
) -> (
    Vec<Replica>,
    courier::Result<(u32, u32)>,
    courier_group::GroupStats,
) {
    let mut replicas = replicas("mem", 3).await;
    replicas[0].behaviour.hang.store(true, Ordering::SeqCst);
    let members = TestMembers::new([replicas[0].address()]);
    let client = client("mem").await;
    let mut f = GroupFunction::<u32, (u32, u32)>::new(&client, members.clone(), rpc)
        .provider(PROVIDER)
        .timeout(Duration::from_secs(20));
    if idempotent {
        f = f.idempotent();
    }
    let call = tokio::spawn({
        let f = f.clone();
        async move { f.call(&7).await }
    });
    within("the call to reach replica 0", replicas[0].started.recv()).await;
    members.set(addresses(&replicas));
    replicas[0].engine.finalize().await;
    let result = within("the call to end", call).await.unwrap();
    (replicas, result, f.stats())
}

#[tokio::test]
async fn an_idempotent_call_goes_on_to_another_member_when_its_member_dies() {
    let (replicas, result, stats) = finalize_under_a_call("get", true).await;
    let (at, key) = result.unwrap();
    assert!(at == 1 || at == 2, "answered by replica {at}");
    assert_eq!(key, 7);
    assert_eq!(
        (stats.retries, stats.failed, stats.succeeded),
        (1, 0, 1),
        "{stats:?}"
    );
    assert_eq!(
        replicas[at as usize]
            .behaviour
            .served
            .load(Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn a_call_not_idempotent_is_never_sent_twice() {
    let (replicas, result, stats) = finalize_under_a_call("put", false).await;
    let err = result.unwrap_err();
    assert!(matches!(err.reach(), courier::Reach::Unknown), "{err:?}");
    assert_eq!((stats.retries, stats.failed), (0, 1), "{stats:?}");
    for r in &replicas[1..] {
        assert_eq!(r.behaviour.served.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn a_refusal_nothing_saw_is_not_retried_either_unless_idempotent() {
    // Members that lack the RPC refuse it before any handler runs (safe
    // to send again); still, only an idempotent function retries.
    let empty: Vec<Engine> = vec![
        Engine::new("mem").await.unwrap(),
        Engine::new("mem").await.unwrap(),
    ];
    let members = TestMembers::new(empty.iter().map(|e| e.address().to_string()));
    let client = client("mem").await;
    let put = GroupFunction::<u32, ()>::new(&client, members.clone(), "absent");
    let err = put.call(&1).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchRpc { .. }), "{err:?}");
    assert_eq!(put.stats().retries, 0);
    let get = GroupFunction::<u32, ()>::new(&client, members, "absent").idempotent();
    let err = get.call(&1).await.unwrap_err();
    assert!(matches!(err, Error::NoSuchRpc { .. }), "{err:?}");
    // The first try, then the other member, then a wait and one more.
    assert_eq!(get.stats().retries, 2, "{:?}", get.stats());
}

#[tokio::test]
async fn an_empty_budget_stops_retries() {
    let empty: Vec<Engine> = vec![
        Engine::new("mem").await.unwrap(),
        Engine::new("mem").await.unwrap(),
    ];
    let members = TestMembers::new(empty.iter().map(|e| e.address().to_string()));
    let client = client("mem").await;
    let group = GroupClient::builder(&client, members)
        .retry_budget(RetryBudget::none().max_tokens(3.0))
        .build();
    let get = group
        .function::<u32, ()>("absent")
        .idempotent()
        .max_attempts(100)
        .retry_backoff(courier_group::Backoff::new(
            Duration::from_micros(1),
            Duration::from_micros(1),
        ));
    assert!(get.call(&1).await.is_err());
    let s = get.stats();
    assert_eq!((s.retries, s.budget_exhausted), (3, 1), "{s:?}");
    for _ in 0..5 {
        assert!(matches!(get.call(&1).await, Err(Error::NoSuchRpc { .. })));
    }
    let s = get.stats();
    assert_eq!((s.calls, s.retries, s.budget_exhausted), (6, 3, 6), "{s:?}");
    assert!(group.budget_tokens() < 1.0);

    // A bucket of one token, full at the start, and half a token a call:
    // ten calls pay for five retries.
    let paid = group
        .function::<u32, ()>("absent")
        .idempotent()
        .max_attempts(2)
        .retry_budget(RetryBudget::none().ratio(0.5).max_tokens(1.0));
    for _ in 0..10 {
        let _ = paid.call(&1).await;
    }
    let s = paid.stats();
    assert_eq!((s.retries, s.budget_exhausted), (5, 5), "{s:?}");
}

/// The test: a client calls a group of 3 replicas of an
/// idempotent RPC from 8 tasks while one replica is killed (finalized:
/// its connections close under the calls in flight) and restarted; no
/// call fails. `same_address`: the replica comes back where it was and
/// the list never changes (the client reconnects after its backoff);
/// else it comes back elsewhere and the list is updated, as a membership
/// would: the dead address leaves, the new one joins.
async fn kill_and_restart(protocol: &str, same_address: bool) {
    // A unix replica that comes back at its address needs a directory
    // that outlives it (an engine removes its own at finalize).
    let dir = std::env::temp_dir().join(format!(
        "courier-group-calls-{}-{same_address}",
        std::process::id()
    ));
    let listen = if protocol == "unix" && same_address {
        std::fs::create_dir_all(&dir).unwrap();
        format!("unix://{}", dir.join("replica-1.sock").display())
    } else {
        protocol.to_owned()
    };
    let mut replicas = vec![
        replica(protocol, 0, None).await,
        replica(&listen, 1, None).await,
        replica(protocol, 2, None).await,
    ];
    let members = TestMembers::new(addresses(&replicas));
    let client = client(protocol).await;
    let group = GroupClient::builder(&client, members.clone())
        .connect_backoff(courier_group::Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .build();
    let get = group
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .timeout(Duration::from_secs(10));

    let load = Load::start(&get, 8);
    let served = |r: &Replica| r.behaviour.served.load(Ordering::SeqCst);
    let b = replicas[1].behaviour.clone();
    until("replica 1 to serve 200 calls", || {
        b.served.load(Ordering::SeqCst) >= 200
    })
    .await;
    let old = replicas.remove(1);
    let old_address = old.address();
    old.engine.finalize().await;
    drop(old);
    load.wait_for_more("200 calls with replica 1 dead", 200)
        .await;

    let back = if same_address {
        replica(&old_address, 1, None).await
    } else {
        let back = replica(protocol, 1, None).await;
        let mut list = addresses(&replicas);
        list.push(back.address());
        members.set(list);
        back
    };
    let b = back.behaviour.clone();
    until("the restarted replica to serve 200 calls", || {
        b.served.load(Ordering::SeqCst) >= 200
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
    assert!(served(&replicas[0]) > 0 && served(&replicas[1]) > 0);
    // Finalized before the directory goes (it removes its socket file).
    back.engine.finalize().await;
    drop(back);
    if protocol == "unix" && same_address {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "{protocol}, same address {same_address}: {} calls, {stats:?}",
        calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_a_replica_restarts_at_its_address_mem() {
    kill_and_restart("mem", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_a_replica_restarts_elsewhere_mem() {
    kill_and_restart("mem", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_a_replica_restarts_at_its_address_unix() {
    kill_and_restart("unix", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_a_replica_restarts_elsewhere_unix() {
    kill_and_restart("unix", false).await;
}

#[tokio::test]
async fn the_deadline_bounds_retries_and_their_waits() {
    // One member without the RPC: every retry waits (no other member to
    // try), 10 ms doubling, jittered; the call stops before a wait that
    // would outlast its 300 ms, with the last error.
    let empty = Engine::new("mem").await.unwrap();
    let client = client("mem").await;
    let get = GroupFunction::<u32, ()>::new(
        &client,
        TestMembers::new([empty.address().to_string()]),
        "absent",
    )
    .idempotent()
    .max_attempts(1000)
    .timeout(Duration::from_millis(300));
    let err = within("a call retried until its deadline", get.call(&1))
        .await
        .unwrap_err();
    // The last error: a refusal, or, if the deadline caught a request
    // in flight (a slow machine), its timeout.
    assert!(
        matches!(err, Error::NoSuchRpc { .. } | Error::Timeout { .. }),
        "{err:?}"
    );
    let s = get.stats();
    // Waits of at least 5, 10, 20, 40, 80, 160 ms: at most 5 fit in
    // 300 ms (fewer when the machine is slow), far from the 999 allowed.
    assert!((1..=5).contains(&s.retries), "{s:?}");
    assert_eq!((s.calls, s.failed, s.budget_exhausted), (1, 1, 0));
}
