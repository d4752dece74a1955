"""Groups from Python (issue 21): membership (`courier.Group`) and group
calls (`courier.GroupFunction`), in one process on the `mem` transport
(one test on tcp over loopback). Every wait for a view is bounded by
`GUARD_S` and ends as soon as the view shows what the test waits for."""

import asyncio
import gc
import json
import threading
import time

import pytest

import courier

from conftest import GUARD_S, doc_example, run_script

#: Short times, so that a death is declared within about a second. A live
#: member of a loaded machine may still be suspected for a moment, so the
#: tests ask the others to be live (alive or suspect), not alive, once
#: they have seen them alive.
FAST = {
    "probe_period_ms": 200,
    "probe_timeout_ms": 150,
    "suspect_to_down_ms": 800,
    "gossip_period_ms": 50,
}


def wait_view(group, condition):
    """`group`'s view once `condition(view)` holds (at most `GUARD_S`)."""
    deadline = time.monotonic() + GUARD_S
    view = group.view()
    while not condition(view):
        left = deadline - time.monotonic()
        assert left > 0, f"after {GUARD_S} s: {view!r}"
        view = group.wait_for_change(view.version, timeout=left * 1000)
    return view


def states(view):
    return {m.address: m.state for m in view.members}


def all_alive(addresses):
    return lambda view: all(view.state_of(a) == "alive" for a in addresses)


@pytest.fixture
def engines():
    """Makes mem engines; finalizes them at the end."""
    made = []

    def make(n, protocol="mem"):
        new = [courier.Engine(protocol) for _ in range(n)]
        made.extend(new)
        return new

    yield make
    for e in made:
        e.finalize()


def form(engines, n=3, options=FAST):
    """`n` engines and their groups, each seeing all `n` alive."""
    es = engines(n)
    groups = [courier.Group.create(es[0], "kv", options)]
    groups += [courier.Group.join(e, "kv", groups[0].address, options) for e in es[1:]]
    addresses = [g.address for g in groups]
    for g in groups:
        wait_view(g, all_alive(addresses))
    return es, groups


def test_three_engines_see_the_same_view(engines):
    es, groups = form(engines)
    views = [g.view() for g in groups]
    expected = sorted(str(e.address) for e in es)
    for view, g in zip(views, groups):
        assert view.group == "kv" and view.viewer == g.address
        assert sorted(states(view)) == expected
        assert sorted(view.live()) == expected
        assert all(m.generation > 0 and m.live for m in view.members)
    # One generation per member, the same in every view.
    assert len({tuple((m.address, m.generation) for m in v.members) for v in views}) == 1
    assert [g.name for g in groups] == ["kv"] * 3
    assert all(g.running for g in groups)
    assert "alive" in repr(views[0]) and "kv" in repr(groups[0])


def test_a_leave_shows_left_and_a_second_leave_raises(engines):
    es, groups = form(engines)
    leaver = groups[2]
    leaver.leave()
    assert not leaver.running
    for g in groups[:2]:
        view = wait_view(g, lambda v: v.state_of(leaver.address) == "left")
        assert view.live() and leaver.address not in view.live()
    with pytest.raises(courier.CourierError, match="group 'kv' has stopped"):
        leaver.leave()


def test_a_finalized_member_leaves(engines):
    es, groups = form(engines)
    gone = groups[1].address
    es[1].finalize()  # as a remote shutdown does: the member leaves first
    for g in (groups[0], groups[2]):
        view = wait_view(g, lambda v: v.state_of(gone) == "left")
        assert sorted(view.live()) == sorted([groups[0].address, groups[2].address])


def test_a_group_dropped_without_leave_goes_down(engines):
    es, groups = form(engines)
    dropped = groups.pop(1).address
    gc.collect()  # the last reference to it is gone: its membership stops
    for g in groups:
        wait_view(g, lambda v: v.state_of(dropped) == "down")
    assert not es[1].finalized  # the engine itself goes on


def serve_whoami(es):
    """Registers `whoami(x, y=0)` on each engine: (its address, x + y)."""
    for e in es:
        me = str(e.address)
        e.register("whoami", lambda h, x, y=0, me=me: h.respond((me, x + y)), provider_id=3)


def test_a_group_call_is_balanced_over_the_members(engines):
    es, groups = form(engines)
    serve_whoami(es)
    [client] = engines(1)
    f = courier.GroupFunction(client, [g.address for g in groups], "whoami", 3, timeout=10_000)
    answers = [f(i, y=1) for i in range(60)]
    assert [x for _, x in answers] == [i + 1 for i in range(60)]
    # Two members drawn at random per call: each of 3 is met in 60 calls
    # unless the draws are off (a chance of about 1e-10).
    assert {who for who, _ in answers} == {g.address for g in groups}
    stats = f.stats()
    assert stats["calls"] == stats["succeeded"] == 60 and stats["failed"] == 0
    assert {m["address"] for m in f.member_status()} == {g.address for g in groups}
    assert f.name == "whoami" and f.provider_id == 3 and not f.idempotent
    assert f.members == tuple(g.address for g in groups)

    # From a member, over its membership: the same answers.
    g = groups[0].remote("whoami", provider_id=3, timeout=10_000)
    assert {g(1)[0] for _ in range(60)} == {x.address for x in groups}
    assert g.members is groups[0]

    # Non-blocking and asyncio forms, as a RemoteFunction's.
    requests = [f(i, blocking=False) for i in range(5)]
    assert [r.wait()[1] for r in requests] == list(range(5))

    async def main():
        return await asyncio.gather(*(f.call_async(i, y=2) for i in range(5)))

    assert [x for _, x in asyncio.run(main())] == [i + 2 for i in range(5)]


def test_an_idempotent_group_call_survives_a_member_finalized_mid_way(engines):
    es, groups = form(engines)
    serve_whoami(es)
    dead = groups[1].address
    # `held` answers at once, but at the member about to die, where it
    # waits (bounded) with its request in flight.
    entered, release = threading.Event(), threading.Event()

    def held(handle, x, me):
        if me == dead:
            entered.set()
            release.wait(GUARD_S)
        handle.respond((me, x))

    for e in es:
        me = str(e.address)
        e.register("held", lambda handle, x, me=me: held(handle, x, me), provider_id=3)
    [client] = engines(1)
    members = [g.address for g in groups]
    f = courier.GroupFunction(client, members, "whoami", 3, timeout=10_000, idempotent=True)
    h = courier.GroupFunction(client, members, "held", 3, timeout=10_000, idempotent=True)
    try:
        # Calls until one is in flight at the member about to die (each
        # member is drawn in two thirds of the calls).
        done, in_flight = [], None
        deadline = time.monotonic() + GUARD_S
        while in_flight is None:
            assert time.monotonic() < deadline and len(done) < 200, "no call reached it"
            request = h(len(done), blocking=False)
            while not request.test() and not entered.is_set():
                assert time.monotonic() < deadline
            if entered.is_set():
                in_flight = request
            else:
                done.append(request.wait())
        before = [f(i, blocking=False) for i in range(30)]
        es[1].finalize()
        after = [f(i, blocking=False) for i in range(30, 60)]
        # The call in flight there is answered by another member.
        who, x = in_flight.wait()
        assert x == len(done) and who != dead
    finally:
        release.set()
    answers = [r.wait() for r in before + after]  # raises if a call failed
    assert [x for _, x in answers] == list(range(60))
    assert {who for who, _ in answers[30:]} <= {groups[0].address, groups[2].address}
    assert h.stats()["retries"] >= 1 and h.stats()["failed"] == 0
    assert f.stats()["failed"] == 0 and f.stats()["succeeded"] == 60
    # And later calls go round the dead member without failing.
    assert {f(0)[0] for _ in range(30)} <= {groups[0].address, groups[2].address}
    assert f.stats()["failed"] == 0
    # Over the membership: once the group sees it gone (finalize left), it
    # is not called.
    wait_view(groups[0], lambda v: v.state_of(dead) == "left")
    g = groups[0].remote("whoami", provider_id=3, timeout=10_000, idempotent=True)
    assert {g(0)[0] for _ in range(30)} <= {groups[0].address, groups[2].address}
    assert g.stats()["failed"] == 0


def test_a_slow_member_is_hedged(engines):
    es, groups = form(engines)
    slow = groups[0].address
    entered, release = threading.Event(), threading.Event()

    def get(handle, x, me):
        if me == slow:
            entered.set()
            release.wait(GUARD_S)
        handle.respond((me, x))

    for e in es:
        me = str(e.address)
        e.register("get", lambda handle, x, me=me: get(handle, x, me))
    [client] = engines(1)
    f = courier.GroupFunction(
        client, [g.address for g in groups], "get", timeout=GUARD_S * 1000, idempotent=True,
        hedge_after=20,
    )
    try:
        # Calls until one goes to the slow member: another answers it.
        answers = []
        while not entered.is_set():
            assert len(answers) < 200, "no call went to the slow member"
            answers.append(f(len(answers)))
    finally:
        release.set()
    assert [x for _, x in answers] == list(range(len(answers)))
    assert slow not in {who for who, _ in answers}
    stats = f.stats()
    assert stats["hedges"] >= 1 and stats["hedge_wins"] >= 1 and stats["failed"] == 0


def test_a_call_not_idempotent_is_not_retried(engines):
    es = engines(1)
    serve_whoami(es)
    [client] = engines(1)
    # No such RPC at the member: an error an idempotent call would retry
    # elsewhere; this function is not declared idempotent.
    f = courier.GroupFunction(client, [str(es[0].address)] * 2, "no_such_rpc", timeout=5_000)
    with pytest.raises(courier.CourierError, match="no_such_rpc"):
        f()
    assert f.stats() == {
        "calls": 1, "succeeded": 0, "failed": 1, "retries": 0, "hedges": 0, "hedge_wins": 0,
        "budget_exhausted": 0, "connect_failures": 0,
    }


def test_a_function_of_its_own_budget_retries_as_much_as_it_allows(engines):
    es = engines(2)
    serve_whoami(es[1:])  # the first member has no such RPC: a retried error
    # (It serves another, so that its thread runs and answers that.)
    es[0].register("other", lambda h: h.respond(None))
    [client] = engines(1)
    members = [str(e.address) for e in es]

    def calls(f, n=60):
        failed = 0
        for i in range(n):
            try:
                assert f(i)[1] == i
            except courier.CourierError:
                failed += 1
        return failed

    # The default budget: every call that met the first member was retried.
    f = courier.GroupFunction(client, members, "whoami", 3, timeout=10_000, idempotent=True)
    assert calls(f) == 0 and f.stats()["retries"] >= 1
    # No budget at all: the calls that met it fail, none is retried.
    f = courier.GroupFunction(
        client, members, "whoami", 3, timeout=10_000, idempotent=True, retry_budget=0)
    assert calls(f) >= 1
    st = f.stats()
    assert st["retries"] == 0 and st["budget_exhausted"] == st["failed"] >= 1
    # One token and nothing more: one retry, then none.
    f = courier.GroupFunction(
        client, members, "whoami", 3, timeout=10_000, idempotent=True,
        retry_budget={"ratio": 0, "min_per_second": 0, "max_tokens": 1},
        retry_backoff=(1, 5))
    assert calls(f) >= 1
    assert f.stats()["retries"] == 1 and f.stats()["budget_exhausted"] >= 1
    # A group's function takes the same settings.
    g = courier.Group.create(es[1], "kv", FAST)
    h = g.remote("whoami", 3, idempotent=True, retry_budget={"ratio": 0.5}, retry_backoff=(5, 50))
    assert h(7)[1] == 7
    for bad, match in [
        ({"ratio": -1}, "at least 0"), ({"speed": 1}, "unknown key 'speed'"), (3, "or 0 for none"),
    ]:
        with pytest.raises(ValueError, match=match):
            courier.GroupFunction(client, members, "whoami", retry_budget=bad)
    for bad, match in [((0, 5), "base 0"), ((10, 5), "below the base")]:
        with pytest.raises(ValueError, match=match):
            courier.GroupFunction(client, members, "whoami", retry_backoff=bad)


def test_an_empty_group_raises(engines):
    [client] = engines(1)
    f = courier.GroupFunction(client, [], "whoami")
    with pytest.raises(courier.CourierError, match="no live member"):
        f()


def test_a_group_file_creates_then_joins(engines, tmp_path):
    es = engines(2)
    path = tmp_path / "kv.json"
    first = courier.Group.open(es[0], path, FAST)
    assert first.name == "kv"
    assert json.loads(path.read_text())["members"] == [first.address]
    second = courier.Group.open(es[1], str(path), FAST)
    wait_view(first, all_alive([first.address, second.address]))
    [reader] = engines(1)
    view = courier.Group.view_from_file(reader, path)
    assert view.group == "kv" and view.state_of(first.address) == "alive"
    view = courier.Group.view_at(reader, second.address, "kv", timeout=5_000)
    assert view.viewer == second.address


def test_bad_input_raises_naming_what(engines, tmp_path):
    [e] = engines(1)
    missing_dir = tmp_path / "no" / "such" / "dir" / "kv.json"
    with pytest.raises(courier.CourierError, match=str(missing_dir)):
        courier.Group.open(e, missing_dir)
    malformed = tmp_path / "bad.json"
    malformed.write_text("{not json")
    with pytest.raises(courier.CourierError, match=f"{malformed}.*malformed"):
        courier.Group.open(e, malformed)
    with pytest.raises(courier.CourierError, match=str(malformed)):
        courier.Group.view_from_file(e, malformed)
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(
        {"group": "kv", "wire_version": 1, "members": ["mem://nobody-here"]}))
    with pytest.raises(courier.CourierError, match=f"{stale} is stale"):
        courier.Group.open(e, stale, {"join_timeout_ms": 500})
    with pytest.raises(ValueError, match="probe_timeout"):
        courier.Group.create(e, "kv", {"probe_period_ms": 100, "probe_timeout_ms": 100})
    with pytest.raises(ValueError, match="unknown field"):
        courier.Group.create(e, "kv", {"probe_period": 100})
    with pytest.raises(TypeError, match="courier.Engine"):
        courier.Group.create("mem", "kv")
    with pytest.raises(courier.CourierError, match="cannot join group 'kv'"):
        courier.Group.join(e, "kv", ["mem://nobody-here"], {"join_timeout_ms": 500})
    client = courier.Engine("mem", mode=courier.client)
    try:
        with pytest.raises(courier.CourierError, match="client-mode engine"):
            courier.Group.create(client, "kv")
    finally:
        client.finalize()
    with pytest.raises(TypeError, match="not one address"):
        courier.GroupFunction(e, "mem://x", "whoami")
    with pytest.raises(ValueError, match="hedge_percentile"):
        courier.GroupFunction(e, [], "whoami", idempotent=True, hedge_percentile=100)


def test_wait_for_change_returns_at_its_timeout_and_in_asyncio(engines):
    es = engines(2)
    g = courier.Group.create(es[0], "kv", FAST)
    view = g.view()
    # Nothing changes: the same version comes back once the timeout passes.
    assert g.wait_for_change(view.version, timeout=50).version == view.version

    async def main():
        waiting = asyncio.ensure_future(g.wait_for_change_async(view.version, timeout=GUARD_S * 1000))
        other = courier.Group.join(es[1], "kv", g.address, FAST)
        changed = await waiting
        await other.leave_async()
        return changed, other.address

    changed, other = asyncio.run(main())
    assert changed.version != view.version


def test_a_group_made_from_asyncio_and_its_changes(engines, tmp_path):
    es = engines(3)
    path = tmp_path / "kv.json"

    async def main():
        first = await courier.Group.open_async(es[0], path, FAST)
        alone = first.view()
        second = await courier.Group.join_async(es[1], "kv", [first.address], FAST)
        other = await courier.Group.create_async(es[2], "other", FAST)
        with pytest.raises(courier.CourierError, match="'nosuch'"):
            await courier.Group.join_async(es[2], "nosuch", first.address, FAST)
        return first, alone, second, other

    first, alone, second, other = asyncio.run(main())
    assert (first.name, second.name, other.name) == ("kv", "kv", "other")
    assert json.loads(path.read_text())["group"] == "kv"
    both = wait_view(first, all_alive([first.address, second.address]))
    [change] = both.changes_since(alone)
    assert (change.address, change.before, change.after, change.rejoined) == (
        second.address, None, "alive", False)
    assert str(change) == f"{second.address} alive"
    second.leave()
    gone = wait_view(first, lambda v: v.state_of(second.address) == "left")
    assert [str(c) for c in gone.changes_since(both)] == [f"{second.address} left"]
    assert gone.changes_since(gone) == []


def test_a_message_that_is_not_membership_is_dropped_and_counted(engines):
    es = engines(2)
    g = courier.Group.create(es[0], "kv", FAST)
    before = g.dropped()
    assert set(before) == {"other_group", "wire_version", "malformed", "refused"}
    # A pickled Python object where a membership message is expected.
    swim = es[1].register("courier.group.swim", disable_response=True)
    swim.on(g.address)("not a membership message")
    deadline = time.monotonic() + GUARD_S
    while sum(g.dropped().values()) == sum(before.values()):
        assert time.monotonic() < deadline, g.dropped()
        time.sleep(0.01)  # a poll interval: the message is handled on its own
    assert g.view().live() == [g.address]


def test_a_group_over_tcp(engines):
    es = engines(3, "tcp")
    groups = [courier.Group.create(es[0], "kv", FAST)]
    groups += [courier.Group.join(e, "kv", es[0].address, FAST) for e in es[1:]]
    for g in groups:
        wait_view(g, all_alive([g.address for g in groups]))
    serve_whoami(es)
    f = groups[2].remote("whoami", 3, timeout=10_000, idempotent=True)
    assert {f(0)[0] for _ in range(60)} == {g.address for g in groups}


def test_the_groups_doc_example_runs(tmp_path):
    path = tmp_path / "groups_example.py"
    path.write_text(doc_example("A group of three engines in one process"))
    status, out, err = run_script(path)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "members: 3 alive"
    assert lines[1].startswith("answers from 3 members")
    assert lines[2] == "failed calls: 0"
    assert lines[3].endswith(" left")
