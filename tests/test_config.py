"""Tests for fedserver.config and the twistd Options: defaults, files, overrides, errors, generation."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from fedserver.config import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    Config,
    ConfigError,
    OldVerifyKey,
    TrustedKeyServer,
    config_from_dict,
    generate_config_text,
    listen_description,
    load_config,
    parse_yaml,
    split_server_name,
)
from fedserver.service import Options

KEY = "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw"


class DefaultsTests(SynchronousTestCase):
    """With no file and no overrides every option has its documented default."""

    def test_defaults(self):
        """load_config() gives the embedded defaults: localhost:8448, files in the working dir."""
        c = load_config()
        self.assertEqual(c, Config())
        self.assertEqual(c.server_name, "localhost:8448")
        self.assertEqual(c.server_host, "localhost")
        self.assertEqual(c.database_path, "fedserver.db")
        self.assertEqual(c.signing_key_path, "fedserver.signing.key")
        self.assertEqual((c.tls_certificate_path, c.tls_private_key_path), ("fedserver.tls.crt", "fedserver.tls.key"))
        self.assertEqual((c.federation_listen, c.client_listen), ("8448", "127.0.0.1:8008"))
        self.assertEqual(c.key_validity_period, 86400000)
        self.assertTrue(c.federation_verify_certificates)
        self.assertFalse(c.federation_allow_private_addresses)
        self.assertFalse(c.enable_registration)
        self.assertIsNone(c.registration_shared_secret)
        self.assertEqual(c.max_request_body_size, DEFAULT_MAX_REQUEST_BODY_SIZE)
        self.assertEqual(c.max_request_body_size, 13107200)
        self.assertEqual((c.plugins, c.disabled_plugins, c.old_verify_keys, c.trusted_key_servers), ((), (), (), ()))

    def test_config_is_frozen(self):
        """Config is immutable."""
        import dataclasses

        with self.assertRaises(dataclasses.FrozenInstanceError):
            Config().server_name = "x"  # type: ignore[misc]


class FileTests(SynchronousTestCase):
    """Loading YAML files and applying overrides."""

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_file_values(self):
        """Values in the file replace defaults, nested structures become typed values."""
        path = self.write(
            f"""
server_name: example.org
federation_listen: 127.0.0.1:9448
key_validity_period: 3600000
federation_verify_certificates: false
plugins: [a.b, c]
old_verify_keys:
  - key_id: ed25519:old
    key: {KEY}
    expired_ts: 1600000000000
trusted_key_servers:
  - server_name: notary.example
    verify_keys:
      ed25519:auto: {KEY}
  - server_name: "[::1]:8448"
    verify_keys:
      ed25519:b: {KEY}
"""
        )
        c = load_config(path)
        self.assertEqual(c.server_name, "example.org")
        self.assertEqual(c.federation_listen, "127.0.0.1:9448")
        self.assertFalse(c.federation_verify_certificates)
        self.assertEqual(c.plugins, ("a.b", "c"))
        self.assertEqual(c.old_verify_keys, (OldVerifyKey("ed25519:old", KEY, 1600000000000),))
        self.assertEqual(
            c.trusted_key_servers,
            (TrustedKeyServer("notary.example", (("ed25519:auto", KEY),)), TrustedKeyServer("[::1]:8448", (("ed25519:b", KEY),))),
        )
        self.assertEqual(c.trusted_key_servers[0].verify_keys_map(), {"ed25519:auto": KEY})

    def test_overrides_beat_file(self):
        """Overrides (the command line) take precedence over the file."""
        path = self.write("server_name: example.org\nlog_level: debug\n")
        c = load_config(path, {"server_name": "other.example:8449"})
        self.assertEqual((c.server_name, c.log_level), ("other.example:8449", "debug"))

    def test_empty_file_is_defaults(self):
        """An empty file (or only comments) means all defaults."""
        self.assertEqual(load_config(self.write("# nothing\n")), Config())

    def test_unknown_key(self):
        """An unknown (misspelt) option is an error naming it, with a suggestion."""
        path = self.write("server_nmae: example.org\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn("'server_nmae'", str(e))
        self.assertIn("server_name", str(e))

    def test_bad_values_give_one_line_errors(self):
        """Each bad value gives a one-line ConfigError naming the option."""
        bad = {
            "server_name": ["", "exa mple.org", "example.org:0", "example.org:99999", "[::1", "[zz]:80", 5],
            "federation_listen": ["host.example:80", "99999", "[::1]", True, "", "1.2.3.4:x"],
            "client_listen": ["nope"],
            "key_validity_period": [0, 1000, 8 * 86400000, "1d", True],
            "old_verify_keys": [{"a": 1}, [{"key_id": "ed25519:x", "key": "AAAA", "expired_ts": 1}],
                                [{"key_id": "rsa:x", "key": KEY, "expired_ts": 1}],
                                [{"key_id": "ed25519:x", "key": KEY, "expired_ts": -1}]],
            "trusted_key_servers": ["matrix.org", [{"verify_keys": {}}], [{"server_name": "a", "verify_keys": {"ed25519:x": "!!"}}],
                                    [{"server_name": "notary.example"}], [{"server_name": "notary.example", "verify_keys": {}}]],
            "federation_verify_certificates": ["yes", 1],
            "federation_client_timeout": [0, -1, "60", True],
            "plugins": ["a.b", [1], [""]],
            "max_request_body_size": [10, 1.5],
            "registration_shared_secret": ["", 5],
            "log_level": ["loud", 3],
        }
        for name, values in bad.items():
            for value in values:
                e = self.assertRaises(ConfigError, config_from_dict, {name: value})
                msg = str(e)
                self.assertIn(repr(name), msg, (name, value))
                self.assertNotIn("\n", msg)

    def test_notary_without_keys_is_refused(self):
        """A trusted key server without verify_keys is refused with a one-line error naming
        it: trusting the first key a notary presents would be unsafe."""
        for entry in ({"server_name": "notary.example"}, {"server_name": "notary.example", "verify_keys": {}}):
            e = self.assertRaises(ConfigError, config_from_dict, {"trusted_key_servers": [entry]})
            self.assertIn("notary.example", str(e))
            self.assertIn("verify_keys", str(e))
            self.assertNotIn("\n", str(e))

    def test_yaml_syntax_error(self):
        """Broken YAML is a one-line error with the file name and line."""
        path = self.write("server_name: [unclosed\nfoo: bar\n")
        e = self.assertRaises(ConfigError, load_config, path)
        self.assertIn(path, str(e))
        self.assertNotIn("\n", str(e))

    def test_not_a_mapping(self):
        """A YAML document that is not a mapping is refused."""
        self.assertRaises(ConfigError, parse_yaml, "- a\n- b\n")

    def test_missing_file(self):
        """A missing config file is a clear error, not a traceback."""
        e = self.assertRaises(ConfigError, load_config, "/nonexistent/fedserver.yaml")
        self.assertIn("/nonexistent/fedserver.yaml", str(e))

    def test_replace(self):
        """Config.replace validates the changed values."""
        self.assertEqual(Config().replace(server_name="a.example").server_name, "a.example")
        self.assertRaises(ConfigError, Config().replace, server_name="a b")


class GenerateConfigTests(SynchronousTestCase):
    """--generate-config output is commented YAML that loads back to the same Config."""

    def test_round_trip_defaults(self):
        """The generated default file has a comment for every option and loads to the defaults."""
        text = generate_config_text()
        self.assertEqual(config_from_dict(parse_yaml(text)), Config())
        for line in ("server_name: localhost:8448", "federation_listen: '8448'", "registration_shared_secret: null"):
            self.assertIn(line, text)
        self.assertGreater(text.count("\n#"), 20)

    def test_round_trip_everything_set(self):
        """A config with every kind of value survives generate -> load unchanged."""
        c = config_from_dict(
            {
                "server_name": "[2001:db8::1]:8448",
                "old_verify_keys": [{"key_id": "ed25519:o", "key": KEY, "expired_ts": 5}],
                "trusted_key_servers": [{"server_name": "n.example", "verify_keys": {"ed25519:a": KEY}}],
                "plugins": ["x.y"],
                "disabled_plugins": ["z"],
                "registration_shared_secret": "s3cret: with colon",
                "federation_client_timeout": 2.5,
                "client_listen": "tcp:0:interface=127.0.0.1",
            }
        )
        self.assertEqual(config_from_dict(parse_yaml(generate_config_text(c))), c)


class ServerNameAndListenTests(SynchronousTestCase):
    """Server name grammar (appendix "Server Name") and listen descriptions."""

    def test_split_server_name(self):
        """Hosts, IPv4/IPv6 literals and ports split as the grammar says."""
        self.assertEqual(split_server_name("example.org"), ("example.org", None))
        self.assertEqual(split_server_name("example.org:8448"), ("example.org", 8448))
        self.assertEqual(split_server_name("1.2.3.4:80"), ("1.2.3.4", 80))
        self.assertEqual(split_server_name("[::1]:8448"), ("::1", 8448))
        self.assertEqual(split_server_name("[::1]"), ("::1", None))
        for bad in ("", "a:b", "[::1]x", "ex_ample.org", "a" * 256):
            self.assertRaises(ValueError, split_server_name, bad)

    def test_listen_description(self):
        """Ports and host:port become tcp:/ssl: strports; full descriptions are kept verbatim."""
        self.assertEqual(listen_description("8008"), "tcp:8008")
        self.assertEqual(listen_description("127.0.0.1:8008"), "tcp:8008:interface=127.0.0.1")
        self.assertEqual(listen_description("[::1]:8008"), r"tcp:8008:interface=\:\:1")
        self.assertEqual(listen_description("*:8008"), "tcp:8008")
        self.assertEqual(
            listen_description("8448", tls_certificate="/d/a:b.crt", tls_private_key="k.key"),
            r"ssl:8448:privateKey=k.key:certKey=/d/a\:b.crt",
        )
        self.assertEqual(listen_description("tcp:8448:interface=::1"), "tcp:8448:interface=::1")


class OptionsTests(SynchronousTestCase):
    """The twistd Options: parsing, overrides, errors and --generate-config."""

    def parse(self, *argv):
        o = Options()
        o.parseOptions(list(argv))
        return o

    def test_no_options(self):
        """No options at all give the default Config."""
        self.assertEqual(self.parse().config, Config())

    def test_flags_override_file(self):
        """Dedicated flags and --set override values from --config."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("server_name: file.example\ndatabase_path: file.db\nenable_registration: true\n")
        o = self.parse("--config", path, "--server-name", "cli.example", "--set", "enable_registration=false",
                       "--set", "plugins=[a.b]", "--federation-listen", "0")
        c = o.config
        self.assertEqual((c.server_name, c.database_path, c.enable_registration, c.plugins, c.federation_listen),
                         ("cli.example", "file.db", False, ("a.b",), "0"))

    def test_invalid_option_is_usage_error(self):
        """A bad value or unknown --set option is a one-line UsageError (twistd exits non-zero)."""
        for argv in (["--server-name", "bad name"], ["--set", "nope=1"], ["--set", "novalue"],
                     ["--set", "key_validity_period=1"], ["--log-level", "loud"]):
            e = self.assertRaises(usage.UsageError, self.parse, *argv)
            self.assertNotIn("\n", str(e))

    def test_generate_config_to_file(self):
        """--generate-config --config PATH writes a loadable file (with overrides) and exits 0;
        it refuses to overwrite an existing file."""
        path = self.mktemp()
        with redirect_stderr(io.StringIO()):
            e = self.assertRaises(SystemExit, self.parse, "--generate-config", "--config", path, "--server-name", "gen.example")
        self.assertEqual(e.code, 0)
        self.assertEqual(load_config(path).server_name, "gen.example")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertRaises(usage.UsageError, self.parse, "--generate-config", "--config", path)

    def test_generate_config_to_stdout(self):
        """--generate-config without --config prints the file and exits 0."""
        out = io.StringIO()
        with redirect_stdout(out):
            e = self.assertRaises(SystemExit, self.parse, "--generate-config")
        self.assertEqual(e.code, 0)
        self.assertEqual(config_from_dict(parse_yaml(out.getvalue())), Config())

    def test_every_option_in_the_readme(self):
        """The README's configuration table has a row for every option, and no row for an
        option that does not exist."""
        import re

        from fedserver.config import OPTIONS

        readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        table = text[text.index("## Configuration"):text.index("## Keys and TLS files")]
        rows = set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))
        self.assertEqual(rows, {o.name for o in OPTIONS})
