//! The local limiter on plain values.

use super::*;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

fn limiter(global: Option<u32>) -> Limiter {
    Limiter::new(Backend::Local, global, Arc::new(NoObserver)).unwrap()
}

fn stream<'a>(user: &'a str, key: &'a str, limits: &'a StreamLimits) -> Claim<'a> {
    Claim {
        user: Some(user),
        key_id: Some(key),
        limits,
        wants_stream: true,
    }
}

fn streams(per_user: Option<u32>, per_key: Option<u32>) -> StreamLimits {
    StreamLimits {
        per_user_streams: per_user,
        per_key_streams: per_key,
        per_user_rpm: None,
    }
}

#[tokio::test]
async fn per_user_limit_counts_across_keys_and_frees_on_drop() {
    let l = limiter(None);
    let limits = streams(Some(2), None);
    let a = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
    let b = l.admit(&stream("alice", "k2", &limits)).await.unwrap();
    let err = l.admit(&stream("alice", "k3", &limits)).await.unwrap_err();
    assert_eq!(err, Rejection::UserStreams { limit: 2 });
    assert_eq!(err.reason(), "user_streams");
    assert_eq!(err.retry_after_secs(), 1);
    // Another user is not affected.
    let c = l.admit(&stream("bob", "k9", &limits)).await.unwrap();
    assert_eq!(l.in_flight(), 3);
    drop(a);
    let d = l.admit(&stream("alice", "k3", &limits)).await.unwrap();
    drop((b, c, d));
    assert_eq!(l.in_flight(), 0);
    assert!(l.snapshot().users.is_empty());
}

/// The proxy keeps the lease in its request context: a panic anywhere in the request's task
/// unwinds through it, and a request cancelled at shutdown drops it.
#[tokio::test]
async fn a_panicking_or_cancelled_request_releases_its_slot() {
    let l = limiter(None);
    let limits = streams(Some(1), None);
    let task = {
        let l = l.clone();
        tokio::spawn(async move {
            let limits = streams(Some(1), None);
            let _lease = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
            panic!("a filter panicked");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(l.in_flight(), 0);
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let task = {
        let l = l.clone();
        tokio::spawn(async move {
            let limits = streams(Some(1), None);
            let _lease = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
            held_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        })
    };
    held_rx.await.unwrap();
    assert!(l.admit(&stream("alice", "k2", &limits)).await.is_err());
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(l.in_flight(), 0);
    assert!(l.admit(&stream("alice", "k2", &limits)).await.is_ok());
}

#[tokio::test]
async fn per_key_limit_counts_across_users() {
    let l = limiter(None);
    let limits = streams(None, Some(1));
    let a = l.admit(&stream("alice", "shared", &limits)).await.unwrap();
    let err = l
        .admit(&stream("bob", "shared", &limits))
        .await
        .unwrap_err();
    assert_eq!(err, Rejection::KeyStreams { limit: 1 });
    assert_eq!(err.reason(), "key_streams");
    // The refused claim took nothing.
    assert_eq!(l.snapshot().users.get("bob"), None);
    drop(a);
    let _b = l.admit(&stream("bob", "shared", &limits)).await.unwrap();
}

#[tokio::test]
async fn limits_come_from_the_claim_counters_are_shared_across_routes() {
    let l = limiter(None);
    let loose = streams(Some(10), None);
    let tight = streams(Some(2), None);
    let _a = l.admit(&stream("alice", "k", &loose)).await.unwrap();
    let _b = l.admit(&stream("alice", "k", &loose)).await.unwrap();
    // The tight route sees the two streams held through the loose one.
    assert_eq!(
        l.admit(&stream("alice", "k", &tight)).await.unwrap_err(),
        Rejection::UserStreams { limit: 2 }
    );
    let _c = l.admit(&stream("alice", "k", &loose)).await.unwrap();
}

#[tokio::test]
async fn global_limit_counts_everyone_including_anonymous() {
    let l = limiter(Some(2));
    let none = StreamLimits::default();
    let anonymous = Claim {
        user: None,
        key_id: None,
        limits: &none,
        wants_stream: true,
    };
    let a = l.admit(&anonymous).await.unwrap();
    assert_eq!(a.streams_limit, Some(2));
    assert_eq!(a.streams_remaining, Some(1));
    let _b = l.admit(&stream("alice", "k", &none)).await.unwrap();
    let err = l.admit(&anonymous).await.unwrap_err();
    assert_eq!(err, Rejection::GlobalStreams { limit: 2 });
    assert_eq!(err.reason(), "global_streams");
    assert_eq!(
        l.admit(&stream("bob", "k2", &none)).await.unwrap_err(),
        Rejection::GlobalStreams { limit: 2 }
    );
    drop(a);
    let _c = l.admit(&anonymous).await.unwrap();
    let snap = l.snapshot();
    assert_eq!(snap.in_flight, 2);
    assert_eq!(snap.global_streams, Some(2));
    assert_eq!(snap.users.len(), 1, "anonymous streams have no user entry");
}

#[tokio::test]
async fn anonymous_claims_only_count_against_the_global_limit() {
    let l = limiter(None);
    let strict = StreamLimits {
        per_user_streams: Some(1),
        per_key_streams: Some(1),
        per_user_rpm: Some(1),
    };
    let anonymous = Claim {
        user: None,
        key_id: None,
        limits: &strict,
        wants_stream: true,
    };
    let mut leases = Vec::new();
    for _ in 0..5 {
        let admission = l.admit(&anonymous).await.unwrap();
        assert_eq!(admission.streams_limit, None);
        leases.push(admission.lease.unwrap());
    }
    assert_eq!(l.in_flight(), 5);
    let snap = l.snapshot();
    assert!(snap.users.is_empty() && snap.keys.is_empty());
    drop(leases);
    assert_eq!(l.in_flight(), 0);
}

#[tokio::test]
async fn non_stream_claims_take_no_slot_but_consume_rate() {
    let l = limiter(Some(1));
    let limits = StreamLimits {
        per_user_streams: Some(1),
        per_key_streams: None,
        per_user_rpm: Some(3),
    };
    let plain = Claim {
        user: Some("alice"),
        key_id: Some("k"),
        limits: &limits,
        wants_stream: false,
    };
    // A stream holds the only slot; plain requests still pass, without a lease.
    let lease = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    for _ in 0..2 {
        let admission = l.admit(&plain).await.unwrap();
        assert!(admission.lease.is_none());
        assert_eq!(admission.streams_limit, None);
    }
    assert_eq!(l.in_flight(), 1);
    // The stream took the first token; two plain requests the rest.
    let err = l.admit(&plain).await.unwrap_err();
    let Rejection::UserRate { limit, retry_after } = err.clone() else {
        panic!("{err:?}")
    };
    assert_eq!(limit, 3);
    // 3/min: a token every 20 s.
    assert!(retry_after >= Duration::from_secs(19) && retry_after <= Duration::from_secs(20));
    assert_eq!(err.retry_after_secs(), retry_after.as_secs());
    assert_eq!(err.reason(), "user_rate");
    // Rate is per user: bob is not affected.
    let bob = Claim {
        user: Some("bob"),
        ..plain
    };
    l.admit(&bob).await.unwrap();
    drop(lease);
}

#[tokio::test]
async fn a_rate_refusal_takes_no_slot_and_a_slot_refusal_takes_no_token() {
    let l = limiter(None);
    let limits = StreamLimits {
        per_user_streams: Some(1),
        per_key_streams: None,
        per_user_rpm: Some(2),
    };
    let lease = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    // Full on streams: refused, and no token spent.
    for _ in 0..5 {
        assert_eq!(
            l.admit(&stream("alice", "k", &limits)).await.unwrap_err(),
            Rejection::UserStreams { limit: 1 }
        );
    }
    drop(lease);
    let second = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    drop(second);
    // Both tokens used: now rate refuses, and holds no slot.
    let err = l.admit(&stream("alice", "k", &limits)).await.unwrap_err();
    assert_eq!(err.reason(), "user_rate");
    assert_eq!(l.in_flight(), 0);
    assert!(l.snapshot().users.is_empty());
}

#[tokio::test]
async fn admission_reports_the_tightest_stream_limit() {
    let l = limiter(Some(100));
    let limits = streams(Some(3), Some(5));
    let a = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!((a.streams_limit, a.streams_remaining), (Some(3), Some(2)));
    let _others: Vec<_> = [
        l.admit(&stream("bob", "k", &limits)).await.unwrap(),
        l.admit(&stream("carol", "k", &limits)).await.unwrap(),
        l.admit(&stream("dave", "k", &limits)).await.unwrap(),
    ]
    .into_iter()
    .collect();
    // The key has 4 of 5 now; alice's next is the key's last.
    let b = l.admit(&stream("alice", "k", &limits)).await.unwrap();
    assert_eq!((b.streams_limit, b.streams_remaining), (Some(5), Some(0)));
    let none = l
        .admit(&stream("erin", "k2", &StreamLimits::default()))
        .await
        .unwrap();
    assert_eq!(
        (none.streams_limit, none.streams_remaining),
        (Some(100), Some(94))
    );
    let unlimited = limiter(None);
    let free = unlimited
        .admit(&stream("erin", "k2", &StreamLimits::default()))
        .await
        .unwrap();
    assert_eq!((free.streams_limit, free.streams_remaining), (None, None));
}

#[tokio::test]
async fn snapshot_lists_live_counts_per_user_and_key() {
    let l = limiter(None);
    let limits = StreamLimits::default();
    let a = l.admit(&stream("alice", "k1", &limits)).await.unwrap();
    let _b = l.admit(&stream("alice", "k2", &limits)).await.unwrap();
    let _c = l.admit(&stream("bob", "k2", &limits)).await.unwrap();
    let snap = l.snapshot();
    assert_eq!(snap.backend, "local");
    assert_eq!(snap.in_flight, 3);
    assert_eq!(snap.users.get("alice"), Some(&2));
    assert_eq!(snap.users.get("bob"), Some(&1));
    assert_eq!(snap.keys.get("k2"), Some(&2));
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["backend"], "local");
    assert_eq!(json["users"]["alice"], 2);
    drop(a);
    let snap = l.snapshot();
    assert_eq!(snap.users.get("alice"), Some(&1));
    assert_eq!(snap.keys.get("k1"), None);
}

#[tokio::test]
async fn leases_outlive_the_limiter_handle() {
    let l = limiter(None);
    let limits = StreamLimits::default();
    let lease = l.admit(&stream("alice", "k", &limits)).await.unwrap().lease;
    let observer = l.clone();
    drop(l);
    assert_eq!(observer.in_flight(), 1);
    drop(observer);
    // Dropping the lease after the last limiter handle is fine.
    drop(lease);
}

#[test]
fn rejection_messages_name_the_limit_not_the_caller() {
    let cases = [
        Rejection::UserStreams { limit: 4 },
        Rejection::KeyStreams { limit: 2 },
        Rejection::GlobalStreams { limit: 9000 },
        Rejection::UserRate {
            limit: 600,
            retry_after: Duration::from_secs(3),
        },
    ];
    for r in &cases {
        let m = r.message();
        assert!(!m.is_empty());
        assert!(!m.contains("alice"));
    }
    assert!(cases[0].message().contains("limit 4"));
    assert!(cases[3].message().contains("retry in 3 s"));
    assert_eq!(cases[2].limit(), 9000);
    assert_eq!(cases[3].retry_after_secs(), 3);
    assert_eq!(
        Rejection::UserRate {
            limit: 1,
            retry_after: Duration::from_millis(1500)
        }
        .retry_after_secs(),
        2
    );
}

#[test]
fn lease_and_limiter_are_send_and_static() {
    fn assert_send_static<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    assert_send_static::<Limiter>();
    assert_send::<StreamLease>();
}

/// 64 tasks × 500 admit / hold / drop against one user's limit of 4, on a multi-thread
/// runtime: never more than 4 held at once, and everything back to zero at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admit_and_release_never_over_admit() {
    let l = limiter(Some(1_000));
    let held = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (l, held, max_seen, admitted) =
            (l.clone(), held.clone(), max_seen.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let limits = streams(Some(4), Some(3));
            let key = format!("k{}", t % 2);
            for i in 0..500 {
                // Some claims from other users on the same keys, to cross shards.
                let user = if i % 5 == 0 { "other" } else { "alice" };
                let claim = stream(user, &key, &limits);
                match l.admit(&claim).await {
                    Ok(admission) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        let lease = admission.lease.unwrap();
                        if user == "alice" {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                            assert!(now <= 4, "{now} alice streams held at once");
                        }
                        tokio::task::yield_now().await;
                        if i % 7 == 0 {
                            tokio::time::sleep(Duration::from_micros(50)).await;
                        }
                        if user == "alice" {
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        drop(lease);
                    }
                    Err(
                        Rejection::UserStreams { limit: 4 } | Rejection::KeyStreams { limit: 3 },
                    ) => tokio::task::yield_now().await,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(admitted.load(Ordering::Relaxed) > 100);
    assert!(
        max_seen.load(Ordering::SeqCst) >= 2,
        "no concurrency at all?"
    );
    assert_eq!(l.in_flight(), 0);
    let snap = l.snapshot();
    assert!(snap.users.is_empty(), "{:?}", snap.users);
    assert!(snap.keys.is_empty(), "{:?}", snap.keys);
}

/// The same on OS threads with their own runtimes, many distinct users: counters and maps end
/// empty.
#[test]
fn many_threads_and_users_leave_nothing_behind() {
    let l = limiter(Some(8));
    let mut threads = Vec::new();
    for t in 0..8 {
        let l = l.clone();
        threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let limits = streams(Some(1), Some(2));
                let mut held = Vec::new();
                for i in 0..2_000 {
                    let user = format!("u{}", (i * 7 + t) % 300);
                    let key = format!("k{}", i % 50);
                    if let Ok(a) = l.admit(&stream(&user, &key, &limits)).await {
                        held.push(a.lease.unwrap());
                    }
                    if held.len() > 3 || i % 3 == 0 {
                        held.pop();
                    }
                    assert!(l.in_flight() <= 8);
                }
            });
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(l.in_flight(), 0);
    let snap = l.snapshot();
    assert!(snap.users.is_empty() && snap.keys.is_empty());
}
