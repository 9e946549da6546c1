"""Client against a real drover serve."""

import errno
import os
import subprocess
import time

import grpc
import pytest

import drover
from conftest import BACKSTOP, REPO, wait_exits, wait_running


def test_nodes(client):
    nodes = client.nodes()
    assert nodes
    n = nodes[0]
    assert n.state == "up", n
    assert n.cores and all(isinstance(t, int) for c in n.cores for t in c), n
    assert n.memory_bytes > 0


def test_start_poll_finished_purge(client, node, uniq, tmp_path):
    a, b = uniq + "a", uniq + "b"
    pid = client.start(node, a, ["sh", "-c", "exit 3"])
    assert isinstance(pid, int) and pid > 0
    client.start(node, b, ["sh", "-c", "echo $DROVER_PY_TEST; pwd"], env={"DROVER_PY_TEST": "xyz"},
                 workdir=tmp_path, stdout=tmp_path / "b.out")
    exits = wait_exits(client, [a, b])
    assert exits[a].exit_code == 3 and exits[a].signal is None and exits[a].returncode == 3
    assert exits[a].node == node and exits[a].error is None
    assert exits[a].start is not None and exits[a].end >= exits[a].start
    assert str(exits[a]) == "exit 3"
    assert exits[b].success
    assert (tmp_path / "b.out").read_text() == "xyz\n%s\n" % tmp_path
    # finished hands each exit out once.
    assert [e for e in client.finished() if e.name in (a, b)] == []

    st = {s.name: s for s in client.poll([a, b])}
    assert not st[a].running and st[a].exit.exit_code == 3 and st[a].error is None
    assert str(st[b]) == "exit 0"
    client.purge(a)
    with pytest.raises(drover.NotFound):
        client.purge(a)


def test_exactly_once_many(client, node, uniq):
    names = [uniq + str(i) for i in range(20)]
    for i, n in enumerate(names):
        client.start(node, n, ["sh", "-c", "exit %d" % (i % 5)])
    exits = wait_exits(client, names)
    assert {n: e.exit_code for n, e in exits.items()} == {n: i % 5 for i, n in enumerate(names)}
    assert [e for e in client.finished(wait=0.3) if e.name in names] == []


def test_stop_kill(client, node, uniq):
    s, k = uniq + "stop", uniq + "kill"
    client.start(node, s, ["sleep", "300"])
    client.start(node, k, ["sleep", "300"])
    wait_running(client, s)
    wait_running(client, k)
    client.stop(s, grace=5)
    client.kill(k)
    exits = wait_exits(client, [s, k])
    assert exits[s].signal == "SIGTERM" and exits[s].returncode == -15
    assert exits[k].signal == "SIGKILL" and exits[k].returncode == -9
    assert str(exits[k]) == "signal SIGKILL"


def test_stop_ignoring_term_is_killed_after_grace(client, node, uniq):
    n = uniq + "stubborn"
    client.start(node, n, ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"])
    wait_running(client, n)
    deadline = time.monotonic() + 30
    while b"ready" not in client.logs(n):  # the trap is set
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.stop(n, grace=0.2)
    assert wait_exits(client, [n])[n].signal == "SIGKILL"


def test_send_logs(client, node, uniq):
    n = uniq + "echo"
    client.start(node, n, ["sh", "-c", "read a; read b; echo got $a $b; echo oops >&2"])
    wait_running(client, n)
    client.send(n, "hello\n")
    client.send(n, b"world\n")
    wait_exits(client, [n])
    assert client.logs(n) == b"got hello world\n"
    assert client.logs(n, stderr=True) == b"oops\n"
    assert b"".join(client.logs(n, follow=True)) == b"got hello world\n"


def test_close_stdin(client, node, uniq):
    n = uniq + "cat"
    client.start(node, n, ["sh", "-c", "cat; echo eof"])
    wait_running(client, n)
    client.send(n, "a line\n")
    client.close_stdin(n)
    wait_exits(client, [n])
    assert client.logs(n) == b"a line\neof\n"
    with pytest.raises(drover.DroverError):
        client.send(n, "late\n")


def test_logs_follow_live(client, node, uniq):
    n = uniq + "live"
    client.start(node, n, ["sh", "-c", "echo one; read x; echo two"])
    chunks = client.logs(n, follow=True)
    first = next(chunks)
    assert first.startswith(b"one\n")
    client.send(n, "go\n")
    assert (first + b"".join(chunks)) == b"one\ntwo\n"
    wait_exits(client, [n])


def test_spawn_failure(client, node, uniq):
    missing = "/nonexistent/drover-py-test"
    with pytest.raises(drover.SpawnError) as ei:
        client.start(node, uniq + "missing", [missing, "x"])
    e = ei.value
    assert isinstance(e, drover.DroverError)
    assert e.kind == "spawn_failed"
    assert e.errno == errno.ENOENT
    assert e.path == missing
    assert missing in str(e)


def test_not_found(client, node, uniq):
    ghost = uniq + "ghost"
    for call in (
        lambda: client.stop(ghost),
        lambda: client.kill(ghost),
        lambda: client.purge(ghost),
        lambda: client.send(ghost, "x"),
        lambda: client.logs(ghost),
    ):
        with pytest.raises(drover.NotFound) as ei:
            call()
        assert ei.value.kind == "unknown_process", ei.value
        assert ghost in str(ei.value)
    with pytest.raises(drover.NotFound) as ei:
        client.start("no-such-node", uniq + "x", ["true"])
    assert ei.value.kind == "unknown_node"


def test_poll_unknown_name_among_known(client, node, uniq):
    n, ghost = uniq + "known", uniq + "ghost"
    client.start(node, n, ["true"])
    wait_exits(client, [n])
    st = {s.name: s for s in client.poll([n, ghost])}
    assert st[n].exit.exit_code == 0 and st[n].error is None
    assert isinstance(st[ghost].error, drover.NotFound)
    assert st[ghost].error.kind == "unknown_process"


def test_duplicate_and_invalid(client, node, uniq):
    n = uniq + "dup"
    client.start(node, n, ["sleep", "300"])
    with pytest.raises(drover.AlreadyExists) as ei:
        client.start(node, n, ["true"])
    assert ei.value.kind == "duplicate"
    with pytest.raises(drover.InvalidArgument):
        client.start(node, uniq + "empty", [])
    with pytest.raises(TypeError):
        client.start(node, uniq + "str", "sleep 1")
    with pytest.raises(drover.DroverError) as ei:
        client.purge(n)  # still running
    assert ei.value.kind == "running"
    client.kill(n)
    wait_exits(client, [n])


def test_deadline(client):
    with pytest.raises(drover.DeadlineExceeded) as ei:
        client.nodes(timeout=1e-4)
    assert isinstance(ei.value, drover.DroverError)
    assert not isinstance(ei.value, grpc.RpcError)
    assert "nodes" in str(ei.value)
    # A deadline cuts a long finished(wait) too: the call's deadline is
    # wait + timeout.
    t = time.monotonic()
    assert client.finished(wait=0.2, timeout=5) == []
    assert time.monotonic() - t < 5


def test_default_timeout(home):
    with drover.Client(home, timeout=1e-4) as c:
        with pytest.raises(drover.DeadlineExceeded):
            c.poll()


def test_missing_serve_json(tmp_path):
    with pytest.raises(drover.DroverError) as ei:
        drover.Client(home=tmp_path)
    assert isinstance(ei.value, drover.Unavailable)
    assert str(tmp_path / "serve.json") in str(ei.value)
    with pytest.raises(drover.DroverError) as ei:
        drover.Client(home=tmp_path, address="127.0.0.1:1")
    assert str(tmp_path / "serve.json") in str(ei.value)


def test_nothing_listens(home, tmp_path):
    # Credentials of the real serve, an address where nothing listens.
    with open(os.path.join(home, "serve.json")) as f:
        data = f.read()
    (tmp_path / "serve.json").write_text(data)
    (tmp_path / "serve.json").chmod(0o600)
    with drover.Client(tmp_path, address="127.0.0.1:1", timeout=10) as c:
        with pytest.raises(drover.Unavailable) as ei:
            c.nodes()
    assert "127.0.0.1:1" in str(ei.value)


def test_serve_json_readable_by_others_refused(home, tmp_path):
    with open(os.path.join(home, "serve.json")) as f:
        (tmp_path / "serve.json").write_text(f.read())
    (tmp_path / "serve.json").chmod(0o644)
    with pytest.raises(drover.DroverError) as ei:
        drover.Client(tmp_path)
    assert "chmod 600" in str(ei.value)


def test_watch_finished(client, node, uniq):
    names = [uniq + str(i) for i in range(10)]
    watch = client.watch_finished()
    for n in names:
        client.start(node, n, ["sh", "-c", "exit 4"])
    got = {}
    deadline = time.monotonic() + 60
    for e in watch:
        assert time.monotonic() < deadline
        if e.name in names:
            assert e.name not in got, "exit of %s yielded twice" % e.name
            got[e.name] = e
        if len(got) == len(names):
            break
    watch.close()
    assert all(e.exit_code == 4 for e in got.values())
    # Acknowledged: finished of the same client has none of them.
    assert [e for e in client.finished(wait=0.3) if e.name in names] == []


def test_exit_unacknowledged_goes_to_another_client(home, node, uniq):
    # A client that took an exit and vanished without acknowledging it
    # does not lose it: after the visibility timeout serve hands it to the
    # next client of the group.
    group = "test-" + uniq
    n = uniq + "handed"
    with drover.Client(home, group=group) as c1:
        c1.start(node, n, ["true"])
        assert [e.name for e in wait_exits(c1, [n]).values()] == [n]
        c1._unacked.clear()  # as if the process died before acknowledging
    with drover.Client(home, group=group) as c2:
        assert n in {e.name for e in c2.finished(wait=15)}


def test_env_ports_log_level(client, node, uniq, tmp_path):
    key = "DROVER_PY_" + uniq.replace("-", "_").upper().strip("_")
    assert client.get_env(node, key) is None
    client.set_env(node, key, "v1")
    assert client.get_env(node, key) == "v1"
    n = uniq + "env"
    client.start(node, n, ["sh", "-c", "echo $" + key], stdout=tmp_path / "o")
    wait_exits(client, [n])
    assert (tmp_path / "o").read_text() == "v1\n"

    ports = client.bind_ports(node, n=2)
    assert len(ports) == 2 and all(0 < p < 65536 for p in ports)
    client.release_ports(node, ports)
    udp = client.bind_ports(node, udp=True)
    assert len(udp) == 1
    client.release_ports(node, udp, udp=True)

    client.set_log_level(node, "debug")
    client.set_log_level(node, "info")
    with pytest.raises(drover.InvalidArgument):
        client.set_log_level(node, "loud")


def test_submit_jobs(client, tmp_path, uniq):
    jf = tmp_path / "jobs.yaml"
    jf.write_text("jobs:\n  - name: %sjob\n    command: [sh, -c, 'exit 0']\n    repeat: 2\n" % uniq)
    instances = client.submit(jf)
    assert len(instances) == 2 and all(uniq + "job" in i for i in instances), instances
    deadline = time.monotonic() + 60
    while True:
        # submit names an instance SUBMISSION.INSTANCE.
        jobs = {"%d.%s" % (j.submission, j.instance): j for j in client.jobs()}
        jobs = {k: j for k, j in jobs.items() if k in instances}
        if set(jobs) == set(instances) and all(j.state == "succeeded" for j in jobs.values()):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.05)
    (tmp_path / "bad.yaml").write_text("jobs: 3\n")
    with pytest.raises(drover.InvalidArgument) as ei:
        client.submit(tmp_path / "bad.yaml")
    assert "bad.yaml" in str(ei.value)
    with pytest.raises(drover.InvalidArgument):
        client.submit(tmp_path / "missing.yaml")


def test_stubs_fresh(tmp_path):
    """The committed stubs are what scripts/genpy makes of the proto."""
    subprocess.run([os.path.join(REPO, "scripts", "genpy"), str(tmp_path)], check=True)
    pb = os.path.join(REPO, "python", "drover", "_pb")
    for f in ("drover_pb2.py", "drover_pb2_grpc.py"):
        with open(os.path.join(pb, f), "rb") as a, open(tmp_path / f, "rb") as b:
            assert a.read() == b.read(), "python/drover/_pb/%s is stale: run scripts/genpy" % f


def test_gpus_more_than_the_node_has(client, node, uniq):
    """start(gpus=N) reaches serve: more GPUs than any node has is refused."""
    with pytest.raises(drover.InvalidArgument) as ei:
        client.start(node, uniq + "gpus", ["true"], gpus=1000)
    assert "needs 1000 GPUs" in str(ei.value)


def test_hwthreads_busy_invalid(client, node, uniq):
    [n] = [x for x in client.nodes() if x.name == node]
    t = n.cores[-1][0]
    a, b = uniq + "bound", uniq + "clash"
    client.start(node, a, ["sleep", "300"], hwthreads=[t])
    try:
        with pytest.raises(drover.Busy) as ei:
            client.start(node, b, ["true"], hwthreads=[t])
        assert ei.value.kind == "busy"
        with pytest.raises(drover.InvalidArgument):
            client.start(node, b, ["true"], hwthreads=[100000])
        with pytest.raises(drover.Busy):
            client.start(node, b, ["true"], cores=len(n.cores) + 1)
    finally:
        client.kill(a)
    wait_exits(client, [a])


def test_acknowledged_exits_stay_taken(home, node, uniq):
    # What one client returned (by finished or watch_finished) and then
    # acknowledged (next call, Ack, close) is not handed to another client
    # of the group after the visibility timeout (5 s).
    group = "test-" + uniq
    viaf = [uniq + "f" + str(i) for i in range(3)]
    viaw = [uniq + "w" + str(i) for i in range(3)]
    with drover.Client(home, group=group) as c1:
        for n in viaf:
            c1.start(node, n, ["true"])
        wait_exits(c1, viaf)
        for n in viaw:
            c1.start(node, n, ["true"])
        seen = set()
        for e in c1.watch_finished(timeout=BACKSTOP):
            seen.add(e.name)
            if seen >= set(viaw):
                break
    with drover.Client(home, group=group) as c2:
        assert {e.name for e in c2.finished(wait=6.5)} & set(viaf + viaw) == set()
