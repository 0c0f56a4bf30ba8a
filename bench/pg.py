"""
The pgbench part: a throwaway PostgreSQL cluster and ``pgbench -S``.

The cluster lives in a temporary directory, listens on 127.0.0.1 only (and
a Unix socket in that directory), runs with ``fsync=off`` and trust
authentication, and is stopped and deleted at the end.  PostgreSQL refuses
to run as root, so as root the cluster belongs to the ``postgres`` user
(Debian's package creates it), else ``nobody``.

Nothing here installs anything: ``make bench`` installs Debian's
``postgresql`` when it can (see the Makefile), and without it
:func:`findTools` says why the part is skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

#: The database superuser and database the bench creates.
USER = "bench"
DATABASE = "bench"
TIMEOUT = 120


@dataclass
class Tools:
    initdb: str
    pgCtl: str
    pgbench: str


def findTools() -> Tools | str:
    """The PostgreSQL programs, or the reason they cannot be used."""
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(x) for x in re.findall(r"\d+", d)],
    )
    for d in reversed(dirs):
        paths = [os.path.join(d, name) for name in ("initdb", "pg_ctl", "pgbench")]
        if all(os.access(p, os.X_OK) for p in paths):
            return Tools(*paths)
    initdb, pgCtl, pgbench = (shutil.which(n) for n in ("initdb", "pg_ctl", "pgbench"))
    if initdb and pgCtl and pgbench:
        return Tools(initdb, pgCtl, pgbench)
    return (
        "PostgreSQL not found (no initdb, pg_ctl and pgbench under /usr/lib/postgresql/*/bin "
        "or on PATH; `apt-get install postgresql` brings them)"
    )


def runAs() -> tuple[int, int] | None | str:
    """(uid, gid) to run the server as when root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    return "running as root and neither a postgres nor a nobody user exists"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """
    A throwaway cluster: L{start} returns its TCP port, L{stop} deletes it.
    """

    def __init__(self, tools: Tools, owner: tuple[int, int] | None) -> None:
        self.tools = tools
        self.owner = owner
        self.dir = tempfile.mkdtemp(prefix="sprites-bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = 0
        self.started = False

    def _run(self, argv: list[str]) -> None:
        extra: dict[str, object] = {}
        if self.owner is not None:
            extra = {"user": self.owner[0], "group": self.owner[1], "extra_groups": []}
        done = subprocess.run(
            argv,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
            check=False,
            **extra,  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            tail = done.stdout.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{os.path.basename(argv[0])} failed: {' / '.join(tail)}")

    def start(self) -> int:
        if self.owner is not None:
            os.chown(self.dir, *self.owner)
        self._run(
            [self.tools.initdb, "-D", self.data, "-U", USER, "--auth=trust", "-E", "UTF8", "-N"]
        )
        self.port = freePort()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
            "-c synchronous_commit=off -c max_connections=60 -c shared_buffers=64MB"
        )
        self._run(
            [
                self.tools.pgCtl,
                "-D",
                self.data,
                "-l",
                os.path.join(self.dir, "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                options,
                "start",
            ]
        )
        self.started = True
        self._run([self.tools.pgCtl, "-D", self.data, "-w", "status"])
        return self.port

    def createDatabase(self, scale: int = 1) -> None:
        """Create the database and fill it with ``pgbench -i``."""
        self._run(
            [
                os.path.join(os.path.dirname(self.tools.initdb), "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                DATABASE,
            ]
        )
        self._run(
            [
                self.tools.pgbench,
                "-i",
                "-q",
                "-s",
                str(scale),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                USER,
                DATABASE,
            ]
        )

    def stop(self) -> None:
        try:
            if self.started:
                self._run([self.tools.pgCtl, "-D", self.data, "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def pgbench(tools: Tools, port: int, clients: int, seconds: float) -> tuple[float, int]:
    """
    ``pgbench -S`` (select only) against 127.0.0.1:C{port} for C{seconds}.

    :returns: (transactions per second without the initial connection
        time, transactions done).
    """
    argv = [
        tools.pgbench,
        "-S",
        "-n",
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(max(1, round(seconds))),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        USER,
        DATABASE,
    ]
    env = dict(os.environ, PGSSLMODE="disable", PGCONNECT_TIMEOUT="30")
    done = subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=seconds + TIMEOUT,
        env=env,
        check=False,
    )
    text = done.stdout.decode(errors="replace")
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", text, re.M)
    count = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    if done.returncode != 0 or not tps or not count:
        tail = " / ".join(text.strip().splitlines()[-3:])
        raise RuntimeError(f"pgbench failed ({done.returncode}): {tail}")
    return float(tps.group(1)), int(count.group(1))
