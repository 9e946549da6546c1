"""AgentManager: MUSCLE3's native instantiator surface on a drover serve."""

import secrets

from .client import Client
from .errors import DroverError


class AgentManager:
    """Starts processes on the nodes of a running ``drover serve`` with the
    surface of MUSCLE3's AgentManager.

    Each AgentManager is its own group on serve: get_finished returns only
    the exits of the processes it started, and cancel_all stops only those,
    so several programs can share one serve. ``home`` is DROVER_HOME as for
    Client. The serve keeps running after shutdown(); stop it with
    ``drover shutdown`` or Client.shutdown().
    """

    def __init__(self, home=None, *, timeout=30.0):
        self._client = Client(home, timeout=timeout, group="am-" + secrets.token_hex(8))

    @property
    def client(self):
        """The Client of this manager's group."""
        return self._client

    def start(self, node_name, name, work_dir, args, env, stdout, stderr):
        """Starts process ``name`` on node ``node_name`` in ``work_dir``
        (which must exist), with ``env`` added to the node's environment
        and stdout and stderr to those files (overwritten if they exist)."""
        self._client.start(
            node_name, name, args, workdir=work_dir, env=env, stdout=stdout, stderr=stderr
        )

    def cancel_all(self):
        """Stops every process this manager started (SIGTERM, then SIGKILL
        after serve's --grace)."""
        self._client.cancel_all()

    def get_finished(self, wait=0.0):
        """(name, exit code) of each process that finished since the
        previous call, each exactly once; a process ended by a signal has
        the negative signal number, as in MUSCLE3. With ``wait`` (seconds)
        it waits that long for one when there is none yet."""
        exits = self._client.finished(wait)
        for e in exits:
            # Reported: serve may forget it, so the name can be used again.
            # Best effort; the exits matter more than a name left behind.
            try:
                self._client.purge(e.name)
            except DroverError:
                pass
        return [(e.name, e.returncode) for e in exits]

    def get_resources(self):
        """{node: [set of hwthread ids of each core]} of every node."""
        return {n.name: [set(c) for c in n.cores] for n in self._client.nodes()}

    def shutdown(self):
        """Stops this manager's processes that still run and closes the
        connection."""
        try:
            self._client.cancel_all()
        finally:
            self._client.close()
