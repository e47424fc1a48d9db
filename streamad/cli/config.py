"""TOML config files and environment overrides for ``streamad run``, and ``streamad config check``.

A config file has one table, ``[run]``, whose keys are the long options of ``streamad run``
with ``_`` or ``-`` between words, e.g. ``bootstrap_servers = "kafka:9092"`` and
``topic = ["metrics"]``. An environment variable ``STREAMAD_RUN_<KEY>`` in upper case, e.g.
``STREAMAD_RUN_GROUP_ID``, overrides the file, and an option on the command line overrides
both, except ``--topic`` and ``--webhook``, whose command-line values are added to the list
from the file or the environment. In the environment a list is comma-separated and a flag is
``true``, ``yes``, ``on`` or ``1`` to set it, and ``false``, ``no``, ``off`` or ``0`` to clear
it, in any case.

Webhook endpoints with their own settings are tables ``[webhooks.<name>]`` beside ``[run]``,
e.g. ``url = "https://alerts.example/hook"`` and ``format = "alertmanager"``; the keys are
listed in ``ENDPOINT_KEYS``. A key that a table leaves out takes the value of the matching
``webhook_*`` option of ``[run]``.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "STREAMAD_RUN_"
TABLE = "run"
WEBHOOKS_TABLE = "webhooks"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A config file or environment value is invalid; the message names it and the fix."""


def read_toml(path: str | Path) -> dict:
    """Return the parsed TOML file at ``path``; raise ConfigError when it is missing or invalid."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing TOML file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory; pass a TOML file, e.g. {str(path / 'streamad.toml')!r}") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror}; check its permissions") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {error}") from None


def run_options(run_parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Return the options of the ``run`` parser that a config file may set, keyed by destination."""
    return {
        action.dest: action
        for action in run_parser._actions  # argparse has no public list of a parser's actions
        if action.option_strings and action.dest not in ("help", "config")
    }


def load_run_config(path: str | Path | None, run_parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the ``run`` values of the config file at ``path`` (or none) merged with the environment overrides.

    Values are checked against the type of their option. Raises ConfigError on an unknown
    key, a value of the wrong type or an environment value that does not parse.
    """
    options = run_options(run_parser)
    values: dict[str, Any] = {}
    if path is not None:
        document = read_toml(path)
        unknown_tables = sorted(set(document) - {TABLE, WEBHOOKS_TABLE})
        if unknown_tables:
            raise ConfigError(
                f"config file {str(path)!r} has unknown table(s) {unknown_tables}; put the options in [{TABLE}] "
                f"and webhook endpoints in [{WEBHOOKS_TABLE}.<name>]"
            )
        table = document.get(TABLE, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {str(path)!r}: {TABLE!r} must be a table, e.g. [{TABLE}]")
        spellings: dict[str, str] = {}
        for key, value in table.items():
            dest = key.replace("-", "_")
            action = options.get(dest)
            if action is None:
                raise ConfigError(
                    f"config file {str(path)!r}: unknown option {key!r} in [{TABLE}]; use one of {', '.join(sorted(options))}"
                )
            if dest in spellings:
                raise ConfigError(
                    f"config file {str(path)!r}: [{TABLE}] sets {dest} twice, as {spellings[dest]!r} and {key!r}; keep one of them"
                )
            spellings[dest] = key
            values[dest] = _check_value(action, value, f"config file {str(path)!r}: {key}")

    environ = os.environ if environ is None else environ
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dest = name[len(ENV_PREFIX) :].lower()
        action = options.get(dest)
        if action is None:
            raise ConfigError(
                f"environment variable {name} sets no option of streamad run; use {ENV_PREFIX}<OPTION>, "
                f"e.g. {ENV_PREFIX}GROUP_ID, or unset it"
            )
        values[dest] = _parse_text(action, text, f"environment variable {name}")
    return values


def apply_run_defaults(run_parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> None:
    """Make ``values`` the defaults of the ``run`` parser; an option they set is no longer required."""
    options = run_options(run_parser)
    for dest, value in values.items():
        options[dest].required = False
    run_parser.set_defaults(**values)


def _check_value(action: argparse.Action, value: Any, label: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ConfigError(f"{label} = {value!r} is invalid; use true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
            raise ConfigError(f"{label} = {value!r} is invalid; use a string or a list of strings")
        return list(items)
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{label} = {value!r} is invalid; use an integer")
        return value
    if action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} = {value!r} is invalid; use a number")
        if not math.isfinite(value):
            raise ConfigError(f"{label} = {value!r} is invalid; use a finite number")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{label} = {value!r} is invalid; use a string")
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{label} = {value!r} is invalid; use one of {', '.join(action.choices)}")
    return value


def _parse_text(action: argparse.Action, text: str, label: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{label}={text!r} is invalid; use true or false ({', '.join(_TRUE + _FALSE)} are accepted)")
    if isinstance(action, argparse._AppendAction):
        return _check_value(action, [item.strip() for item in text.split(",") if item.strip()], label)
    if action.type in (int, float):
        try:
            number = action.type(text)
        except ValueError:
            kind = "an integer" if action.type is int else "a number"
            raise ConfigError(f"{label}={text!r} is invalid; use {kind}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{label}={text!r} is invalid; use a finite number")
        return number
    return _check_value(action, text, label)


def check(args) -> int:
    """Check a ``streamad run`` config: the file, the environment overrides, the options and the model bundle."""
    from streamad.bundle import load_bundle
    from streamad.cli import build_parser
    from streamad.cli.commands import _engine_config, check_finite_options, check_output_paths, check_run_options
    from streamad.cli.daemon import check_checkpoint_options, source_config
    from streamad.engine import StreamEngine

    parser = build_parser()
    run_parser = parser.run_parser
    values = load_run_config(args.config, run_parser)
    apply_run_defaults(run_parser, values)
    missing = [
        "--" + dest.replace("_", "-") for dest, action in run_options(run_parser).items() if action.required
    ]
    if missing:
        raise ConfigError(
            f"config {str(args.config)!r} does not set {', '.join(missing)}; add them to [{TABLE}] or pass them to streamad run"
        )
    run_args = run_parser.parse_args([])
    run_args.config = args.config
    check_finite_options(run_args)
    check_output_paths(run_args)
    endpoints = check_webhooks(run_args)
    if not (run_args.alerts_topic or run_args.alerts or endpoints or run_args.stdout or run_args.alertmanager):
        raise ConfigError(
            f"config {str(args.config)!r} has no alert destination; set alerts_topic, alerts, webhook, alertmanager "
            f"or stdout, or add a [{WEBHOOKS_TABLE}.<name>] table"
        )
    check_checkpoint_options(run_args)
    check_run_options(run_args)
    source_config(run_args)
    bundle = load_bundle(run_args.model)
    StreamEngine(bundle, _engine_config(run_args, has_clock=True))
    print(
        f"config {args.config} is valid: topics {','.join(run_args.topic)} as group {run_args.group_id}, "
        f"model {bundle.version}, {len(values)} options set by the file and the environment, "
        f"{len(endpoints)} webhook endpoint(s)"
    )
    return 0


# Keys of a [webhooks.<name>] table: the TOML type each takes, and the ``run`` option whose
# value it takes when the table leaves it out.
ENDPOINT_KEYS: dict[str, tuple[type | tuple, str | None]] = {
    "url": (str, None),
    "format": (str, None),
    "timeout_s": ((int, float), "webhook_timeout"),
    "connect_timeout_s": ((int, float), None),
    "read_timeout_s": ((int, float), None),
    "secret_env": (str, "webhook_secret_env"),
    "secret_file": (str, "webhook_secret_file"),
    "ca_file": (str, "webhook_ca_file"),
    "cert_file": (str, "webhook_cert_file"),
    "key_file": (str, "webhook_key_file"),
    "rate_limit_per_minute": (int, "webhook_rate_limit"),
    "group_by": (str, None),
    "external_url": (str, None),
    "group_separator": (str, None),
    "group_wait_s": ((int, float), None),
    "max_group_size": (int, None),
    "max_attempts": (int, "webhook_max_attempts"),
    "max_age_s": ((int, float), "webhook_max_age_s"),
    "backoff_base_s": ((int, float), "webhook_backoff_base_s"),
    "backoff_max_s": ((int, float), "webhook_backoff_max_s"),
    "headers": (dict, None),
}


def read_webhook_tables(path: str | Path | None) -> dict[str, dict]:
    """Return the ``[webhooks.<name>]`` tables of the config file at ``path``, keyed by name, with checked keys and types."""
    if path is None:
        return {}
    tables = read_toml(path).get(WEBHOOKS_TABLE, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"config file {str(path)!r}: {WEBHOOKS_TABLE!r} must contain tables, e.g. [{WEBHOOKS_TABLE}.pager]")
    checked: dict[str, dict] = {}
    for name, table in tables.items():
        label = f"config file {str(path)!r}: [{WEBHOOKS_TABLE}.{name}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{label} must be a table with at least url = \"https://...\"")
        values = {}
        for key, value in table.items():
            normalised = key.replace("-", "_")
            if normalised not in ENDPOINT_KEYS:
                raise ConfigError(f"{label}: unknown key {key!r}; use one of {', '.join(ENDPOINT_KEYS)}")
            expected = ENDPOINT_KEYS[normalised][0]
            if isinstance(value, bool) or not isinstance(value, expected):
                kind = {str: "a string", int: "an integer", dict: "a table of strings"}.get(expected, "a number")
                raise ConfigError(f"{label}: {key} = {value!r} is invalid; use {kind}")
            if normalised == "headers" and not all(isinstance(item, str) for item in value.values()):
                raise ConfigError(f"{label}: headers must map header names to strings")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{label}: {key} = {value!r} is invalid; use a finite number")
            values[normalised] = value
        if "url" not in values:
            raise ConfigError(f"{label} has no url; add url = \"https://...\"")
        checked[name] = values
    return checked


def webhook_endpoint_settings(name: str, table: Mapping[str, Any], run_args) -> dict[str, Any]:
    """Return the WebhookEndpoint keyword arguments of one endpoint: its table over the ``run`` options.

    ``table`` may be empty but for ``url``, as for a ``--webhook URL``. The signing secret is
    read here, from the environment variable or the file that the settings name.
    """
    from connectors.webhook import read_secret

    settings: dict[str, Any] = {}
    for key, (_, option) in ENDPOINT_KEYS.items():
        if option is not None and getattr(run_args, option, None) is not None:
            settings[key] = getattr(run_args, option)
    # The table's own secret and certificate replace the defaults together, so that a table with
    # secret_file does not also inherit --webhook-secret-env.
    if "secret_env" in table or "secret_file" in table:
        settings.pop("secret_env", None)
        settings.pop("secret_file", None)
    if "cert_file" in table:
        settings.pop("key_file", None)
    settings.update(table)
    timeout = settings.pop("timeout_s", 5.0)
    settings.setdefault("connect_timeout_s", timeout)
    settings.setdefault("read_timeout_s", timeout)
    label = f"webhook endpoint {name!r}"
    settings["secret"] = read_secret(settings.pop("secret_env", None), settings.pop("secret_file", None), label)
    for key in ("connect_timeout_s", "read_timeout_s", "group_wait_s", "max_age_s", "backoff_base_s", "backoff_max_s"):
        if key in settings:
            settings[key] = float(settings[key])
    return {"name": name, **settings}


def check_webhooks(run_args) -> list:
    """Return the WebhookEndpoints of ``--webhook`` and the config file; raise ConfigError on an invalid one or a missing --outbox."""
    from connectors.webhook import WebhookEndpoint

    endpoints = []
    tables = read_webhook_tables(getattr(run_args, "config", None))
    named = [(url, {"url": url}) for url in run_args.webhook] + list(tables.items())
    names = set()
    for name, table in named:
        if name in names:
            raise ConfigError(f"webhook endpoint {name!r} is configured twice; remove one, or name the tables differently")
        names.add(name)
        try:
            endpoints.append(WebhookEndpoint(**webhook_endpoint_settings(name, table, run_args)))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if endpoints and not getattr(run_args, "outbox", None):
        raise ConfigError(
            "webhook endpoints need --outbox PATH (config key outbox), the SQLite file where events wait for "
            "delivery, e.g. /var/lib/streamad/outbox.db"
        )
    return endpoints
