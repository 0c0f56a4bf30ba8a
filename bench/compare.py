"""
Put the main figures of several runs side by side:
``python bench/compare.py bench/results/run-A.json bench/results/run-B.json ...``.

For alternating old and new code: every ``make bench`` leaves a dated
``bench/results/run-*.json`` naming the commit it measured.  Each column is
one file; each figure is that run's median (a ratio is taken within the
run), so a difference between columns larger than between runs of the same
code is more than the machine's noise.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import report
from report import MODES, med

Figure = tuple[str, Callable[[dict[str, Any]], float]]


def figures(r: dict[str, Any]) -> list[Figure]:
    """(name, how to get it) of every figure this run has."""
    out: list[Figure] = []
    if "bulk" in r:
        for m in MODES:
            out.append(
                (
                    f"bulk {m}: tunnel / portforward MB/s",
                    lambda r, m=m: (
                        med(r["bulk"][m]["tunnel"]["mbps"])
                        / med(r["bulk"][m]["portforward"]["mbps"])
                    ),
                )
            )
            out.append(
                (
                    f"bulk {m}: client CPU / portforward CPU",
                    lambda r, m=m: (
                        med(r["bulk"][m]["tunnel"]["cpu"]["client"])
                        / med(r["bulk"][m]["portforward"]["cpu"]["portforward"])
                    ),
                )
            )
    if "setup" in r:
        out.append(
            ("loopback setup median ms, tunnel", lambda r: med(r["setup"]["tunnel"]["median"]))
        )
        for p in ("cold", "warm", "early"):
            if p in r.get("setupSpaced", {}):
                out.append(
                    (
                        f"loopback setup median ms, spaced, {p}",
                        lambda r, p=p: med(r["setupSpaced"][p]["median"]),
                    )
                )
        out.append(("ping-pong us, tunnel", lambda r: med(r["pingpong"]["tunnel"])))
    for part in ("small", "pgbench"):
        for c in ("4", "16"):
            if c in r.get(part, {}):
                out.append(
                    (
                        f"{part} {c} conns: tunnel / portforward TPS",
                        lambda r, p=part, c=c: med(r[p][c]["ratio"]),
                    )
                )
                out.append(
                    (
                        f"{part} {c} conns: client CPU us / transaction",
                        lambda r, p=part, c=c: med(r[p][c]["tunnel"]["cpu"]["client"]),
                    )
                )
    if "tls" in r and "skipped" not in r["tls"]:
        for p in ("ws", "wss", "wss-resumable"):
            out.append(
                (f"tls {p}: client CPU ms / tunnel", lambda r, p=p: med(r["tls"][p]["client"]))
            )
    if "idle" in r:
        out.append(("idle KiB per tunnel, client", lambda r: r["idle"]["client"]["perTunnel"]))
    if "wan" in r:
        for p in r["wan"]["ms"]:
            out.append(
                (
                    f"wan setup RTTs, {p}",
                    lambda r, p=p: med(r["wan"]["ms"][p]) / r["wan"]["rttMs"],
                )
            )
    return out


def main(paths: list[str]) -> None:
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    names: dict[str, None] = {}
    getters: dict[str, Callable[[dict[str, Any]], float]] = {}
    for r in runs:
        for name, get in figures(r):
            names.setdefault(name)
            getters[name] = get
    header = ["figure"] + [
        f"{r['machine'].get('code', '?')} {p.rsplit('/', 1)[-1]}"
        for r, p in zip(runs, paths, strict=True)
    ]
    rows = []
    for name in names:
        row = [name]
        for r in runs:
            try:
                row.append(f"{getters[name](r):.3g}")
            except (KeyError, ValueError, ZeroDivisionError, TypeError):
                row.append("")
        rows.append(row)
    print(report.table(header, rows))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
