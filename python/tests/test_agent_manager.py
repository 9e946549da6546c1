"""AgentManager, MUSCLE3's surface, against a real drover serve."""

import os
import subprocess
import sys
import time

import pytest

import drover
from conftest import BACKSTOP, REPO, wait_running


def collect(am, names, within=BACKSTOP, foreign=()):
    """get_finished until every name came; each exactly once, and none of
    foreign (another manager's)."""
    want, got = set(names), {}
    deadline = time.monotonic() + within
    while want - set(got):
        assert time.monotonic() < deadline, "no exit of %s" % sorted(want - set(got))
        for name, code in am.get_finished(wait=1.0):
            assert name not in foreign, "another manager's exit: %s" % name
            assert name not in got, "%s returned twice" % name
            got[name] = code
    return got


@pytest.fixture
def am(home):
    m = drover.AgentManager(home)
    yield m
    m.shutdown()


def test_loop(am, node, uniq, tmp_path):
    jobs = {
        uniq + "ok": "exit 0",
        uniq + "fail": "exit 7",
        uniq + "term": "kill -TERM $$",
        uniq + "out": "echo $GREETING; pwd; echo e >&2",
    }
    for name, cmd in jobs.items():
        am.start(node, name, tmp_path, ["sh", "-c", cmd], {"GREETING": "hi"},
                 tmp_path / (name + ".out"), tmp_path / (name + ".err"))
    got = collect(am, jobs)
    assert got == {uniq + "ok": 0, uniq + "fail": 7, uniq + "term": -15, uniq + "out": 0}
    assert (tmp_path / (uniq + "out.out")).read_text() == "hi\n%s\n" % tmp_path
    assert (tmp_path / (uniq + "out.err")).read_text() == "e\n"
    assert am.get_finished() == []


def test_get_resources(am):
    res = am.get_resources()
    assert isinstance(res, dict) and res
    with drover.Client(am.client.home) as c:
        nodes = c.nodes()
    assert set(res) == {n.name for n in nodes}
    for n in nodes:
        cores = res[n.name]
        assert isinstance(cores, list) and cores
        assert all(isinstance(c, set) and c and all(isinstance(t, int) for t in c) for c in cores)
        assert cores == [set(c) for c in n.cores]


def test_two_managers_keep_their_exits(home, node, uniq, tmp_path):
    with_out = lambda n: (tmp_path / (n + ".out"), tmp_path / (n + ".err"))
    am1, am2 = drover.AgentManager(home), drover.AgentManager(home)
    try:
        one = [uniq + "one." + str(i) for i in range(5)]
        two = [uniq + "two." + str(i) for i in range(5)]
        for a, b in zip(one, two):
            am1.start(node, a, tmp_path, ["true"], {}, *with_out(a))
            am2.start(node, b, tmp_path, ["sh", "-c", "exit 2"], {}, *with_out(b))
        # Each sees exactly its own, whoever asks first.
        got1 = collect(am1, one, foreign=two)
        got2 = collect(am2, two, foreign=one)
        assert got1 == {n: 0 for n in one}
        assert got2 == {n: 2 for n in two}
        assert am1.get_finished(wait=0.3) == [] and am2.get_finished() == []

        # cancel_all stops only the caller's processes.
        s1, s2 = uniq + "sleep.1", uniq + "sleep.2"
        am1.start(node, s1, tmp_path, ["sleep", "300"], {}, *with_out(s1))
        am2.start(node, s2, tmp_path, ["sleep", "300"], {}, *with_out(s2))
        wait_running(am1.client, s1)
        wait_running(am2.client, s2)
        am1.cancel_all()
        assert collect(am1, [s1], foreign=[s2]) == {s1: -15}
        [st] = am2.client.poll([s2])
        assert st.running, st
        assert am2.get_finished(wait=0.3) == []
        am2.cancel_all()
        assert collect(am2, [s2]) == {s2: -15}
    finally:
        am1.shutdown()
        am2.shutdown()


def test_spawn_failure_on_start(am, node, uniq, tmp_path):
    with pytest.raises(drover.SpawnError):
        am.start(node, uniq + "nope", tmp_path, ["/nonexistent/model"], {},
                 tmp_path / "o", tmp_path / "e")


def test_example_runs(home):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "python"), DROVER_HOME=home)
    p = subprocess.run([sys.executable, os.path.join(REPO, "examples", "agent_manager.py")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = set(p.stdout.splitlines())
    assert {"micro.0: 0", "micro.1: 1", "macro: -15"} <= lines, p.stdout
