"""docs/plugins.md's may_join worked example is the plugin we ship, word for word."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.test_plugins_docs import code_block_after, read_doc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "plugins", "may_join", "fedserver_may_join", "__init__.py")


class WorkedExampleIsShippedTests(SynchronousTestCase):
    """The example a plugin author copies is the code the project runs and tests."""

    def test_example_is_the_shipped_plugin(self):
        """The ``example-plugin`` block equals ``plugins/may_join/fedserver_may_join/__init__.py``."""
        with open(SHIPPED, encoding="utf-8") as f:
            shipped = f.read()
        self.assertEqual(code_block_after(read_doc(), "example-plugin").strip(), shipped.strip())

    def test_difference_detected(self):
        """The comparison fails for a block that differs by one character."""
        with open(SHIPPED, encoding="utf-8") as f:
            shipped = f.read()
        doc = "<!-- example-plugin -->\n```python\n" + shipped.replace("12", "11", 1) + "\n```\n"
        self.assertNotEqual(code_block_after(doc, "example-plugin").strip(), shipped.strip())
