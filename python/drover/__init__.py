"""drover: drive a running ``drover serve`` from Python.

    from drover import Client
    with Client() as c:                      # reads $DROVER_HOME/serve.json
        node = c.nodes()[0].name
        c.start(node, "sim", ["./sim", "--fast"], stdout="sim.out")
        for e in c.finished(wait=60):        # each exit exactly once
            print(e.name, e.returncode)

AgentManager offers MUSCLE3's native instantiator surface. Every failure
is a DroverError (see drover.errors). Needs python3-grpcio and
python3-protobuf (Debian bookworm's are enough).
"""

from .agent_manager import AgentManager
from .client import Client, Exit, Job, Node, Status, home_dir
from .errors import (
    AlreadyExists,
    Busy,
    Cancelled,
    DeadlineExceeded,
    DroverError,
    InvalidArgument,
    NodeLost,
    NotFound,
    SpawnError,
    Unavailable,
)

__all__ = [
    "AgentManager",
    "AlreadyExists",
    "Busy",
    "Cancelled",
    "Client",
    "DeadlineExceeded",
    "DroverError",
    "Exit",
    "InvalidArgument",
    "Job",
    "Node",
    "NodeLost",
    "NotFound",
    "SpawnError",
    "Status",
    "Unavailable",
    "home_dir",
]
