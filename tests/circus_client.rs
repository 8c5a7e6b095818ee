//! The circus client actor against a real circusd: concurrency, outages, recovery, a frozen
//! circusd, and retries on circusd's global lock.

mod common;

use std::time::{Duration, Instant};

use circus_warden::circus::client::Limits;
use circus_warden::circus::command::AddOptions;
use circus_warden::circus::{CircusClient, CircusError, Command, WatcherName};
use common::{Circusd, eventually};
use serde_json::json;

fn limits(mutation_ms: u64) -> Limits {
    Limits {
        connect: Duration::from_millis(500),
        read: Duration::from_millis(2000),
        mutation: Duration::from_millis(mutation_ms),
        lock_retries: 8,
        lock_retry_delay: Duration::from_millis(100),
    }
}

fn name(s: &str) -> WatcherName {
    WatcherName::parse(s).unwrap()
}

fn add(n: &str, program: &str, args: &[&str], start: bool) -> Command {
    let options = AddOptions { numprocesses: 1, extra: vec![("graceful_timeout", json!(1))], ..Default::default() };
    Command::Add { name: name(n), cmd: program.into(), args: args.iter().map(|s| s.to_string()).collect(), options, start }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_are_matched_by_id() {
    let circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(10_000), None).unwrap();
    client.call(add("w", "/bin/sleep", &["300"], true)).await.unwrap();
    let calls = (0..64).map(|i| {
        let c = client.clone();
        async move {
            if i % 2 == 0 {
                c.call(Command::Status { name: Some(name("w")) }).await.map(|v| v["status"].clone())
            } else {
                c.call(Command::List { name: Some(name("w")) }).await.map(|v| json!(v["pids"].is_array()))
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        let v = r.unwrap();
        if i % 2 == 0 { assert_eq!(v, "active") } else { assert_eq!(v, true) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_watcher_is_a_remote_not_found() {
    let circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(10_000), None).unwrap();
    let err = client.call(Command::Stop { name: name("nope") }).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_circusd_fails_fast_and_recovery_needs_no_restart() {
    let mut circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(3_000), None).unwrap();
    client.call(Command::Status { name: None }).await.unwrap();
    circus.kill();

    for cmd in [Command::Status { name: None }, add("x", "/bin/sleep", &["1"], false)] {
        let started = Instant::now();
        let err = client.call(cmd).await.unwrap_err();
        assert!(matches!(err, CircusError::Unavailable(_) | CircusError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(3_500), "took {:?}", started.elapsed());
    }

    circus.spawn();
    let recovered = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if client.call(Command::Status { name: None }).await.is_ok() || Instant::now() > deadline {
                break client.call(Command::Status { name: None }).await.is_ok();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(recovered, "the client did not reconnect to the restarted circusd");
    // The add that failed while circusd was down was never queued for later.
    assert!(!circus.watchers().contains(&"x".to_string()));
    client.call(add("y", "/bin/sleep", &["300"], false)).await.unwrap();
    assert!(circus.watchers().contains(&"y".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutation_that_timed_out_on_a_frozen_circusd_never_runs() {
    let circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(1_500), None).unwrap();
    client.call(Command::Status { name: None }).await.unwrap();

    circus.freeze();
    let err = client.call(add("ghost", "/bin/sleep", &["300"], true)).await.unwrap_err();
    assert!(matches!(err, CircusError::Unavailable(_) | CircusError::Timeout(_)), "{err:?}");
    // A read while frozen times out too, and its socket is replaced.
    assert!(client.call(Command::Status { name: None }).await.is_err());
    circus.signal(libc::SIGCONT);

    // Give a stale message every chance to be delivered, then check it was not.
    assert!(
        eventually(Duration::from_secs(5), || common::raw_call(&circus.control, "list", json!({}), Duration::from_millis(500)).is_some())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!circus.watchers().contains(&"ghost".to_string()), "a timed-out add ran after SIGCONT");
    // And the client works again.
    let mut ok = false;
    for _ in 0..50 {
        if client.call(Command::Status { name: None }).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the client did not recover after SIGCONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_retry_while_circusd_holds_its_lock() {
    let circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(15_000), None).unwrap();
    // A process that ignores SIGTERM keeps a graceful stop (and circusd's lock) busy ~2 s.
    let stubborn = "trap '' TERM; while true; do sleep 0.1; done";
    let options = AddOptions { numprocesses: 1, extra: vec![("graceful_timeout", json!(2))], ..Default::default() };
    client
        .call(Command::Add {
            name: name("stubborn"),
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), stubborn.into()],
            options,
            start: true,
        })
        .await
        .unwrap();
    // Stop it from another client, without waiting, so the lock is held by circusd.
    let stop =
        common::raw_call(&circus.control, "stop", json!({"name": "stubborn", "match": "simple", "waiting": false}), Duration::from_secs(5));
    assert_eq!(stop.unwrap()["status"], "ok");
    let started = Instant::now();
    client.call(add("after", "/bin/sleep", &["300"], false)).await.unwrap();
    assert!(circus.watchers().contains(&"after".to_string()));
    // It only succeeded once the lock was free: it waited through at least one retry.
    assert!(started.elapsed() >= Duration::from_millis(100), "no retry happened ({:?})", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_events_feed_the_process_view() {
    use circus_warden::circus::events::{CrashLoop, ProcessView, follow};
    let circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(10_000), None).unwrap();
    let view = ProcessView::new(None, CrashLoop::default());
    let stop = tokio_util::sync::CancellationToken::new();
    // A long reconcile interval: whatever the view learns below comes from events.
    tokio::spawn(follow(client.clone(), Some(circus.pubsub.clone()), view.clone(), Duration::from_secs(3600), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.call(add("ev", "/bin/sleep", &["300"], true)).await.unwrap();
    let pids = circus.call("list", json!({"name": "ev"}))["pids"].clone();
    let seen = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let w = view.get("ev").unwrap_or_default();
            if w.spawns >= 1 || Instant::now() > deadline {
                break w;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(seen.spawns, 1, "no spawn event reached the view");
    assert_eq!(json!(seen.pids.iter().collect::<Vec<_>>()), pids);
    assert_eq!(seen.state, "active");
    stop.cancel();
}

/// A watcher whose process ignores SIGTERM, so a stop takes its whole graceful timeout.
fn stubborn(n: &str, graceful_s: u64) -> Command {
    let options = AddOptions { numprocesses: 1, extra: vec![("graceful_timeout", json!(graceful_s))], ..Default::default() };
    let args = vec!["-c".to_string(), "trap '' TERM; while :; do sleep 1; done".to_string()];
    Command::Add { name: name(n), cmd: "/bin/sh".into(), args, options, start: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_queued_behind_a_slow_one_gets_its_own_connect_timeout() {
    let circus = Circusd::start();
    // connect timeout 500 ms; the stop ahead of it takes about 2 s.
    let client = CircusClient::start(&circus.control, limits(10_000), None).unwrap();
    client.call(stubborn("slow", 2)).await.unwrap();
    let stop = tokio::spawn({
        let c = client.clone();
        async move { c.call(Command::Stop { name: name("slow") }).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = client.call(add("next", "/bin/sleep", &["300"], false)).await;
    assert!(queued.is_ok(), "a mutation queued behind a slow one failed: {queued:?}");
    stop.await.unwrap().unwrap();
    assert!(circus.watchers().contains(&"next".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_lost_with_its_circusd_fails_at_once_and_the_next_proceeds() {
    let mut circus = Circusd::start();
    let client = CircusClient::start(&circus.control, limits(30_000), None).unwrap();
    client.call(stubborn("doomed", 20)).await.unwrap();
    let orphans = circus.call("list", json!({"name": "doomed"}))["pids"].clone();
    let started = Instant::now();
    let stop = tokio::spawn({
        let c = client.clone();
        async move { c.call(Command::Stop { name: name("doomed") }).await }
    });
    // circusd has the stop once the watcher is stopping (it waits out the graceful timeout).
    let stopping = eventually(Duration::from_secs(5), || circus.call("status", json!({"name": "doomed"}))["status"] == "stopping");
    assert!(stopping, "the stop never reached circusd");
    circus.signal(libc::SIGKILL);
    let lost = tokio::time::timeout(Duration::from_secs(10), stop).await.expect("the lost stop must not wait for its timeout").unwrap();
    assert!(matches!(lost, Err(CircusError::Lost(_))), "{lost:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?} of a 30 s budget", started.elapsed());
    // Another mutation while circusd is down, answered once circusd is back.
    let next = tokio::spawn({
        let c = client.clone();
        async move { c.call(add("after", "/bin/sleep", &["300"], false)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    circus.spawn();
    let back = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), next).await.expect("the next mutation hung").unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(back.elapsed() < Duration::from_secs(2), "took {:?} after circusd answered", back.elapsed());
    for pid in orphans.as_array().into_iter().flatten().filter_map(|p| p.as_i64()) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// `config check` asks an external circusd for its user on a one-off socket: the answer is
/// the user this test (and so circusd) runs as, and nothing when nobody listens.
#[test]
fn config_check_learns_circusd_user_from_dstats() {
    let circus = Circusd::start();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().map(|u| u.name);
    assert_eq!(circus_warden::isolation::circusd_user_once(&circus.control), me);
    assert_eq!(circus_warden::isolation::circusd_user_once("ipc:///tmp/cw-nobody-listens.sock"), None);
}
