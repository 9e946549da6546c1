"""Client: drive a running ``drover serve`` over its gRPC Control API."""

import collections
import json
import math
import os
import secrets
import signal as _signal
import socket
import stat
import threading
from dataclasses import dataclass, field, replace
from typing import List, Optional

import grpc

from . import errors
from ._pb import drover_pb2 as pb
from ._pb import drover_pb2_grpc as pb_grpc
from .errors import DroverError, InvalidArgument, Unavailable

SERVE_FILE = "serve.json"

# Every manager certificate carries this DNS name (internal/creds), so the
# manager is verified against it whatever address is dialled.
MANAGER_NAME = "manager.drover.invalid"

# How many acknowledged seqs a client keeps to drop a late repeat that
# crossed its acknowledgement (two calls of one client at once).
_RECENT_ACKED = 65536

_DEFAULT = object()


def home_dir(home=None):
    """DROVER_HOME: ``home`` when given, else $DROVER_HOME, else
    ~/.drover; absolute."""
    if not home:
        home = os.environ.get("DROVER_HOME") or os.path.join(os.path.expanduser("~"), ".drover")
    return os.path.abspath(os.fspath(home))


@dataclass(frozen=True)
class Exit:
    """The final report of one process. ``exit_code`` is its exit status
    (-1 when a signal ended it); ``signal`` names the signal ("SIGKILL")
    or is None; ``error`` says why the result is not all there (outputs not
    collected, node lost) or is None; ``start`` and ``end`` are Unix times
    in seconds, or None when unknown. ``seq`` numbers the exits serve hands
    out (0 from a serve that does not); ``group`` is the start's group."""

    name: str
    node: str
    exit_code: int
    signal: Optional[str]
    error: Optional[str]
    start: Optional[float]
    end: Optional[float]
    seq: int = 0
    group: str = ""

    @property
    def returncode(self):
        """The exit status, or the negative signal number when a signal
        ended it (like subprocess and MUSCLE3)."""
        if self.signal:
            return -_signal_number(self.signal)
        return self.exit_code

    @property
    def success(self):
        """Exited with status 0 and its results were kept."""
        return not self.signal and self.exit_code == 0 and not self.error

    def __str__(self):
        if self.signal:
            return "signal " + self.signal
        return "exit %d" % self.exit_code


def _signal_number(name):
    try:
        return int(_signal.Signals[name])
    except KeyError:
        try:
            return int(_signal.Signals["SIG" + name])
        except KeyError:
            return 1  # an unknown signal still reads as "killed by a signal"


def _exit(e):
    return Exit(
        name=e.name,
        node=e.node,
        exit_code=e.code,
        signal=e.signal or None,
        error=e.error or None,
        start=e.start_unix_nano / 1e9 if e.start_unix_nano else None,
        end=e.end_unix_nano / 1e9 if e.end_unix_nano else None,
        seq=e.seq,
        group=e.group,
    )


@dataclass(frozen=True)
class Status:
    """A process as poll sees it: running, or its ``exit``; ``error`` is
    set instead when this name could not be polled (a NotFound)."""

    name: str
    running: bool
    exit: Optional[Exit] = None
    error: Optional[DroverError] = None

    def __str__(self):
        if self.error is not None:
            return "error " + str(self.error)
        if self.running:
            return "running"
        return str(self.exit)


@dataclass(frozen=True)
class Node:
    """A node of the cluster: ``state`` is up, busy, lost or error;
    ``cores`` lists the hwthread ids of each core; ``rtt`` is the last
    heartbeat round trip in seconds."""

    name: str
    state: str
    error: Optional[str]
    cores: List[List[int]]
    memory_bytes: int
    busy_hwthreads: List[int]
    processes: int
    restarts: int = 0
    rtt: float = 0.0


@dataclass(frozen=True)
class Job:
    """One submitted instance; ``state`` is pending, running, succeeded,
    failed, lost or cancelled; ``out_dir`` holds its output."""

    submission: int
    instance: str
    state: str
    node: str = ""
    attempts: int = 0
    outcome: str = ""
    out_dir: str = ""


@dataclass
class _ServeInfo:
    address: str
    pid: int
    host: str
    ca: str
    cert: str
    key: str
    raw: dict = field(repr=False, default_factory=dict)


def _read_serve_info(home, address):
    path = os.path.join(home, SERVE_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if address:
            raise Unavailable(
                "no credentials for the manager at %s: DROVER_HOME=%s has no %s (looked for %s); "
                "copy the one of that drover serve there" % (address, home, SERVE_FILE, path)
            ) from None
        raise Unavailable(
            "no drover serve is running: there is no %s (DROVER_HOME=%s); start one with drover serve"
            % (path, home)
        ) from None
    except OSError as e:
        raise DroverError("read %s: %s" % (path, e.strerror or e)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise DroverError("read %s: not a regular file" % path)
        if st.st_mode & 0o077:
            raise DroverError(
                "read %s: readable by others (mode %#o); it holds credentials: chmod 600 it or restart drover serve"
                % (path, stat.S_IMODE(st.st_mode))
            )
        data = f.read(1 << 20)
    try:
        raw = json.loads(data)
        c = raw.get("credentials") or {}
        info = _ServeInfo(
            address=str(raw.get("address") or ""),
            pid=int(raw.get("pid") or 0),
            host=str(raw.get("host") or ""),
            ca=c.get("ca") or "",
            cert=c.get("cert") or "",
            key=c.get("key") or "",
            raw=raw,
        )
    except (ValueError, AttributeError, TypeError) as e:
        raise DroverError("read %s: not a serve.json: %s" % (path, e)) from None
    if not (info.ca and info.cert and info.key):
        raise DroverError("%s has no credentials; restart drover serve" % path)
    return info


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _grace_ms(seconds):
    """A grace in whole milliseconds, rounded up: None is 0, serve's
    --grace on the wire, so a grace of 0 becomes the shortest one, 1 ms."""
    if seconds is None:
        return 0
    if seconds < 0:
        raise InvalidArgument("grace must not be negative (got %r seconds)" % (seconds,))
    return max(1, math.ceil(seconds * 1000))


class Client:
    """A connection to a ``drover serve``.

    ``home`` is DROVER_HOME (default $DROVER_HOME, else ~/.drover); its
    serve.json gives the address and the mutual-TLS credentials, as for the
    drover verbs. ``address`` (HOST:PORT) dials another address with those
    credentials. ``timeout`` is the default deadline of each call in
    seconds (None: no deadline); every method takes ``timeout=`` for that
    call. ``group`` puts the processes this client starts in a group:
    ``finished``, ``watch_finished``, ``poll`` and ``cancel_all`` then see
    only that group's processes.

    Exits reach a Client exactly once: it acknowledges to serve what it
    has returned, and drops a repeat serve hands it before the
    acknowledgement arrived. The methods are safe to call from several
    threads. Use it as a context manager, or call close().
    """

    def __init__(self, home=None, address=None, timeout=30.0, *, group=None):
        self.home = home_dir(home)
        self.timeout = timeout
        self.group = group or ""
        self.id = secrets.token_hex(8)
        info = _read_serve_info(self.home, address)
        if not address:
            if info.pid > 0 and info.host == socket.gethostname() and not _alive(info.pid):
                raise Unavailable(
                    "no drover serve is running (DROVER_HOME=%s; its %s is stale: pid %d has exited); "
                    "start one with drover serve" % (self.home, SERVE_FILE, info.pid)
                )
            address = info.address
        if not address:
            raise DroverError("%s names no address; restart drover serve" % os.path.join(self.home, SERVE_FILE))
        self.address = address
        self.serve_info = info.raw
        creds = grpc.ssl_channel_credentials(
            root_certificates=info.ca.encode(),
            private_key=info.key.encode(),
            certificate_chain=info.cert.encode(),
        )
        self._channel = grpc.secure_channel(
            address,
            creds,
            options=[
                ("grpc.ssl_target_name_override", MANAGER_NAME),
                # serve is dialled directly, never through an http proxy.
                ("grpc.enable_http_proxy", 0),
                ("grpc.max_receive_message_length", 64 << 20),
            ],
        )
        self._rpc = pb_grpc.ControlStub(self._channel)
        self._lock = threading.Lock()
        # Seqs of exits returned and not yet known to be acknowledged.
        self._unacked = set()
        # Recently acknowledged seqs, oldest first, and as a set.
        self._acked_order = collections.deque()
        self._acked = set()

    # ---- plumbing ----

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "drover.Client(home=%r, address=%r)" % (self.home, self.address)

    def close(self):
        """Acknowledges what was returned (briefly; serve hands out again
        what it never hears of) and closes the connection."""
        try:
            self._ack_pending(timeout=min(self._deadline(_DEFAULT) or 2.0, 2.0))
        except DroverError:
            pass
        self._channel.close()

    def _deadline(self, timeout):
        return self.timeout if timeout is _DEFAULT else timeout

    def _context(self):
        return " (drover serve at %s, DROVER_HOME=%s)" % (self.address, self.home)

    def _call(self, method, request, what, timeout):
        try:
            return method(request, timeout=self._deadline(timeout))
        except grpc.RpcError as e:
            raise errors.from_rpc(e, what, self._context()) from None

    # ---- processes ----

    def nodes(self, *, timeout=_DEFAULT):
        """The nodes that joined, in order, as Node."""
        r = self._call(self._rpc.Nodes, pb.NodesRequest(), "nodes", timeout)
        return [
            Node(
                name=n.name,
                state=n.state,
                error=n.error or None,
                cores=[list(c.hwthreads) for c in n.resources.cores],
                memory_bytes=n.resources.memory_bytes,
                busy_hwthreads=list(n.busy_hwthreads),
                processes=n.processes,
                restarts=n.restarts,
                rtt=n.rtt_us / 1e6,
            )
            for n in r.nodes
        ]

    def start(
        self,
        node,
        name,
        args,
        *,
        workdir=None,
        env=None,
        stdout=None,
        stderr=None,
        cores=0,
        hwthreads=None,
        gpus=0,
        timeout=_DEFAULT,
    ):
        """Starts process ``name`` (unique across the cluster) on ``node``
        and returns its pid. ``args`` is argv; args[0] is looked up in PATH
        when it has no slash. ``env`` is added to the node's base
        environment. ``workdir`` must exist (None: a fresh one); ``stdout``
        and ``stderr`` are files, created or truncated (None: serve keeps
        the output for logs()); relative paths are made absolute here.
        ``cores`` reserves and binds that many whole cores; ``hwthreads``
        binds to exactly those logical CPUs instead. ``gpus`` reserves that
        many whole GPUs of the node, handed to the process in
        CUDA_VISIBLE_DEVICES (or ROCR/HIP_VISIBLE_DEVICES) and DROVER_GPUS.
        A program that cannot be started raises SpawnError."""
        if isinstance(args, (str, bytes)):
            raise TypeError("args is argv, a list of strings, not one string")
        what = "start %s on %s" % (name, node)
        req = pb.StartRequest(
            node=node,
            name=name,
            args=[os.fspath(a) for a in args],
            env={str(k): str(v) for k, v in (env or {}).items()},
            workdir=_abs(workdir),
            stdout=_abs(stdout),
            stderr=_abs(stderr),
            cores=cores,
            hwthreads=list(hwthreads or ()),
            group=self.group,
            gpus=gpus,
        )
        return self._call(self._rpc.Start, req, what, timeout).pid

    def poll(self, names=None, *, timeout=_DEFAULT):
        """The named processes (a name or a list), or every known one (of
        the client's group), as Status. A name serve does not know comes
        back with ``error`` set (a NotFound)."""
        if isinstance(names, str):
            names = [names]
        req = pb.ControlPollRequest(names=list(names or ()), group=self.group)
        r = self._call(self._rpc.Poll, req, "poll", timeout)
        out = []
        for s in r.statuses:
            if s.error or s.HasField("error_detail"):
                err = errors.from_detail(s.error or "poll %s: failed" % s.name, s.error_detail)
                out.append(Status(name=s.name, running=False, error=err))
            elif s.running:
                out.append(Status(name=s.name, running=True))
            else:
                e = _exit(s.exit)
                if not e.name:
                    e = replace(e, name=s.name)
                out.append(Status(name=s.name, running=False, exit=e))
        return out

    def stop(self, name, grace=None, *, timeout=_DEFAULT):
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds
        (None: serve's --grace)."""
        req = pb.StopRequest(name=name, grace_ms=_grace_ms(grace))
        self._call(self._rpc.Stop, req, "stop %s" % name, timeout)

    def kill(self, name, *, timeout=_DEFAULT):
        """SIGKILL to the process group."""
        self._call(self._rpc.Kill, pb.NameRequest(name=name), "kill %s" % name, timeout)

    def purge(self, name, *, timeout=_DEFAULT):
        """Forgets a process that is no longer running."""
        self._call(self._rpc.Purge, pb.NameRequest(name=name), "purge %s" % name, timeout)

    def send(self, name, text, *, timeout=_DEFAULT):
        """Writes ``text`` (str, sent as UTF-8, or bytes) to the process's
        stdin, as is: add the newline a line needs."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        self._call(self._rpc.Send, pb.SendRequest(name=name, data=data), "send %s" % name, timeout)

    def close_stdin(self, name, *, timeout=_DEFAULT):
        """Closes the process's stdin: it reads end of input once it has
        read what was sent; later sends fail."""
        self._call(self._rpc.Send, pb.SendRequest(name=name, close=True), "close stdin %s" % name, timeout)

    def logs(self, name, stderr=False, follow=False, *, timeout=_DEFAULT):
        """A process's stdout (or stderr) from the start, as bytes. With
        ``follow`` it returns an iterator of chunks as they come, which
        ends once the process has exited and all its output is sent; its
        timeout is None (no deadline) unless given."""
        what = "logs %s" % name
        req = pb.LogsRequest(name=name, stderr=stderr, follow=follow)
        if follow:
            return self._follow(req, what, None if timeout is _DEFAULT else timeout)
        try:
            return b"".join(c.data for c in self._rpc.Logs(req, timeout=self._deadline(timeout)))
        except grpc.RpcError as e:
            raise errors.from_rpc(e, what, self._context()) from None

    def _follow(self, req, what, timeout):
        stream = self._rpc.Logs(req, timeout=timeout)
        try:
            for c in stream:
                yield c.data
        except grpc.RpcError as e:
            raise errors.from_rpc(e, what, self._context()) from None
        finally:
            stream.cancel()

    # ---- exits, exactly once ----

    def finished(self, wait=0.0, *, timeout=_DEFAULT):
        """The exits (of the client's group) not returned before, as a
        list of Exit, each exactly once. When there is none it waits up to
        ``wait`` seconds for one and returns as soon as one comes. The
        call's deadline is ``wait`` plus its timeout."""
        if wait is None or wait < 0:
            raise InvalidArgument("finished: wait must be >= 0 seconds (got %r)" % (wait,))
        with self._lock:
            ack = sorted(self._unacked)
        req = pb.FinishedRequest(
            wait_ms=math.ceil(wait * 1000), client=self.id, ack=ack, group=self.group
        )
        deadline = self._deadline(timeout)
        if deadline is not None:
            deadline += wait
        r = self._call(self._rpc.Finished, req, "finished", deadline)
        with self._lock:
            self._confirm(ack)
            return self._take(r.exits)

    def watch_finished(self, *, timeout=None):
        """A generator of Exit as processes (of the client's group) end,
        each exactly once: what it has yielded is acknowledged to serve as
        the loop goes on (in the background, several in one call when they
        come fast) and when the generator is closed. It
        runs until closed, or until ``timeout`` seconds have passed (then
        DeadlineExceeded); a broken connection raises Unavailable, and a
        new watch_finished() goes on where it left off."""
        with self._lock:
            ack = sorted(self._unacked)
        req = pb.WatchFinishedRequest(client=self.id, group=self.group, ack=ack)
        stream = self._rpc.WatchFinished(req, timeout=timeout)
        acker = _Acker(self)
        unyielded = collections.deque()
        try:
            for reply in stream:
                with self._lock:
                    if ack:
                        # serve took the request's acks with the stream.
                        self._confirm(ack)
                        ack = []
                    unyielded.extend(self._take(reply.exits))
                while unyielded:
                    e = unyielded.popleft()
                    yield e
                    # The loop asked for the next one: it has this one.
                    if e.seq:
                        acker.send([e.seq])
        except grpc.RpcError as e:
            raise errors.from_rpc(e, "watch finished", self._context()) from None
        finally:
            with self._lock:
                # Never yielded: serve hands them out again.
                for e in unyielded:
                    self._unacked.discard(e.seq)
            # Acknowledge before the stream ends: serve frees what a
            # closed stream held for everyone, acknowledgements after that
            # are too late.
            acker.flush()
            stream.cancel()

    def _take(self, exits):
        """The exits not returned before; remembers them as unacknowledged.
        Called with the lock held."""
        out = []
        for e in exits:
            if e.seq:
                if e.seq in self._unacked or e.seq in self._acked:
                    continue
                self._unacked.add(e.seq)
            out.append(_exit(e))
        return out

    def _confirm(self, seqs):
        """Records that serve acknowledged seqs. Called with the lock held."""
        for s in seqs:
            if s in self._unacked:
                self._unacked.discard(s)
                self._acked.add(s)
                self._acked_order.append(s)
        while len(self._acked_order) > _RECENT_ACKED:
            self._acked.discard(self._acked_order.popleft())

    def _ack_pending(self, timeout):
        with self._lock:
            seqs = sorted(self._unacked)
        if not seqs:
            return
        self._call(self._rpc.Ack, pb.AckRequest(client=self.id, seqs=seqs), "ack", timeout)
        with self._lock:
            self._confirm(seqs)

    # ---- the rest ----

    def cancel_all(self, grace=None, *, timeout=_DEFAULT):
        """Stops every process (of the client's group, or every one when
        the client has none): SIGTERM, then SIGKILL after ``grace``
        seconds (None: serve's --grace)."""
        req = pb.CancelAllRequest(grace_ms=_grace_ms(grace), group=self.group)
        self._call(self._rpc.CancelAll, req, "cancel all", timeout)

    def get_env(self, node, key, *, timeout=_DEFAULT):
        """A variable of the node's base environment, or None when unset."""
        r = self._call(self._rpc.GetEnv, pb.GetEnvRequest(node=node, key=key), "env get %s on %s" % (key, node), timeout)
        return r.value if r.set else None

    def set_env(self, node, key, value, *, timeout=_DEFAULT):
        """Sets a variable of the node's base environment, for later starts."""
        req = pb.SetEnvRequest(node=node, key=key, value=value)
        self._call(self._rpc.SetEnv, req, "env set %s on %s" % (key, node), timeout)

    def bind_ports(self, node, n=1, udp=False, *, timeout=_DEFAULT):
        """Reserves ``n`` free TCP (or UDP) ports on the node, held until
        released; returns them."""
        req = pb.BindPortsRequest(node=node, udp=udp, n=n)
        return list(self._call(self._rpc.BindPorts, req, "ports bind on %s" % node, timeout).ports)

    def release_ports(self, node, ports, udp=False, *, timeout=_DEFAULT):
        """Gives reserved ports back."""
        req = pb.ReleasePortsRequest(node=node, udp=udp, ports=list(ports))
        self._call(self._rpc.ReleasePorts, req, "ports release on %s" % node, timeout)

    def set_log_level(self, node, level, *, timeout=_DEFAULT):
        """Sets the node agent's log level: debug, info, warn or error."""
        req = pb.SetLogLevelRequest(node=node, level=level)
        self._call(self._rpc.SetLogLevel, req, "log level on %s" % node, timeout)

    def submit(self, path, *, timeout=_DEFAULT):
        """Queues the jobs of the job file at ``path`` and returns their
        instance names. Its relative files and work dirs resolve against
        its directory, on serve's machine."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InvalidArgument("submit %s: %s" % (path, e.strerror or e)) from None
        req = pb.SubmitRequest(
            name=os.path.basename(path), job_file=data, dir=os.path.dirname(os.path.abspath(path))
        )
        return list(self._call(self._rpc.Submit, req, "submit %s" % path, timeout).instances)

    def jobs(self, *, timeout=_DEFAULT):
        """The submitted instances, as Job."""
        r = self._call(self._rpc.Jobs, pb.JobsRequest(), "jobs", timeout)
        return [
            Job(j.submission, j.instance, j.state, j.node, j.attempts, j.outcome, j.out_dir)
            for j in r.jobs
        ]

    def shutdown(self, *, timeout=_DEFAULT):
        """Stops every process; the agents exit, then serve exits. A
        connection that breaks during the call counts as done: serve
        closes it on its way out."""
        try:
            self._call(self._rpc.Shutdown, pb.ShutdownRequest(), "shutdown", timeout)
        except Unavailable as e:
            if e.kind is not None:
                raise


class _Acker:
    """Acknowledges the exits a watch_finished generator yielded, at most
    one Ack call in flight; what comes meanwhile goes with the next."""

    def __init__(self, client):
        self._c = client
        # Reentrant: a future that has already failed runs its callback
        # (which takes this lock) at once, inside _start.
        self._lock = threading.RLock()
        self._waiting = []
        self._future = None

    def send(self, seqs):
        with self._lock:
            self._waiting.extend(seqs)
            if self._future is None and self._waiting:
                self._start()

    def _start(self):
        seqs, self._waiting = self._waiting, []
        c = self._c
        f = c._rpc.Ack.future(pb.AckRequest(client=c.id, seqs=seqs), timeout=c._deadline(_DEFAULT))
        self._future = f
        f.add_done_callback(lambda f: self._done(f, seqs))

    def _done(self, f, seqs):
        if f.exception() is None:
            with self._c._lock:
                self._c._confirm(seqs)
        # On failure they stay unacknowledged: the next Finished,
        # WatchFinished or Ack of this client carries them.
        with self._lock:
            self._future = None
            if self._waiting:
                self._start()

    def flush(self):
        """Waits for the call in flight, then acknowledges the rest."""
        with self._lock:
            f = self._future
        if f is not None:
            try:
                f.result()
            except grpc.RpcError:
                pass
        try:
            self._c._ack_pending(timeout=min(self._c._deadline(_DEFAULT) or 2.0, 2.0))
        except DroverError:
            pass


def _abs(path):
    if path is None or path == "":
        return ""
    return os.path.abspath(os.fspath(path))
