//! Hedged group calls: a second request to another member when the first
//! is slow, the first answer returned, the other request cancelled at its
//! server; by a fixed delay or a percentile of recent latencies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod calls_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_group::{GroupClient, Hedge, RetryBudget};

use calls_support::*;

/// Two replicas; the next request either of them receives hangs.
async fn one_hangs() -> (Vec<Replica>, Arc<AtomicBool>) {
    let next = Arc::new(AtomicBool::new(false));
    let replicas = vec![
        replica("mem", 0, Some(next.clone())).await,
        replica("mem", 1, Some(next.clone())).await,
    ];
    (replicas, next)
}

/// Waits for the hung request's handler, at whichever replica, to be
/// cancelled.
async fn hung_one_cancelled(replicas: &mut [Replica]) -> u32 {
    let (a, b) = replicas.split_at_mut(1);
    within("the slow request to be cancelled", async {
        tokio::select! {
            Some(i) = a[0].cancelled.recv() => i,
            Some(i) = b[0].cancelled.recv() => i,
        }
    })
    .await
}

#[tokio::test]
async fn a_slow_request_is_hedged_and_the_first_answer_wins() {
    let (mut replicas, next) = one_hangs().await;
    let client = client("mem").await;
    let group = GroupClient::new(&client, TestMembers::new(addresses(&replicas)));
    let get = group
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .hedge_after(Duration::from_millis(20))
        .timeout(Duration::from_secs(20));

    // An answer before the delay (a generous one, so that a loaded
    // machine answers in time too): no hedge.
    let patient = get.clone().hedge_after(Duration::from_secs(5));
    assert_eq!(patient.call(&1).await.unwrap().1, 1);
    assert_eq!(get.stats().hedges, 0);

    next.store(true, Ordering::SeqCst);
    let (at, key) = within("a hedged call", get.call(&2)).await.unwrap();
    assert_eq!(key, 2);
    let s = get.stats();
    assert_eq!(
        (s.hedges, s.hedge_wins, s.retries, s.failed),
        (1, 1, 0, 0),
        "{s:?}"
    );
    // The hung request was the other replica's, and it was cancelled there.
    let hung = hung_one_cancelled(&mut replicas).await;
    assert_ne!(hung, at);
    assert_eq!(
        group.members().iter().map(|m| m.in_flight).sum::<usize>(),
        0
    );
}

#[tokio::test]
async fn a_call_not_idempotent_is_not_hedged() {
    let (mut replicas, next) = one_hangs().await;
    let client = client("mem").await;
    let put = GroupClient::new(&client, TestMembers::new(addresses(&replicas)))
        .function::<u32, (u32, u32)>("put")
        .provider(PROVIDER)
        .hedge_after(Duration::from_millis(1))
        .timeout(Duration::from_millis(100));
    next.store(true, Ordering::SeqCst);
    let err = within("a call that hangs", put.call(&1)).await.unwrap_err();
    assert!(matches!(err, courier::Error::Timeout { .. }), "{err:?}");
    assert_eq!(put.stats().hedges, 0);
    hung_one_cancelled(&mut replicas).await;
    let served: usize = replicas
        .iter()
        .map(|r| r.behaviour.served.load(Ordering::SeqCst))
        .sum();
    assert_eq!(served, 1);
}

#[tokio::test]
async fn a_hedge_needs_a_token() {
    let (mut replicas, next) = one_hangs().await;
    let client = client("mem").await;
    let get = GroupClient::new(&client, TestMembers::new(addresses(&replicas)))
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .retry_budget(RetryBudget::none())
        .hedge_after(Duration::from_millis(1))
        .timeout(Duration::from_millis(100));
    next.store(true, Ordering::SeqCst);
    let err = within("a call that hangs", get.call(&1)).await.unwrap_err();
    assert!(matches!(err, courier::Error::Timeout { .. }), "{err:?}");
    let s = get.stats();
    assert_eq!((s.hedges, s.budget_exhausted), (0, 1), "{s:?}");
    hung_one_cancelled(&mut replicas).await;
}

#[tokio::test]
async fn a_percentile_hedges_once_enough_calls_are_known() {
    let (mut replicas, next) = one_hangs().await;
    let client = client("mem").await;
    let get = GroupClient::new(&client, TestMembers::new(addresses(&replicas)))
        .function::<u32, (u32, u32)>("get")
        .provider(PROVIDER)
        .idempotent()
        .hedge_after(Hedge::Percentile(90.0))
        .timeout(Duration::from_secs(20));

    // Too few samples: a slow call is not hedged (it times out instead).
    let quick = get.clone().timeout(Duration::from_millis(100));
    next.store(true, Ordering::SeqCst);
    assert!(within("an unhedged call", quick.call(&0)).await.is_err());
    assert_eq!(get.stats().hedges, 0);
    hung_one_cancelled(&mut replicas).await;

    for key in 0..Hedge::MIN_SAMPLES as u32 {
        get.call(&key).await.unwrap();
    }
    next.store(true, Ordering::SeqCst);
    let (at, key) = within("a hedged call", get.call(&99)).await.unwrap();
    assert_eq!(key, 99);
    let s = get.stats();
    assert_eq!((s.hedges, s.hedge_wins, s.failed), (1, 1, 1), "{s:?}");
    assert_ne!(hung_one_cancelled(&mut replicas).await, at);
}
