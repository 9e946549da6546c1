"""Fixtures of the drover package's tests. They run against a real
``drover serve`` whose DROVER_HOME is in the environment (the Go test
internal/pytest starts one and runs these)."""

import os
import secrets
import time

import pytest

import drover

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Bound on waiting for an exit that must come.
BACKSTOP = 60.0


@pytest.fixture(scope="session")
def home():
    h = os.environ.get("DROVER_HOME")
    if not h or not os.path.exists(os.path.join(h, "serve.json")):
        pytest.fail("these tests need a running drover serve: set DROVER_HOME to its home")
    return h


@pytest.fixture(scope="session")
def node(home):
    with drover.Client(home) as c:
        nodes = c.nodes()
    assert nodes, "serve has no node"
    return nodes[0].name


@pytest.fixture
def client(home):
    """A client in a group of its own, so other tests' exits stay away."""
    with drover.Client(home, group="test-" + secrets.token_hex(4)) as c:
        yield c


@pytest.fixture
def uniq():
    """A prefix that makes process names unique across tests and runs."""
    return "py-" + secrets.token_hex(4) + "-"


def wait_exits(client, names, within=BACKSTOP):
    """Collects the exits of names with client.finished; fails on a
    repeat or when they have not all come within the backstop. Exits of
    other names (a serve without groups hands out everyone's) are left."""
    want = set(names)
    got = {}
    deadline = time.monotonic() + within
    while want - set(got):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("no exit of %s within %ss" % (sorted(want - set(got)), within))
        for e in client.finished(wait=min(left, 5.0)):
            if e.name not in want:
                continue
            assert e.name not in got, "exit of %s returned twice: %s, %s" % (e.name, got[e.name], e)
            got[e.name] = e
    return got


def wait_running(client, name, within=BACKSTOP):
    """Waits until poll says name runs."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        st = client.poll([name])
        if st and st[0].running:
            return
        time.sleep(0.02)
    pytest.fail("%s not running within %ss" % (name, within))
