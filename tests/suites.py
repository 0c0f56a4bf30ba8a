# -*- test-case-name: tests.test_suites -*-
"""
Which test classes run in C{make test} and which in C{make e2e}.

A test class belongs to the B{unit} suite (C{make test}, run once with the
relay's fast path and once without it) unless it says otherwise:

  - L{e2e} marks load and subprocess tests: C{make e2e} runs them once.
  - L{e2eRelay} marks bulk transfers through the relay: C{make e2e} runs
    them with the fast path and again without it.

A module whose classes are all end-to-end says so once, with
C{SUITE = E2E} at module level; a class decorator still overrides it.
A new class therefore always lands in exactly one suite, and
L{tests.test_suites} checks that the suites cover every test trial finds.

C{python -m tests.suites SUITE...} (C{unit}, C{e2e}, C{e2e-relay}) prints
the trial names of those suites for the Makefile: a whole module where all
of its classes are in them, else its classes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

from twisted.trial.runner import TestLoader

UNIT = "unit"
E2E = "e2e"
E2E_RELAY = "e2e-relay"
SUITES = (UNIT, E2E, E2E_RELAY)

#: The class attribute that the decorators set.
ATTRIBUTE = "spritesSuite"

_C = TypeVar("_C", bound=type)


def e2e(cls: _C) -> _C:
    """
    Mark a test class as a load or subprocess test, for C{make e2e}.
    """
    setattr(cls, ATTRIBUTE, E2E)
    return cls


def e2eRelay(cls: _C) -> _C:
    """
    Mark a test class as a bulk transfer through the relay: C{make e2e}
    runs it with and without the fast path.
    """
    setattr(cls, ATTRIBUTE, E2E_RELAY)
    return cls


def testClasses() -> Iterator[tuple[str, type[unittest.TestCase]]]:
    """
    Every test class of the C{tests} package that holds at least one test,
    with the name of the module that defines it, in module order.
    """
    here = Path(__file__).parent
    loader = TestLoader()
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, unittest.TestCase)
                and value.__module__ == module.__name__
                and loader.loadClass(value).countTestCases()
            ):
                yield module.__name__, value


def suiteOf(cls: type) -> str:
    """
    The suite of a test class: its decorator's, else its module's C{SUITE},
    else L{UNIT}.
    """
    marked = getattr(cls, ATTRIBUTE, None)
    if marked is None:
        marked = getattr(sys.modules[cls.__module__], "SUITE", UNIT)
    if marked not in SUITES:
        raise ValueError(f"{cls.__module__}.{cls.__qualname__}: unknown suite {marked!r}")
    return str(marked)


def names(*suites: str) -> list[str]:
    """
    The trial names that make up the union of C{suites}, in module order:
    L{E2E} includes L{E2E_RELAY}.  A module is named whole when all of its
    classes belong to the union.
    """
    wanted = set(suites)
    if E2E in wanted:
        wanted.add(E2E_RELAY)
    byModule: dict[str, list[tuple[str, bool]]] = {}
    for moduleName, cls in testClasses():
        byModule.setdefault(moduleName, []).append((cls.__qualname__, suiteOf(cls) in wanted))
    result = []
    for moduleName, classes in byModule.items():
        if all(inSuite for _, inSuite in classes):
            result.append(moduleName)
        else:
            result.extend(f"{moduleName}.{name}" for name, inSuite in classes if inSuite)
    return result


def main(argv: list[str]) -> int:
    """
    Print the trial names of the suites named in C{argv}; exit 2 for a
    suite that does not exist, 1 when the suites hold no test (trial would
    run nothing and pass).
    """
    if not argv or not set(argv) <= set(SUITES):
        print(f"usage: python -m tests.suites {{{'|'.join(SUITES)}}}...", file=sys.stderr)
        return 2
    found = names(*argv)
    if not found:
        print(f"tests.suites: no test class is in {' '.join(argv)}", file=sys.stderr)
        return 1
    print(" ".join(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
