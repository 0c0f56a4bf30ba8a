"""
Connection setup of this tree against another version, both running at once:
``python bench/interleave.py REV`` (``make bench-interleave BASE=REV``).

Two runs of ``make bench`` drift apart by more than the few hundred
microseconds a change to the set-up path makes, because the machine's speed
changes between them.  Here both versions run side by side and consecutive
connections alternate between them (in a new random order each time), so
whatever the machine does, it does to both.

REV is a git revision, checked out into a temporary worktree for the run
(and removed after it), or the path of a source tree.  Every process runs
this tree's ``roles.py`` with the ``sprites_twisted`` of its side
(``BENCH_CODE``).  One round measures:

- back-to-back set-up (connect, first byte echoed; the ``latency`` part's
  figure) through four pairs of server and client: this/this, base/base,
  and the two mixed pairs, which tell on which side a difference lies;
- against each server alone, the load generator speaking WebSocket itself:
  the upgrade (connect until the ``101``), then on that WebSocket the init
  and first echoed byte (a warm tunnel without a client);
- the CPU each server and client process spent per connection (schedstat);
- with ``--warm-gap MS``, warm set-up: a client of each side with one warm
  tunnel (``prewarm=1``; both sides need it), both against a server of this
  tree's of their own, connections MS milliseconds apart (time to open the
  next spare); with ``--warm-rtt MS`` too, through the delay relay
  (``delay.py``) with that round trip, as an API over the internet.

Each round prints its medians and the this / base ratios; the summary is
the median of each ratio over the rounds.  A ratio the rounds agree on is
a difference; the spread of the rounds is the noise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import loadgen as L

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: name -> (the server's side, the client's side).
PAIRS = {
    "this": ("this", "this"),
    "base": ("base", "base"),
    "base server, this client": ("base", "this"),
    "this server, base client": ("this", "base"),
}


@contextlib.contextmanager
def sourceTree(rev: str) -> Iterator[str]:
    """The source tree of C{rev}: a directory as it is, or a temporary
    worktree of that git revision."""
    if os.path.isdir(os.path.join(rev, "sprites_twisted")):
        yield os.path.abspath(rev)
        return
    try:
        with tempfile.TemporaryDirectory(prefix="interleave-") as tmp:
            tree = os.path.join(tmp, "base")
            subprocess.run(
                ["git", "-C", ROOT, "worktree", "add", "--quiet", "--detach", tree, rev],
                check=True,
            )
            try:
                yield tree
            finally:
                # Not check=True: a failure here would hide the run's own.
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree])
    finally:
        # The directory is gone whatever ``remove`` did: git forgets it.
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"])


#: One random source for the whole run, so that every round (and every
#: call) gets orders of its own.
_orders = random.Random()


def alternate(
    count: int, names: list[str], measure: Callable[[str], float]
) -> dict[str, list[float]]:
    """
    C{count} times over C{names}, each time in a new random order: a fixed
    or merely reversed order would always measure the same names right
    after another's connection closed (in the middle, with three or more),
    which costs them more than the rest; and orders that differ from round
    to round let an order effect show in the spread of the rounds.
    """
    out: dict[str, list[float]] = {n: [] for n in names}
    order = list(names)
    shuffle = _orders.shuffle
    for _ in range(count):
        shuffle(order)
        for name in order:
            out[name].append(measure(name))
    return out


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def bare(apiPort: int, targetPort: int, warm: list[float]) -> float:
    """
    Open a WebSocket to the server at C{apiPort} ourselves: seconds until
    its C{101}; the time from the init to the first echoed byte on it goes
    to C{warm}.
    """
    start = time.perf_counter()
    sock = L.openWebSocket(apiPort)
    upgrade = time.perf_counter() - start
    with sock:
        warm.append(L.warmFirstByte(sock, targetPort, False))
    return upgrade


#: this / base ratios: name -> (this figure, base figure).
RATIOS = {
    "set-up": ("set-up, this", "set-up, base"),
    "set-up, this client only": ("set-up, base server, this client", "set-up, base"),
    "set-up, this server only": ("set-up, this server, base client", "set-up, base"),
    "upgrade": ("upgrade, this server", "upgrade, base server"),
    "init to first byte": ("init to first byte, this server", "init to first byte, base server"),
    "server CPU": ("server CPU us/connection, this", "server CPU us/connection, base"),
    "client CPU": ("client CPU us/connection, this", "client CPU us/connection, base"),
}


#: Consecutive connections of one warm client (L{oneRound}).
WARM_RUN = 5


def spaced(port: int, gap: float) -> float:
    """L{L.firstByte}, then C{gap} seconds of quiet."""
    took = L.firstByte(port)
    time.sleep(gap)
    return took


def oneRound(
    count: int,
    target: L.Proc,
    servers: dict[str, L.Proc],
    clients: dict[str, L.Proc],
    warmClients: dict[str, L.Proc],
    gap: float,
) -> dict[str, float]:
    """The figures of one round (ms, or CPU microseconds per connection)."""
    procs = [*servers.values(), *clients.values()]
    before = {id(p): p.runtime() for p in procs}
    setup = alternate(count, list(PAIRS), lambda n: L.firstByte(clients[n].port))
    # Each server serves two pairs; each client one.
    served = {id(p): 2 * count for p in servers.values()}
    cpu = {id(p): (p.runtime() - before[id(p)]) / served.get(id(p), count) * 1e6 for p in procs}
    warm: dict[str, list[float]] = {side: [] for side in servers}
    upgrades = alternate(
        count, list(servers), lambda s: bare(servers[s].port, target.port, warm[s])
    )
    figures = {f"set-up, {name}": ms(setup[name]) for name in PAIRS}
    for side in servers:
        figures[f"upgrade, {side} server"] = ms(upgrades[side])
        figures[f"init to first byte, {side} server"] = ms(warm[side])
    for side in servers:
        figures[f"server CPU us/connection, {side}"] = cpu[id(servers[side])]
        figures[f"client CPU us/connection, {side}"] = cpu[id(clients[side])]
    if warmClients:
        # In runs of WARM_RUN connections of one client: alternating single
        # connections would leave each client the other's time to open its
        # next spare, on top of the gap.
        each: dict[str, list[float]] = {side: [] for side in warmClients}

        def warmRun(side: str) -> float:
            for _ in range(WARM_RUN):
                each[side].append(spaced(warmClients[side].port, gap))
            return 0.0

        alternate(max(1, count // WARM_RUN), list(warmClients), warmRun)
        for side in warmClients:
            figures[f"warm set-up, {side} client"] = ms(each[side])
            # A connection that found no spare ready costs a round trip or
            # more: the mean tells how often, where the median may not.
            figures[f"warm set-up mean, {side} client"] = statistics.mean(each[side]) * 1e3
    return figures


def run(
    base: str, rounds: int, count: int, warmGap: float | None = None, warmRtt: float = 0.0
) -> None:
    code = {"this": ROOT, "base": base}
    started: list[L.Proc] = []

    def start(role: str, *args: int | str, side: str | None = None) -> L.Proc:
        started.append(L.start(role, *args, code=code[side] if side else None))
        return started[-1]

    try:
        target = start("target")
        servers = {side: start("server", side=side) for side in code}
        clients = {
            name: start("client", servers[s].port, target.port, side=c)
            for name, (s, c) in PAIRS.items()
        }
        warmClients: dict[str, L.Proc] = {}
        ratioNames = dict(RATIOS)
        if warmGap is not None:
            # A server of their own: their spares (opened, expiring) would
            # count in the CPU of a server measured above.
            warmServer = start("server")
            apiPort = warmServer.port
            if warmRtt:
                apiPort = start("delay", round(warmRtt * 1e6), apiPort).port
            warmClients = {
                side: start("client", apiPort, target.port, 1, side=side) for side in code
            }
            ratioNames["warm set-up"] = ("warm set-up, this client", "warm set-up, base client")
            ratioNames["warm set-up mean"] = (
                "warm set-up mean, this client",
                "warm set-up mean, base client",
            )
        for client in [*clients.values(), *warmClients.values()]:
            for _ in range(20):
                spaced(client.port, warmGap or 0)
        ratios: dict[str, list[float]] = {name: [] for name in ratioNames}
        for r in range(rounds):
            figures = oneRound(count, target, servers, clients, warmClients, warmGap or 0)
            print(f"round {r + 1}/{rounds}:")
            for name, value in figures.items():
                print(f"  {name:36} {value:9.3f}")
            for name, (new, old) in ratioNames.items():
                ratios[name].append(figures[new] / figures[old])
            print("  this / base: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in ratios.items()))
            sys.stdout.flush()
        print(f"\nthis / base, median of {rounds} rounds (min..max):")
        for name, values in ratios.items():
            print(
                f"  {name:26} {statistics.median(values):.3f} ({min(values):.2f}..{max(values):.2f})"
            )
    finally:
        for p in reversed(started):
            p.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="a git revision or a source tree to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=300, help="per pair and round")
    parser.add_argument(
        "--warm-gap",
        type=float,
        metavar="MS",
        help="also measure warm set-up, connections MS milliseconds apart",
    )
    parser.add_argument(
        "--warm-rtt",
        type=float,
        metavar="MS",
        default=0.0,
        help="with --warm-gap: the warm clients reach their server over this round trip",
    )
    args = parser.parse_args()
    # A SIGTERM (a timeout, a killed make) ends the run through the
    # cleanup below, not around it: processes stopped, worktree removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with sourceTree(args.base) as base:
        print(f"this: {ROOT}\nbase: {args.base} ({base})")
        warmGap = None if args.warm_gap is None else args.warm_gap / 1e3
        run(base, args.rounds, args.connections, warmGap, args.warm_rtt / 1e3)


if __name__ == "__main__":
    main()
