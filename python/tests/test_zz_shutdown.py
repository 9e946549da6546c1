"""Client.shutdown, run last (pytest takes files in name order): it ends
the serve, so only when the runner asks for it (internal/pytest does)."""

import os
import time

import pytest

import drover


@pytest.mark.skipif(os.environ.get("DROVER_PYTEST_SHUTDOWN") != "1",
                    reason="would stop the serve; set DROVER_PYTEST_SHUTDOWN=1")
def test_shutdown(home, node, uniq):
    with drover.Client(home) as c:
        c.start(node, uniq + "left", ["sleep", "300"])
        c.shutdown()
    # serve removes its serve.json on the way out.
    deadline = time.monotonic() + 60
    while os.path.exists(os.path.join(home, "serve.json")):
        assert time.monotonic() < deadline, "serve.json still there after shutdown"
        time.sleep(0.05)
    with pytest.raises(drover.Unavailable):
        drover.Client(home)
