"""Tests for packaging: the twistd plugin is discoverable and a built wheel installs it properly."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import fedserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _source_tree() -> str:
    if not os.path.exists(os.path.join(ROOT, "setup.cfg")):
        raise SkipTest("not running from a source tree")
    return ROOT


class PluginDiscoveryTests(SynchronousTestCase):
    """twistd finds exactly one 'fedserver' IServiceMaker."""

    def test_get_plugins(self):
        """getPlugins(IServiceMaker) yields a plugin named 'fedserver' whose options parse."""
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "fedserver"]
        self.assertEqual(len(makers), 1)
        maker = makers[0]
        self.assertEqual(maker.module, "fedserver.service")
        self.assertTrue(callable(maker.makeService))
        opts = maker.options()
        opts.parseOptions([])
        self.assertEqual(opts.config.server_name, "localhost:8448")


class SetupCfgTests(SynchronousTestCase):
    """setup.cfg declares what the issue requires."""

    def setUp(self):
        self.cfg = configparser.ConfigParser()
        self.cfg.read(os.path.join(_source_tree(), "setup.cfg"))

    def test_dependencies(self):
        """Every runtime dependency is declared, Python >= 3.11, and a [test] extra exists."""
        reqs = self.cfg["options"]["install_requires"].lower()
        for dep in ("twisted[tls]", "treq", "canonicaljson", "signedjson", "pynacl", "pluggy",
                    "service-identity", "pyyaml", "pyopenssl", "cryptography"):
            self.assertIn(dep, reqs)
        self.assertEqual(self.cfg["options"]["python_requires"], ">=3.11")
        self.assertIn("test", self.cfg["options.extras_require"])

    def test_no_init_in_twisted_plugins(self):
        """twisted/ and twisted/plugins/ have no __init__.py (it would shadow Twisted itself)."""
        for d in ("twisted", os.path.join("twisted", "plugins")):
            self.assertFalse(os.path.exists(os.path.join(ROOT, d, "__init__.py")), d)


class WheelTests(SynchronousTestCase):
    """A non-editable build puts the plugin file and the schema files where they belong."""

    def test_wheel_contents(self):
        """The wheel holds twisted/plugins/fedserver_plugin.py, no twisted/__init__.py, every
        fedserver module and fedserver/storage/schema/*.sql."""
        root = _source_tree()
        if importlib.util.find_spec("setuptools.command.bdist_wheel") is None or importlib.util.find_spec("pip") is None:
            raise SkipTest("needs pip and setuptools>=70.1 (the [test] extra) to build a wheel")
        # Build from a copy: an in-tree build leaves build/ behind, whose stale files would
        # leak into later wheels.
        work = os.path.abspath(self.mktemp())
        src = os.path.join(work, "src")
        os.makedirs(src)
        for name in ("setup.cfg", "pyproject.toml", "README.md"):
            if os.path.exists(os.path.join(root, name)):
                shutil.copy(os.path.join(root, name), src)
        for name in ("fedserver", "twisted"):
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
            shutil.copytree(os.path.join(root, name), os.path.join(src, name), ignore=ignore)
        out = os.path.join(work, "dist")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            self.fail(f"pip wheel failed: {proc.stderr[-2000:]}")
        (wheel,) = [f for f in os.listdir(out) if f.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(out, wheel)) as z:
            names = set(z.namelist())
        self.assertIn("twisted/plugins/fedserver_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse([n for n in names if n.startswith("tests/")])
        pkg = os.path.dirname(fedserver.__file__)
        for dirpath, _, files in os.walk(pkg):
            if "__pycache__" in dirpath:
                continue
            for f in files:
                if f.endswith((".py", ".sql")):
                    rel = os.path.relpath(os.path.join(dirpath, f), os.path.dirname(pkg)).replace(os.sep, "/")
                    self.assertIn(rel, names)
        schema = os.path.join(pkg, "storage", "schema")
        if os.path.isdir(schema):
            self.assertTrue([n for n in names if n.startswith("fedserver/storage/schema/") and n.endswith(".sql")])
