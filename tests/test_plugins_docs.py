"""docs/plugins.md: every hookspec is documented, and the worked example plugin and its
test, taken verbatim from the document, work."""

from __future__ import annotations

import os
import re
import sys
import types
import unittest

from twisted.trial.unittest import SynchronousTestCase

from fedserver.auth.hookspecs import hookspec_names

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "plugins.md")


def read_doc() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def documented_hooks(doc: str) -> set[str]:
    """The hook names with a reference section (a ``### `name``` heading)."""
    return set(re.findall(r"^### `(fedserver_[a-z_]+)`\s*$", doc, re.MULTILINE))


def undocumented_hooks(doc: str, names: list[str]) -> list[str]:
    """The names in ``names`` that ``doc`` has no reference section for."""
    documented = documented_hooks(doc)
    return [n for n in names if n not in documented]


def code_block_after(doc: str, marker: str) -> str:
    """The fenced code block following ``<!-- marker -->``."""
    match = re.search(rf"<!-- {marker} -->\s*```[a-z]*\n(.*?)\n```", doc, re.DOTALL)
    if match is None:
        raise AssertionError(f"no code block after <!-- {marker} --> in {DOC}")
    return match.group(1)


class HookDocumentationTests(SynchronousTestCase):
    """Every hook a plugin can implement is documented for plugin authors."""

    def test_every_hookspec_documented(self):
        """Each hookspec in fedserver/auth/hookspecs.py has a "### `name`" section in
        docs/plugins.md."""
        self.assertEqual(undocumented_hooks(read_doc(), hookspec_names()), [])

    def test_undocumented_hookspec_detected(self):
        """The check fails for a hookspec the document does not describe (a new hook
        added without documentation)."""
        names = hookspec_names() + ["fedserver_auth_brand_new_rule"]
        self.assertEqual(undocumented_hooks(read_doc(), names), ["fedserver_auth_brand_new_rule"])

    def test_no_stale_documentation(self):
        """The document describes no hook that does not exist."""
        self.assertEqual(sorted(documented_hooks(read_doc()) - set(hookspec_names())), [])


class WorkedExampleTests(SynchronousTestCase):
    """The worked example in docs/plugins.md runs as written."""

    def setUp(self):
        doc = read_doc()
        module = types.ModuleType("fedserver_may_join")
        module.__file__ = DOC
        exec(compile(code_block_after(doc, "example-plugin"), DOC, "exec"), module.__dict__)
        sys.modules["fedserver_may_join"] = module
        self.addCleanup(sys.modules.pop, "fedserver_may_join", None)
        self.test_source = code_block_after(doc, "example-test")

    def test_example_plugin_tests_pass(self):
        """The example's own tests (listed user joins, unlisted user refused, room v12
        unaffected, malformed list rejected) pass against the example plugin."""
        namespace: dict = {"__name__": "test_may_join"}
        exec(compile(self.test_source, DOC, "exec"), namespace)
        cases = [v for v in namespace.values()
                 if isinstance(v, type) and issubclass(v, unittest.TestCase)
                 and v.__module__ == "test_may_join"]
        self.assertEqual(len(cases), 1)
        suite = unittest.defaultTestLoader.loadTestsFromTestCase(cases[0])
        result = unittest.TestResult()
        suite.run(result)
        self.assertEqual(result.testsRun, 4)
        problems = [(str(t), tb) for t, tb in result.failures + result.errors]
        self.assertEqual(problems, [])
