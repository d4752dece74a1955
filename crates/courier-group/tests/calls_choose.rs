//! GroupClient calls: which member a call goes to (the power of two choices by
//! calls in flight), members that cannot be reached (skipped, backed off,
//! not hammered), an empty group, and the deadline over everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod calls_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier::Error;
use courier_group::{Backoff, GroupClient, GroupFunction, StaticMembers};

use calls_support::*;

#[tokio::test]
async fn calls_avoid_the_member_busy_with_a_call() {
    let mut replicas = replicas("mem", 3).await;
    for r in &replicas {
        r.behaviour.hang.store(true, Ordering::SeqCst);
    }
    let client = client("mem").await;
    let group = GroupClient::new(&client, TestMembers::new(addresses(&replicas)));
    let get = group.function::<u32, (u32, u32)>("get").provider(PROVIDER);

    // One call hangs at some member: now it has one call in flight.
    let blocked = tokio::spawn({
        let get = get.clone();
        async move { get.call(&0).await }
    });
    let mut busy = None;
    for r in &mut replicas {
        // Exactly one replica saw it; find which without waiting on the others.
        if let Ok(i) = r.started.try_recv() {
            busy = Some(i);
        }
    }
    let busy = match busy {
        Some(i) => i,
        None => {
            // Not served yet: wait for whichever replica gets it.
            let (a, rest) = replicas.split_at_mut(1);
            let (b, c) = rest.split_at_mut(1);
            within("the first call to reach a replica", async {
                tokio::select! {
                    Some(i) = a[0].started.recv() => i,
                    Some(i) = b[0].started.recv() => i,
                    Some(i) = c[0].started.recv() => i,
                }
            })
            .await
        }
    };
    for r in &replicas {
        r.behaviour.hang.store(false, Ordering::SeqCst);
    }
    let loads = group.members();
    assert_eq!(
        loads.iter().map(|m| m.in_flight).sum::<usize>(),
        1,
        "{loads:?}"
    );

    // Of any two members drawn, the busy one loses: it is never chosen.
    for key in 1..=60 {
        let (at, echoed) = within("a call", get.call(&key)).await.unwrap();
        assert_eq!(echoed, key);
        assert_ne!(
            at, busy,
            "call {key} went to the member with a call in flight"
        );
    }
    let served: Vec<usize> = replicas
        .iter()
        .map(|r| r.behaviour.served.load(Ordering::SeqCst))
        .collect();
    assert_eq!(served[busy as usize], 1, "{served:?}");
    assert_eq!(served.iter().sum::<usize>(), 61);
    for (i, n) in served.iter().enumerate() {
        if i as u32 != busy {
            assert!(*n > 0, "both free members share the calls: {served:?}");
        }
    }
    blocked.abort();
}

#[tokio::test]
async fn an_empty_group_says_so() {
    let client = client("mem").await;
    let get = GroupFunction::<u32, (u32, u32)>::new(
        &client,
        Arc::new(StaticMembers::new(Vec::<String>::new())),
        "get",
    );
    let err = get.call(&1).await.unwrap_err();
    assert!(matches!(err, Error::NoPath { .. }), "{err:?}");
    assert!(err.to_string().contains("no live member"), "{err}");
    assert!(err.to_string().contains("'get'"), "{err}");
}

/// An address nobody listens at (its engine came and went).
async fn dead_address() -> String {
    let gone = courier::Engine::new("mem").await.unwrap();
    let address = gone.address().to_string();
    gone.finalize().await;
    address
}

#[tokio::test(start_paused = true)]
async fn a_dead_member_is_skipped_and_not_hammered() {
    let live = replicas("mem", 1).await;
    let dead = dead_address().await;
    let client = client("mem").await;
    let group = GroupClient::new(&client, TestMembers::new([live[0].address(), dead.clone()]));
    let get = group.function::<u32, (u32, u32)>("get").provider(PROVIDER);
    let connects = || {
        group
            .members()
            .into_iter()
            .find(|m| m.address == dead)
            .map(|m| m.connects)
            .unwrap()
    };

    // The paused clock stands still: the dead member's backoff never ends.
    for key in 0..200 {
        assert_eq!(get.call(&key).await.unwrap(), (0, key));
    }
    assert!(connects() <= 1, "looked up {} times", connects());

    // Over 6.4 s of calls every 100 ms, the backoff (100 ms doubling, at
    // least half of each step waited: 50, 100, ... 3200 ms) allows at most
    // 7 more lookups, where a member tried on each call would see 64.
    let first = connects();
    for key in 0..64 {
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(get.call(&key).await.unwrap(), (0, key));
    }
    let later = connects() - first;
    assert!((1..=7).contains(&later), "{later} lookups in 64 calls");
    let dead_status = group
        .members()
        .into_iter()
        .find(|m| m.address == dead)
        .unwrap();
    assert!(dead_status.failures >= 2, "{dead_status:?}");
    assert_eq!(get.stats().failed, 0);
    assert_eq!(get.stats().connect_failures, connects());
}

#[tokio::test(start_paused = true)]
async fn a_lone_backed_off_member_is_still_tried() {
    let dead = dead_address().await;
    let client = client("mem").await;
    let group = GroupClient::builder(&client, Arc::new(StaticMembers::new([dead.clone()])))
        .connect_backoff(Backoff::new(
            Duration::from_secs(60),
            Duration::from_secs(60),
        ))
        .build();
    let get = group.function::<u32, (u32, u32)>("get");
    for _ in 0..3 {
        let err = get.call(&1).await.unwrap_err();
        // The lookup's own error, not "no member".
        assert!(
            !matches!(err, Error::NoPath { ref tried, .. } if tried.contains("no live member")),
            "{err}"
        );
    }
    assert_eq!(group.members()[0].connects, 3);
    assert!(group.members()[0].backed_off_for.is_some());
}

#[tokio::test]
async fn the_timeout_bounds_a_call_whose_members_all_hang() {
    let mut replicas = replicas("mem", 3).await;
    for r in &replicas {
        r.behaviour.hang.store(true, Ordering::SeqCst);
    }
    let client = client("mem").await;
    let get = GroupFunction::<u32, (u32, u32)>::new(
        &client,
        TestMembers::new(addresses(&replicas)),
        "get",
    )
    .provider(PROVIDER)
    .idempotent()
    .hedge_after(Duration::from_millis(10))
    .timeout(Duration::from_millis(200));
    let err = within("a call to a group that hangs", get.call(&1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let stats = get.stats();
    assert_eq!((stats.calls, stats.failed), (1, 1), "{stats:?}");
    // Hedged once (two members hang), never retried: no time was left.
    assert_eq!((stats.hedges, stats.retries), (1, 0), "{stats:?}");
    // Both requests were cancelled at their servers.
    let mut cancelled = 0;
    for r in &mut replicas {
        if r.behaviour.served.load(Ordering::SeqCst) > 0 {
            within("the server to hear of the timeout", r.cancelled.recv()).await;
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, 2);
}

#[tokio::test]
async fn a_raw_function_carries_bytes() {
    let replicas = replicas("mem", 2).await;
    let client = client("mem").await;
    let group = GroupClient::new(&client, Arc::new(StaticMembers::new(addresses(&replicas))));
    let raw = group.raw_function("get").provider(PROVIDER);
    // A u32 of 5 in postcard is one byte; the answer is the pair (index, 5).
    let answer = raw.call(&[5]).await.unwrap();
    assert_eq!(answer.len(), 2);
    assert_eq!(answer[1], 5);
    assert!(answer[0] < 2);
    // A typed function decoding the wrong type says so: one u32 leaves
    // a byte of the pair over.
    let wrong = group.function::<u32, u32>("get").provider(PROVIDER);
    let err = wrong.call(&5).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("left over"), "{err}");
}

#[tokio::test]
async fn durations_past_the_clock_do_not_panic() {
    let replicas = replicas("mem", 1).await;
    let dead = dead_address().await;
    let client = client("mem").await;
    let members = StaticMembers::new([replicas[0].address(), dead.clone()]);
    let group = GroupClient::builder(&client, Arc::new(members))
        .connect_backoff(Backoff::new(Duration::MAX, Duration::MAX))
        .build();
    let get = group
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .retry_backoff(Backoff::new(Duration::MAX, Duration::MAX))
        .hedge_after(Duration::MAX)
        .timeout(Duration::MAX);
    for key in 0..20 {
        assert_eq!(get.call(&key).await.unwrap(), (0, key));
    }
    let status = group.members().into_iter().find(|m| m.address == dead);
    // Looked up once at most (if ever drawn), then backed off for good.
    assert!(
        status.is_some_and(|m| m.connects <= 1 && (m.connects == 0 || m.backed_off_for.is_some()))
    );
}
