# -*- test-case-name: tests.test_suites -*-
"""
Tests for L{tests.suites}, which splits the tests between C{make test} and
C{make e2e}.
"""

from __future__ import annotations

import io
import unittest as pyunit
from collections.abc import Iterable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.trial.runner import TestLoader
from twisted.trial.unittest import SynchronousTestCase

import tests
from tests import suites, test_demo, test_integration


def testIDs(suite: Iterable[object]) -> list[str]:
    """
    The ids of every test in a (nested) suite.
    """
    found = []
    for item in suite:
        if isinstance(item, pyunit.TestCase):
            found.append(item.id())
        else:
            found.extend(testIDs(item))  # type: ignore[arg-type]
    return found


def load(names: list[str]) -> list[str]:
    return testIDs(TestLoader().loadByNames(names))


class SplitTests(SynchronousTestCase):
    """
    Every test runs in exactly one of C{make test} and C{make e2e}.
    """

    def test_everyTestInOneSuite(self) -> None:
        """
        The unit and e2e suites together hold every test trial finds in the
        C{tests} package, and no test is in both.
        """
        everything = load(["tests"])
        unit = load(suites.names(suites.UNIT))
        e2e = load(suites.names(suites.E2E))
        self.assertEqual(len(set(unit)), len(unit))
        self.assertEqual(set(unit) & set(e2e), set())
        self.assertEqual(sorted(unit + e2e), sorted(everything))
        # Not vacuous: both suites hold tests, and the unit suite the most.
        self.assertGreater(len(e2e), 0)
        self.assertGreater(len(unit), len(e2e))

    def test_relayIsPartOfE2E(self) -> None:
        """
        The bulk-transfer classes (C{e2e-relay}) are in C{e2e}, and nothing
        else is in C{e2e-relay}.
        """
        relay = suites.names(suites.E2E_RELAY)
        self.assertEqual(
            relay,
            ["tests.test_integration.RelayTests", "tests.test_integration.FlowControlTests"],
        )
        self.assertLess(set(load(relay)), set(load(suites.names(suites.E2E))))

    def test_moduleNamedWhole(self) -> None:
        """
        A module whose classes are all in the suite is named by itself; a
        split module by its classes.
        """
        unit = suites.names(suites.UNIT)
        self.assertIn("tests.test_pipe", unit)
        self.assertNotIn("tests.test_integration", unit)
        self.assertIn("tests.test_integration.RefusalTests", unit)
        self.assertIn("tests.test_integration", suites.names(suites.UNIT, suites.E2E_RELAY))
        self.assertIn("tests.test_demo", suites.names(suites.E2E))

    def test_makefileHasNoList(self) -> None:
        """
        The Makefile takes the suites from L{tests.suites}: it names no test
        module, so a new class cannot be left out of both.
        """
        makefile = (Path(tests.__file__).parent.parent / "Makefile").read_text()
        self.assertIn("-m tests.suites", makefile)
        self.assertNotIn("tests.test_", makefile)


class SuiteOfTests(SynchronousTestCase):
    """
    L{suites.suiteOf}: the class's decorator, else the module's C{SUITE},
    else unit.
    """

    def test_default(self) -> None:
        self.assertEqual(suites.suiteOf(SplitTests), suites.UNIT)

    def test_decorated(self) -> None:
        self.assertEqual(suites.suiteOf(test_integration.RelayTests), suites.E2E_RELAY)
        self.assertEqual(suites.suiteOf(test_integration.RefusalTests), suites.UNIT)

    def test_module(self) -> None:
        self.assertEqual(test_demo.SUITE, suites.E2E)
        classes = [cls for name, cls in suites.testClasses() if name == test_demo.__name__]
        self.assertGreater(len(classes), 1)
        for cls in classes:
            self.assertEqual(suites.suiteOf(cls), suites.E2E)

    def test_decoratorOverridesModule(self) -> None:
        """
        A decorated class in a module with C{SUITE} takes the decorator's.
        """

        @suites.e2eRelay
        class Relay(SynchronousTestCase):
            pass

        Relay.__module__ = test_demo.__name__
        self.assertEqual(suites.suiteOf(Relay), suites.E2E_RELAY)

    def test_unknown(self) -> None:
        """
        A misspelt suite is an error naming the class and the value.
        """

        class Odd(SynchronousTestCase):
            spritesSuite = "e2e-slow"

        error = self.assertRaises(ValueError, suites.suiteOf, Odd)
        self.assertIn("Odd", str(error))
        self.assertIn("'e2e-slow'", str(error))


class MainTests(SynchronousTestCase):
    """
    C{python -m tests.suites} for the Makefile.
    """

    def run_(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = suites.main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_prints(self) -> None:
        status, out, err = self.run_("e2e-relay")
        self.assertEqual(
            (status, out, err),
            (0, "tests.test_integration.RelayTests tests.test_integration.FlowControlTests\n", ""),
        )

    def test_union(self) -> None:
        status, out, _ = self.run_("unit", "e2e")
        self.assertEqual(status, 0)
        self.assertIn("tests.test_integration", out.split())

    def test_badSuite(self) -> None:
        """
        An unknown suite, or none, is a usage error, with nothing on stdout
        for trial to run.
        """
        for argv in [("slow",), ()]:
            status, out, err = self.run_(*argv)
            self.assertEqual((status, out), (2, ""))
            self.assertIn("usage: python -m tests.suites", err)

    def test_empty(self) -> None:
        """
        A suite without tests fails rather than letting trial run nothing
        and pass.
        """
        self.patch(suites, "testClasses", lambda: iter([]))
        status, out, err = self.run_("unit")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no test class is in unit", err)
