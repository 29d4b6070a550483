"""Config validation: every kind of error names the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import TestCase

from myservices.config import ConfigError
from myservices.db.config import parse_database_url
from myservices.registry import load_config
from myservices.settings import parse_size
from tests.support import REPO, load, write_config


class ConfigErrorsTests(TestCase):
    def problems(self, text: str, environ: dict[str, str] | None = None) -> list[str]:
        path = write_config(self, text)
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ=environ or {})
        error = caught.exception
        # every line of the message names the file
        for line in str(error).splitlines():
            self.assertTrue(line.startswith(f"{path}: "), line)
        return error.problems

    def test_unknown_key_is_named_with_its_path(self) -> None:
        problems = self.problems(
            """
            [services.echo]
            endpoint = "tcp:1234"
            max_conections = 5
            """
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("services.echo.max_conections: unknown key", problems[0])
        self.assertIn("max_connections", problems[0])

    def test_a_service_may_not_take_the_name_of_one_of_the_daemons_own(self) -> None:
        problems = self.problems(
            """
            [services.counter]
            kind = "http"
            endpoint = "tcp:0"
            """
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("services.counter: the daemon names one of its own services 'counter'", problems[0])

    def test_unknown_top_level_key_and_unknown_service(self) -> None:
        problems = self.problems(
            """
            colour = "blue"
            [services.ecko]
            endpoint = "tcp:1234"
            """
        )
        self.assertIn(
            "colour: unknown key (expected daemon, database, hub, accounts, kv, tokens, rooms, api, admin or services)", problems
        )
        self.assertTrue(any(p.startswith("services.ecko: unknown service (expected one of chat, echo, framed, http, pb, udp, websocket") for p in problems))

    def test_wrong_type(self) -> None:
        problems = self.problems(
            """
            [services.echo]
            endpoint = "tcp:1234"
            max_connections = "lots"
            enabled = "yes"
            """
        )
        self.assertIn(
            "services.echo.max_connections: expected a whole number from 1 to 1000000, got string 'lots'", problems
        )
        self.assertIn("services.echo.enabled: expected true or false, got string 'yes'", problems)

    def test_boolean_is_not_a_number(self) -> None:
        problems = self.problems(
            """
            [services.echo]
            endpoint = "tcp:1234"
            max_connections = true
            """
        )
        self.assertEqual(len(problems), 1)
        self.assertIn("services.echo.max_connections: expected a whole number", problems[0])

    def test_missing_key(self) -> None:
        problems = self.problems("[services.udp]\nmax_datagram = 100\n")
        self.assertEqual(
            problems, ['services.udp.endpoint: missing (expected a UDP endpoint such as "udp:10004:interface=127.0.0.1")']
        )

    def test_impossible_values(self) -> None:
        problems = self.problems(
            """
            [daemon]
            shutdown_timeout = -1
            [database]
            pool_min = 8
            pool_max = 2
            [services.udp]
            endpoint = "udp:10004"
            max_datagram = "1 MiB"
            """
        )
        self.assertIn("daemon.shutdown_timeout: expected a number of seconds from 0 to 3600, got -1.0", problems)
        self.assertIn("database.pool_min: expected at most database.pool_max", problems)
        self.assertTrue(any(p.startswith("services.udp.max_datagram: expected a size in bytes") for p in problems))

    def test_malformed_stream_endpoint(self) -> None:
        for endpoint, detail in [
            ("tcp:x", "port is 0 to 65535"),
            ("tcp:70000", "port is 0 to 65535"),
            ("tcpp:1234", "Unknown endpoint type"),
            ("tcp:1234:interfase=127.0.0.1", "unknown option 'interfase'"),
            ("udp:1234", '"udp:" is for the udp service only'),
            ("", ""),
        ]:
            problems = self.problems(f'[services.echo]\nendpoint = "{endpoint}"\n')
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(
                problems[0].startswith(
                    'services.echo.endpoint: expected a Twisted endpoint string such as "tcp:1234"'
                ),
                problems[0],
            )
            self.assertIn(detail, problems[0])

    def test_malformed_udp_endpoint(self) -> None:
        for endpoint in ["tcp:10004", "udp:", "udp:10004:interface=example.org", "udp:10004:ttl=3"]:
            problems = self.problems(f'[services.udp]\nendpoint = "{endpoint}"\n')
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith("services.udp.endpoint: expected a UDP endpoint"), problems[0])

    def test_malformed_database_url(self) -> None:
        for url in ["postgres://x/y", "sqlite:/relative", "mysql://host-without-db", "mysql://h:99999/db"]:
            problems = self.problems(f'[database]\nurl = "{url}"\n')
            self.assertEqual(len(problems), 1, problems)
            self.assertTrue(problems[0].startswith("database.url: expected"), problems[0])

    def test_section_that_is_not_a_table(self) -> None:
        problems = self.problems('daemon = "x"\nservices = 3\n')
        self.assertIn("daemon: expected a table ([daemon])", problems)
        self.assertIn("services: expected a table of [services.NAME] sections", problems)

    def test_all_problems_are_reported_at_once(self) -> None:
        problems = self.problems(
            """
            [services.echo]
            endpoint = "nope:1"
            idle_timeout = "soon"
            [services.udp]
            endpoint = "udp:1:interface=x"
            """
        )
        self.assertEqual(len(problems), 3, problems)

    def test_invalid_toml_and_missing_file(self) -> None:
        self.assertTrue(self.problems("[services.echo\n")[0].startswith("not valid TOML:"))
        with self.assertRaises(ConfigError) as caught:
            load_config(Path(self.mktemp()) / "absent.toml", environ={})
        self.assertEqual(caught.exception.problems, ["no such file"])


class ConfigValuesTests(TestCase):
    def test_defaults_and_sizes(self) -> None:
        config = load(self, '[services.udp]\nendpoint = "udp:10004"\nmax_datagram = "2 KiB"\n')
        self.assertEqual(config.services["udp"].max_datagram, 2048)
        self.assertEqual(config.database.url, "sqlite:///myservices.sqlite3")
        self.assertEqual(config.daemon.shutdown_timeout, 5.0)
        self.assertEqual(parse_size("1MiB"), 1024 * 1024)
        self.assertEqual(parse_size(" 10 kb "), 10_000)

    def test_relative_paths_are_relative_to_the_config_file(self) -> None:
        path = write_config(self, '[daemon]\ndata_dir = "state"\n')
        config = load_config(path, environ={})
        self.assertEqual(config.daemon.data_dir, path.parent.resolve() / "state")
        url = parse_database_url(config.database.url, config.daemon.data_dir)
        self.assertEqual(url.path, str(path.parent.resolve() / "state" / "myservices.sqlite3"))

    def test_disabled_services_are_not_built(self) -> None:
        config = load(self, '[services.echo]\nendpoint = "tcp:1"\nenabled = false\n')
        self.assertEqual(config.enabled_services(), [])
        self.assertIn("echo", config.services)

    def test_services_are_kept_in_start_order_whatever_the_file_order(self) -> None:
        config = load(self, '[services.http]\nendpoint = "tcp:2"\n[services.echo]\nendpoint = "tcp:1"\n')
        self.assertEqual(list(config.services), ["echo", "http"])

    def test_the_websocket_mount_needs_the_websocket_service(self) -> None:
        text = '[services.http]\nendpoint = "tcp:2"\nwebsocket = true\n'
        with self.assertRaises(ConfigError) as e:
            load(self, text)
        self.assertIn("services.http.websocket: true needs an enabled [services.websocket] section", e.exception.problems)
        with self.assertRaises(ConfigError):
            load(self, text + '[services.websocket]\nendpoint = "tcp:3"\nenabled = false\n')
        config = load(self, text + '[services.websocket]\nendpoint = "tcp:3"\n')
        self.assertTrue(config.services["http"].websocket)

    def test_string_lists(self) -> None:
        base = '[services.websocket]\nendpoint = "tcp:3"\n'
        config = load(self, base + 'allowed_origins = ["https://a.example", "https://b.example"]\n')
        self.assertEqual(config.services["websocket"].allowed_origins, ("https://a.example", "https://b.example"))
        with self.assertRaises(ConfigError) as e:
            load(self, base + 'allowed_origins = "https://a.example"\n')
        self.assertIn(
            "services.websocket.allowed_origins: expected an array of strings, got string 'https://a.example'",
            e.exception.problems,
        )
        env = {"MYSERVICES__SERVICES__WEBSOCKET__ALLOWED_ORIGINS": '["https://c.example"]'}
        self.assertEqual(load(self, base, env).services["websocket"].allowed_origins, ("https://c.example",))

    def test_every_twisted_endpoint_type_validates(self) -> None:
        for endpoint in [
            "tcp:1234:interface=127.0.0.1",
            "tcp6:1234:interface=\\\\:\\\\:1",
            "unix:/run/myservices/echo.sock:mode=660",
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=echo",
        ]:
            config = load(self, f'[services.echo]\nendpoint = "{endpoint}"\n')
            self.assertEqual(config.services["echo"].endpoint, endpoint.replace("\\\\", "\\"))

    def test_ssl_endpoint_checks_its_files(self) -> None:
        problems = None
        try:
            load(self, '[services.echo]\nendpoint = "ssl:1234:privateKey=/nonexistent.pem"\n')
        except ConfigError as e:
            problems = e.problems
        self.assertIsNotNone(problems)
        self.assertIn("services.echo.endpoint: expected a Twisted endpoint string", problems[0])

    def test_the_shipped_configs_are_valid(self) -> None:
        default = load_config(REPO / "config" / "myservices.toml", environ={})
        self.assertEqual(default.services["echo"].endpoint, "tcp:1234:interface=127.0.0.1")
        self.assertEqual(default.services["udp"].endpoint, "udp:10004:interface=127.0.0.1")
        self.assertTrue(default.database.url.startswith("sqlite:"))
        mysql = load_config(REPO / "config" / "mysql.example.toml", environ={})
        self.assertTrue(mysql.database.url.startswith("mysql://"))


class EnvironmentTests(TestCase):
    TEXT = """
        [database]
        url = "mysql://app:filepass@db.example:3306/app"
        [services.echo]
        endpoint = "tcp:1234"
    """

    def test_named_variables_override_the_file(self) -> None:
        config = load(
            self,
            self.TEXT,
            {"MYSERVICES_DATABASE_URL": "sqlite:///other.db", "MYSERVICES_DATA_DIR": "/srv/data"},
        )
        self.assertEqual(config.database.url, "sqlite:///other.db")
        self.assertEqual(config.daemon.data_dir, Path("/srv/data"))

    def test_generic_variables_reach_any_key_with_toml_values(self) -> None:
        config = load(
            self,
            self.TEXT,
            {
                "MYSERVICES__SERVICES__ECHO__ENDPOINT": "tcp:4321:interface=0.0.0.0",
                "MYSERVICES__SERVICES__ECHO__MAX_CONNECTIONS": "7",
                "MYSERVICES__SERVICES__ECHO__ENABLED": "false",
            },
        )
        echo = config.services["echo"]
        self.assertEqual((echo.endpoint, echo.max_connections, echo.enabled), ("tcp:4321:interface=0.0.0.0", 7, False))

    def test_named_alias_wins_over_generic_form(self) -> None:
        config = load(
            self,
            self.TEXT,
            {"MYSERVICES__DATABASE__URL": "sqlite:///generic.db", "MYSERVICES_DATABASE_URL": "sqlite:///named.db"},
        )
        self.assertEqual(config.database.url, "sqlite:///named.db")

    def test_bad_override_is_reported_as_the_key_it_sets(self) -> None:
        path = write_config(self, self.TEXT)
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ={"MYSERVICES__SERVICES__ECHO__IDLE_TIMEOUT": "never"})
        self.assertIn("services.echo.idle_timeout: expected a number of seconds", caught.exception.problems[0])

    def test_unknown_override_is_reported_as_the_variable_with_the_closest_key(self) -> None:
        path = write_config(self, self.TEXT)
        environ = {
            "MYSERVICES__SERVICES__ECHO__MAX_CONECTIONS": "5",
            "MYSERVICES__SERVCES__ECHO__ENDPOINT": "tcp:1",
            "MYSERVICES__NOTHING_LIKE_IT": "1",
            "MYSERVICES__SERVICES__ECHO__IDLE_TIMEOUT": "never",
        }
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ=environ)
        self.assertEqual(str(caught.exception).splitlines(), [
            "environment variable MYSERVICES__SERVICES__ECHO__MAX_CONECTIONS: no such key services.echo.max_conections"
            " (did you mean MYSERVICES__SERVICES__ECHO__MAX_CONNECTIONS?)",
            "environment variable MYSERVICES__SERVCES__ECHO__ENDPOINT: no such key servces.echo.endpoint"
            " (did you mean MYSERVICES__SERVICES__ECHO__ENDPOINT?)",
            "environment variable MYSERVICES__NOTHING_LIKE_IT: no such key nothing_like_it (see docs/configuration.md)",
            "environment variable MYSERVICES__SERVICES__ECHO__IDLE_TIMEOUT: services.echo.idle_timeout: expected a"
            " number of seconds from 0 to 86400, got string 'never'",
        ])

    def test_overrides_may_add_a_service_of_a_kind_named_by_a_variable(self) -> None:
        config = load(self, self.TEXT, {
            "MYSERVICES__SERVICES__ECHO2__KIND": "echo",
            "MYSERVICES__SERVICES__ECHO2__ENDPOINT": "tcp:0:interface=127.0.0.1",
            "MYSERVICES__SERVICES__ECHO2__MAX_CONNECTIONS": "3",
        })
        self.assertEqual(config.services["echo2"].max_connections, 3)

    def test_password_precedence(self) -> None:
        """The password file wins, then the variable, then database.password, then the URL."""

        def password(environ: dict[str, str], in_table: bool = False) -> str:
            text = self.TEXT
            if in_table:
                text = text.replace('url = "mysql', 'password = "cfgpass"\n        url = "mysql')
            config = load(self, text, environ)
            return parse_database_url(config.database.url, config.daemon.data_dir, config.database.password).password

        secret = Path(self.mktemp())
        secret.write_text("fromfile\n")
        both = {"MYSERVICES_DATABASE_PASSWORD": "envpass", "MYSERVICES_DATABASE_PASSWORD_FILE": str(secret)}
        self.assertEqual(password({}), "filepass")
        self.assertEqual(password({}, in_table=True), "cfgpass")
        self.assertEqual(password({"MYSERVICES_DATABASE_PASSWORD": "envpass"}, in_table=True), "envpass")
        self.assertEqual(password(both, in_table=True), "fromfile")

    def test_password_never_appears_in_reprs_or_safe_url(self) -> None:
        config = load(self, self.TEXT, {"MYSERVICES_DATABASE_PASSWORD": "s3cret-value"})
        url = parse_database_url(config.database.url, config.daemon.data_dir, config.database.password)
        self.assertEqual(url.password, "s3cret-value")
        for text in (repr(config), repr(url), url.safe):
            self.assertNotIn("s3cret-value", text)
            self.assertNotIn("filepass", text)
        self.assertEqual(url.safe, "mysql://app:***@db.example:3306/app")

    def test_unreadable_password_file(self) -> None:
        path = write_config(self, self.TEXT)
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ={"MYSERVICES_DATABASE_PASSWORD_FILE": "/nonexistent/secret"})
        self.assertIn("MYSERVICES_DATABASE_PASSWORD_FILE: cannot read /nonexistent/secret", caught.exception.problems[0])
