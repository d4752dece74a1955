//! Membership on the `mem` transport, several engines in one process:
//! convergence, deaths, leaves, rejoins, bad input, group files.
//!
//! Nothing here waits on a sleep or asserts a time: each test waits for a
//! condition on a member's view (or its group file) under a generous hang
//! guard, and the group's times are tuned down so that the conditions come
//! fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use courier::Engine;
use courier_group::membership::{LEAVE_RPC, SWIM_RPC};
use courier_group::{
    Dropped, Group, GroupFile, GroupOptions, MemberState, Members, MembershipError, View,
    WIRE_VERSION,
};

/// How long any one condition may take before the test fails: a hang
/// guard, far above what the conditions take.
const GUARD: Duration = Duration::from_secs(30);

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

/// Waits until `group`'s view satisfies `ok`; fails with the last view
/// after the guard.
async fn wait_view(group: &Group, what: &str, ok: impl Fn(&View) -> bool) -> View {
    let mut views = group.watch();
    let found = tokio::time::timeout(GUARD, views.wait_for(|v| ok(v))).await;
    match found {
        Ok(Ok(view)) => view.clone(),
        _ => panic!(
            "{}: no view where {what} within {GUARD:?}; last: {:#?}",
            group.address(),
            group.view()
        ),
    }
}

fn live_set(view: &View) -> BTreeSet<String> {
    view.live().map(|m| m.address.clone()).collect()
}

async fn engines(n: usize) -> Vec<Engine> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(Engine::new("mem").await.unwrap());
    }
    all
}

/// A group of one member per engine, all joined through the first.
async fn group_of(engines: &[Engine], name: &str, options: &GroupOptions) -> Vec<Group> {
    let mut groups = vec![Group::create(&engines[0], name, options.clone())
        .await
        .unwrap()];
    let via = groups[0].address();
    for e in &engines[1..] {
        groups.push(Group::join(e, name, &via, options.clone()).await.unwrap());
    }
    groups
}

/// Waits until every group's view has exactly `expected` live.
async fn converge(groups: &[Group], expected: &BTreeSet<String>) {
    for g in groups {
        wait_view(g, "the live members are the expected ones", |v| {
            live_set(v) == *expected && v.live().all(|m| m.state == MemberState::Alive)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_members_reach_the_same_full_view() {
    let engines = engines(8).await;
    let mut groups = vec![Group::create(&engines[0], "eight", fast()).await.unwrap()];
    // Each joins through the member before it: the view spreads by SWIM.
    for e in &engines[1..] {
        let via = groups.last().unwrap().address();
        groups.push(Group::join(e, "eight", &via, fast()).await.unwrap());
    }
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    assert_eq!(all.len(), 8);
    converge(&groups, &all).await;
    // The same members everywhere, generations included (alive or, should
    // a probe be late on a loaded machine, suspected: live all the same).
    let members = |v: &View| -> BTreeSet<(String, u64)> {
        v.live()
            .map(|m| (m.address.clone(), m.generation))
            .collect()
    };
    let first = members(&groups[0].view());
    assert_eq!(first.len(), 8);
    for g in &groups {
        let v = g.view();
        assert_eq!(v.group, "eight");
        assert_eq!(v.viewer, g.address());
        assert_eq!(members(&v), first, "{} disagrees", g.address());
        // As the group calls see it.
        let live: BTreeSet<String> = Members::live(g).into_iter().collect();
        assert_eq!(live, all);
        assert_eq!(Members::version(g), v.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_answering_is_declared_down_everywhere() {
    let engines = engines(4).await;
    let groups = group_of(&engines, "deaths", &fast()).await;
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    converge(&groups, &all).await;

    // It dies without a word: its membership stops (every handle dropped,
    // so finalize has no group to leave), then its engine.
    let mut groups = groups;
    let dying = groups.pop().unwrap();
    let dead = dying.address();
    drop(dying);
    engines[3].finalize().await;
    let mut rest = all.clone();
    rest.remove(&dead);
    for g in &groups[..3] {
        let v = wait_view(g, "the dead member is down", |v| {
            v.state_of(&dead) == Some(MemberState::Down)
        })
        .await;
        assert!(!v.live().any(|m| m.address == dead));
    }
    converge(&groups[..3], &rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_shut_down_remotely_leaves_rather_than_dies() {
    let engines = engines(3).await;
    let groups = group_of(&engines, "shutdowns", &fast()).await;
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    converge(&groups, &all).await;

    // A remote shutdown finalizes the engine; the member leaves first.
    let leaving = groups[2].address();
    engines[2].enable_remote_shutdown();
    let peer = engines[0].lookup(&leaving).await.unwrap();
    peer.shutdown().await.unwrap();
    engines[2].wait_for_finalize().await;
    assert!(!groups[2].is_running());
    for g in &groups[..2] {
        wait_view(g, "the shut-down member is left", |v| {
            v.state_of(&leaving) == Some(MemberState::Left)
        })
        .await;
    }
    // Its own finalize, after the leave, is quick and harmless.
    engines[2].finalize().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_taken_in_announces_itself_to_those_it_learned_of() {
    // Nothing periodic within the test's guard: no probe, no gossip, no
    // periodic announce. B can then learn of C only from C itself, which
    // learned of B from the feed A sent it when it joined.
    let slow = Duration::from_secs(120);
    let options = GroupOptions {
        probe_period: slow,
        probe_timeout: Duration::from_secs(1),
        gossip_period: slow,
        announce_period: slow,
        announce_to_down_period: slow,
        max_transmissions: 1,
        ..GroupOptions::default()
    };
    let engines = engines(3).await;
    let a = Group::create(&engines[0], "fan-out", options.clone())
        .await
        .unwrap();
    let b = Group::join(&engines[1], "fan-out", &a.address(), options.clone())
        .await
        .unwrap();
    wait_view(&a, "A knows B", |v| {
        v.state_of(&b.address()) == Some(MemberState::Alive)
    })
    .await;
    let c = Group::join(&engines[2], "fan-out", &a.address(), options)
        .await
        .unwrap();
    let all: BTreeSet<String> = [&a, &b, &c].iter().map(|g| g.address()).collect();
    for g in [&a, &b, &c] {
        wait_view(g, "all three alive", |v| live_set(v) == all).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_is_seen_as_left_and_ends_the_membership() {
    let engines = engines(3).await;
    let groups = group_of(&engines, "leaves", &fast()).await;
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    converge(&groups, &all).await;

    let leaving = groups[2].address();
    groups[2].leave().await.unwrap();
    assert!(!groups[2].is_running());
    assert_eq!(groups[2].view().state_of(&leaving), Some(MemberState::Left));
    for g in &groups[..2] {
        wait_view(g, "the leaver is left", |v| {
            v.state_of(&leaving) == Some(MemberState::Left)
        })
        .await;
    }
    // Left once is left: a second leave says the membership stopped.
    let e = groups[2].leave().await.unwrap_err();
    assert!(matches!(e, MembershipError::Stopped { .. }), "{e}");
    assert!(e.to_string().contains("leaves"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_at_its_address_rejoins() {
    restart_at_the_same_address("rejoin-died", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_left_and_restarts_at_its_address_rejoins() {
    restart_at_the_same_address("rejoin-left", true).await;
}

/// A member stops (dies, or finalizes and so leaves), then an engine at
/// its address joins again: a newer member, alive in every view.
async fn restart_at_the_same_address(group: &str, leaves: bool) {
    let a = Engine::new("mem").await.unwrap();
    let b = Engine::new("mem").await.unwrap();
    let name = format!("mem://courier-group-{group}-{}", std::process::id());
    let c = Engine::new(&name).await.unwrap();
    let mut groups = group_of(&[a.clone(), b.clone(), c.clone()], group, &fast()).await;
    let address = c.address().to_string();
    let all: BTreeSet<String> = [&a, &b, &c]
        .iter()
        .map(|e| e.address().to_string())
        .collect();
    converge(&groups, &all).await;
    let before = groups[0].view().member(&address).unwrap().generation;

    let stopped = if leaves {
        MemberState::Left
    } else {
        // A death: no handle left for finalize to leave with.
        drop(groups.pop());
        MemberState::Down
    };
    c.finalize().await;
    drop(c);
    for g in &groups[..2] {
        wait_view(g, "the stopped member is out", |v| {
            v.state_of(&address) == Some(stopped)
        })
        .await;
    }

    // The same address again, a new process in all but name.
    let c = Engine::new(&name).await.unwrap();
    assert_eq!(c.address().to_string(), address);
    let back = Group::join(&c, group, &groups[1].address(), fast())
        .await
        .unwrap();
    for g in [&groups[0], &groups[1], &back] {
        let v = wait_view(g, "the restarted member is alive", |v| {
            v.live().count() == 3 && v.state_of(&address) == Some(MemberState::Alive)
        })
        .await;
        assert!(v.member(&address).unwrap().generation > before);
    }
}

/// Sends `payload` to `rpc` at `to`, one-way, from `from`.
async fn send_raw(from: &Engine, to: &str, rpc: &str, payload: &[u8]) {
    let at = from.lookup(to).await.unwrap();
    from.remote_raw(rpc)
        .disable_response()
        .on(&at)
        .call(payload)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dropped_and_counted_never_applied() {
    // Default (slow) times: nothing changes the view by itself meanwhile.
    let engines = engines(3).await;
    let groups = group_of(&engines[..2], "input", &GroupOptions::default()).await;
    let all: BTreeSet<String> = engines[..2]
        .iter()
        .map(|e| e.address().to_string())
        .collect();
    converge(&groups, &all).await;
    let target = &groups[0];
    let before = target.view();
    let counted = target.dropped();
    let stranger = &engines[2];
    let to = target.address();

    // A message for another group.
    let other =
        postcard::to_allocvec(&(WIRE_VERSION, "elsewhere", [1u8, 2, 3].as_slice())).unwrap();
    send_raw(stranger, &to, SWIM_RPC, &other).await;
    // Another wire version, whatever follows.
    let future = postcard::to_allocvec(&(WIRE_VERSION + 1, "input", [1u8].as_slice())).unwrap();
    send_raw(stranger, &to, SWIM_RPC, &future).await;
    // Not a membership message at all.
    send_raw(stranger, &to, SWIM_RPC, &[0xff, 0xff, 0xff, 0xff]).await;
    // The right envelope around bytes foca cannot decode.
    let garbage = postcard::to_allocvec(&(WIRE_VERSION, "input", [0xffu8; 40].as_slice())).unwrap();
    send_raw(stranger, &to, SWIM_RPC, &garbage).await;
    // A leave notice whose member is not a member.
    let bad_leave =
        postcard::to_allocvec(&(WIRE_VERSION, "input", [0xffu8; 3].as_slice())).unwrap();
    send_raw(stranger, &to, LEAVE_RPC, &bad_leave).await;

    let expected = Dropped {
        other_group: counted.other_group + 1,
        wire_version: counted.wire_version + 1,
        malformed: counted.malformed + 3,
        refused: counted.refused,
    };
    let deadline = tokio::time::Instant::now() + GUARD;
    while target.dropped() != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counted {:?}, expected {expected:?}",
            target.dropped()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing applied: the view is as it was.
    assert_eq!(target.view().members, before.members);
    assert_eq!(live_set(&target.view()), all);
    assert!(target.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_reads_the_view_through_any_member() {
    let engines = engines(3).await;
    let groups = group_of(&engines, "viewed", &fast()).await;
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    converge(&groups, &all).await;
    let tool = Engine::builder("mem").client().build().await.unwrap();
    let t = Duration::from_secs(5);
    let v = Group::view_at(&tool, &groups[1].address(), Some("viewed"), t)
        .await
        .unwrap();
    assert_eq!(v.viewer, groups[1].address());
    assert_eq!(live_set(&v), all);
    // Without a name: the member's group.
    let v = Group::view_at(&tool, &groups[2].address(), None, t)
        .await
        .unwrap();
    assert_eq!(v.group, "viewed");
    // A group it is not in: an error naming it.
    let e = Group::view_at(&tool, &groups[0].address(), Some("nope"), t)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a member of group 'nope'"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_that_cannot_work_say_why() {
    let engines = engines(2).await;
    let first = Group::create(&engines[0], "j", fast()).await.unwrap();
    // The same group twice on one engine.
    let e = Group::create(&engines[0], "j", fast()).await.unwrap_err();
    assert!(matches!(e, MembershipError::AlreadyMember { .. }), "{e}");
    // A member of another group.
    let e = Group::join(&engines[1], "k", &first.address(), fast())
        .await
        .unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, MembershipError::NoMemberAnswered { .. }), "{m}");
    assert!(
        m.contains("group 'k'") && m.contains(&first.address()),
        "{m}"
    );
    // Nobody there.
    let e = Group::join(&engines[1], "j", "mem://courier-group-nobody", fast())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("mem://courier-group-nobody"), "{e}");
    // No address but its own.
    let e = Group::join_any(
        &engines[0],
        "other",
        &[engines[0].address().to_string()],
        fast(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, MembershipError::NoAddress { .. }), "{e}");
    // A client has no address to be reached at.
    let client = Engine::builder("mem").client().build().await.unwrap();
    let e = Group::create(&client, "j", fast()).await.unwrap_err();
    assert!(matches!(e, MembershipError::NotListening { .. }), "{e}");
    // Options foca cannot run with.
    let bad = GroupOptions {
        probe_timeout: Duration::from_secs(2),
        ..fast()
    };
    let e = Group::create(&engines[1], "j", bad).await.unwrap_err();
    assert!(e.to_string().contains("probe_timeout_ms"), "{e}");
    // After all that, engine 1 can still join.
    let second = Group::join_any(
        &engines[1],
        "j",
        &["mem://courier-group-nobody".to_owned(), first.address()],
        fast(),
    )
    .await
    .unwrap();
    wait_view(&second, "two live members", |v| v.live().count() == 2).await;
}

/// A path named `name` (a group file's name is its group's) in a fresh
/// directory of its own; [`clean_up`] removes the directory.
fn temp_file(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("courier-group-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Removes what [`temp_file`] made for `path` (the group file, and the
/// temporary files its writers use, with their directory).
fn clean_up(path: &Path) {
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// Waits until the group file at `path` lists exactly `expected`.
async fn wait_file(path: &Path, expected: &BTreeSet<String>) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let listed = GroupFile::read(path)
            .map(|f| f.members.into_iter().collect::<BTreeSet<_>>())
            .ok();
        if listed.as_ref() == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} lists {listed:?}, not {expected:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_file_makes_the_group_then_joins_it_and_follows_it() {
    let path = temp_file("kv.json");
    let engines = engines(3).await;
    let first = Group::open(&engines[0], &path, fast()).await.unwrap();
    assert_eq!(first.name(), "kv", "named after the file");
    let file = GroupFile::read(&path).unwrap();
    assert_eq!(file.group, "kv");
    assert_eq!(file.wire_version, WIRE_VERSION);
    assert_eq!(file.members, vec![first.address()]);

    let second = Group::open(&engines[1], &path, fast()).await.unwrap();
    let third = Group::open(&engines[2], &path, fast()).await.unwrap();
    assert_eq!(third.name(), "kv");
    let all: BTreeSet<String> = engines.iter().map(|e| e.address().to_string()).collect();
    let groups = [first.clone(), second.clone(), third.clone()];
    converge(&groups, &all).await;
    wait_file(&path, &all).await;
    let tool = Engine::builder("mem").client().build().await.unwrap();
    let v = Group::view_from_file(&tool, &path, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(live_set(&v), all);

    // A leave rewrites it without the leaver.
    third.leave().await.unwrap();
    let mut rest = all.clone();
    rest.remove(&third.address());
    wait_file(&path, &rest).await;
    // The others stop keeping the file before it goes.
    first.leave().await.unwrap();
    second.leave().await.unwrap();
    for e in &engines {
        e.finalize().await;
    }
    clean_up(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_files_are_errors_naming_the_file() {
    let engine = Engine::new("mem").await.unwrap();
    let tool = Engine::builder("mem").client().build().await.unwrap();
    let t = Duration::from_secs(2);

    // Stale: it lists members, none answers.
    let stale = temp_file("stale.json");
    GroupFile {
        group: "gone".into(),
        wire_version: WIRE_VERSION,
        members: vec![
            "mem://courier-group-gone-1".into(),
            "mem://courier-group-gone-2".into(),
        ],
    }
    .write(&stale)
    .unwrap();
    let e = Group::open(&engine, &stale, fast()).await.unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, MembershipError::FileStale { .. }), "{m}");
    assert!(m.contains(&stale.display().to_string()), "{m}");
    assert!(m.contains("mem://courier-group-gone-2"), "{m}");
    let e = Group::view_from_file(&tool, &stale, t).await.unwrap_err();
    assert!(matches!(e, MembershipError::FileStale { .. }), "{e}");
    clean_up(&stale);

    // Malformed.
    let bad = temp_file("bad.json");
    std::fs::write(&bad, "{\"group\": 3}").unwrap();
    let e = Group::open(&engine, &bad, fast()).await.unwrap_err();
    assert!(matches!(e, MembershipError::FileMalformed { .. }), "{e}");
    assert!(e.to_string().contains(&bad.display().to_string()), "{e}");
    clean_up(&bad);

    // Missing, to a reader.
    let missing = temp_file("missing.json");
    let e = Group::view_from_file(&tool, &missing, t).await.unwrap_err();
    assert!(matches!(e, MembershipError::FileMissing { .. }), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    clean_up(&missing);

    // Unreadable (a directory), to a member.
    let dir = temp_file("dir.json");
    std::fs::create_dir_all(&dir).unwrap();
    let e = Group::open(&engine, &dir, fast()).await.unwrap_err();
    assert!(matches!(e, MembershipError::FileUnreadable { .. }), "{e}");
    clean_up(&dir);

    // A file listing only this member starts the group anew.
    let alone = temp_file("alone.json");
    GroupFile {
        group: "alone".into(),
        wire_version: WIRE_VERSION,
        members: vec![engine.address().to_string()],
    }
    .write(&alone)
    .unwrap();
    let g = Group::open(&engine, &alone, fast()).await.unwrap();
    assert_eq!(g.name(), "alone");
    assert_eq!(g.view().live().count(), 1);
    g.leave().await.unwrap();
    clean_up(&alone);
}

/// A member's identity as the group encodes it (the same fields, so the
/// same postcard bytes): a test forges one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ForgedId {
    addr: String,
    generation: u64,
}

impl foca::Identity for ForgedId {
    type Addr = String;
    fn renew(&self) -> Option<Self> {
        None
    }
    fn addr(&self) -> String {
        self.addr.clone()
    }
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_an_address_nobody_reaches_is_suspected_then_down() {
    use rand::SeedableRng;
    let engines = engines(3).await;
    let groups = group_of(&engines[..2], "ghosts", &fast()).await;
    let all: BTreeSet<String> = engines[..2]
        .iter()
        .map(|e| e.address().to_string())
        .collect();
    converge(&groups, &all).await;

    // A join request, sent from a third engine, from a member claiming an
    // address where nothing listens.
    let ghost = "mem://courier-group-ghost-nowhere";
    let mut forger = foca::Foca::new(
        ForgedId {
            addr: ghost.to_owned(),
            generation: 1,
        },
        foca::Config::simple(),
        rand::rngs::SmallRng::seed_from_u64(7),
        foca::PostcardCodec,
    );
    let mut runtime = foca::AccumulatingRuntime::new();
    let target = ForgedId {
        addr: groups[0].address(),
        generation: 0,
    };
    forger.announce(target, &mut runtime).unwrap();
    let (_, announce) = runtime.to_send().unwrap();
    let payload = postcard::to_allocvec(&(WIRE_VERSION, "ghosts", &announce[..])).unwrap();
    send_raw(&engines[2], &groups[0].address(), SWIM_RPC, &payload).await;

    // Taken in on its word, then probed, unanswered, and declared down.
    wait_view(&groups[0], "the ghost is known", |v| {
        v.member(ghost).is_some()
    })
    .await;
    for g in &groups {
        wait_view(g, "the ghost is down", |v| {
            v.state_of(ghost) == Some(MemberState::Down)
        })
        .await;
    }
    converge(&groups, &all).await;
}
