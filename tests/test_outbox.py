"""The SQLite outbox, the `streamad alerts` command and the [webhooks.<name>] config tables."""

import sqlite3

import pytest

from connectors.outbox import Outbox
from shared_data import MACHINE_TEMPERATURE, require
from streamad.bundle import save_bundle
from streamad.cli import build_parser, main
from streamad.cli.alerts import parse_duration
from streamad.cli.commands import UsageError
from streamad.cli.config import ConfigError, apply_run_defaults, check_webhooks, load_run_config
from streamad.data import load_series
from streamad.training import TrainConfig, train_bundle


def _event(alert_id="a1", sequence=1, series="pump-1"):
    return {"alert_id": alert_id, "sequence": sequence, "status": "firing", "series": series}


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def test_outbox_uses_wal_and_full_sync(outbox):
    connection = outbox._connection
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # 2 is FULL.
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_outbox_ignores_repeated_event(outbox):
    assert outbox.add([("hook", _event()), ("hook", _event(sequence=2))]) == 2
    assert outbox.add([("hook", _event()), ("hook", _event(sequence=3))]) == 1
    assert [(row.alert_id, row.sequence) for row in outbox.pending("hook")] == [("a1", 1), ("a1", 2), ("a1", 3)]


def test_outbox_keeps_one_row_per_endpoint(outbox):
    assert outbox.add([("one", _event()), ("two", _event())]) == 2
    assert outbox.backlog() == 2
    assert outbox.backlog("one") == 1


def test_outbox_rows_survive_reopen(tmp_path):
    path = tmp_path / "outbox.db"
    first = Outbox(path)
    first.add([("hook", _event())])
    # A second connection, as after a restart, reads the committed row.
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT alert_id, sequence FROM outbox").fetchall() == [("a1", 1)]
    first.close()
    assert Outbox(path).backlog() == 1


def test_outbox_ignores_event_that_is_dead(outbox):
    outbox.add([("hook", _event())])
    row = outbox.pending("hook")[0]
    outbox.move_to_dead([row.id], "HTTP 400")
    assert outbox.add([("hook", _event())]) == 0
    assert outbox.backlog() == 0
    assert outbox.counts() == {"pending": 0, "delivered": 0, "dead": 1}


def test_outbox_delivered_rows_leave_backlog(outbox):
    outbox.add([("hook", _event()), ("hook", _event(sequence=2))])
    outbox.mark_delivered([outbox.pending("hook")[0].id])
    assert outbox.backlog() == 1
    assert outbox.add([("hook", _event())]) == 0


def test_outbox_failed_attempt_counts(outbox):
    outbox.add([("hook", _event())])
    row = outbox.pending("hook")[0]
    outbox.mark_failed([row.id], "HTTP 503", next_attempt_at=123.0)
    row = outbox.pending("hook")[0]
    assert row.attempts == 1
    assert row.last_error == "HTTP 503"
    assert row.next_attempt_at == 123.0


def test_outbox_retry_keeps_place_in_order(outbox):
    outbox.add([("hook", _event(sequence=1))])
    first = outbox.pending("hook")[0]
    outbox.move_to_dead([first.id], "timed out")
    outbox.add([("hook", _event(sequence=2))])
    dead = outbox.rows("dead")
    assert [(row.id, row.attempts, row.last_error) for row in dead] == [(first.id, 1, "timed out")]
    assert outbox.retry([first.id]) == 1
    pending = outbox.pending("hook")
    assert [row.sequence for row in pending] == [1, 2]
    assert pending[0].attempts == 0
    assert outbox.rows("dead") == []


def test_outbox_retry_all(outbox):
    outbox.add([("hook", _event(sequence=n)) for n in (1, 2, 3)])
    outbox.move_to_dead([row.id for row in outbox.pending("hook")], "HTTP 404")
    assert outbox.retry(None) == 3
    assert outbox.backlog() == 3


def test_outbox_purge_never_deletes_pending(outbox):
    outbox.add([("hook", _event(sequence=n)) for n in (1, 2, 3)])
    rows = outbox.pending("hook")
    outbox.mark_delivered([rows[0].id], now=100.0)
    outbox.move_to_dead([rows[1].id], "HTTP 404", now=100.0)
    assert outbox.purge(delivered=True, dead=True, older_than_s=50, now=120.0) == {"delivered": 0, "dead": 0}
    assert outbox.purge(delivered=True, dead=True, older_than_s=50, now=200.0) == {"delivered": 1, "dead": 1}
    assert outbox.counts() == {"pending": 1, "delivered": 0, "dead": 0}


def test_outbox_rejects_event_without_ids(outbox):
    with pytest.raises(ValueError, match="no 'sequence'"):
        outbox.add([("hook", {"alert_id": "x"})])


def test_outbox_missing_directory(tmp_path):
    with pytest.raises(RuntimeError, match="not found"):
        Outbox(tmp_path / "missing" / "outbox.db")


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("1.5h", 5400)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1d", "1y"])
def test_parse_duration_rejects_invalid(text):
    with pytest.raises(UsageError, match="is invalid"):
        parse_duration(text)


def _outbox_with_states(path):
    box = Outbox(path)
    box.add([("hook", _event(sequence=n)) for n in (1, 2, 3, 4)])
    rows = box.pending("hook")
    box.mark_delivered([rows[0].id])
    box.move_to_dead([rows[1].id, rows[2].id], "HTTP 410 Gone")
    box.close()
    return rows


def test_alerts_list_prints_each_state(tmp_path, capsys):
    path = tmp_path / "outbox.db"
    rows = _outbox_with_states(path)
    assert main(["alerts", "list", "--outbox", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("id\tendpoint")
    assert lines[1].startswith(f"{rows[3].id}\thook\ta1\t4\t0\t")
    assert lines[-1] == "1 pending, 1 delivered, 2 dead"

    assert main(["alerts", "list", "--outbox", str(path), "--dead"]) == 0
    dead = capsys.readouterr().out.splitlines()[1:-1]
    assert [line.split("\t")[0] for line in dead] == [str(rows[1].id), str(rows[2].id)]
    assert all(line.endswith("HTTP 410 Gone") for line in dead)


def test_alerts_retry_by_id_and_all(tmp_path, capsys):
    path = tmp_path / "outbox.db"
    rows = _outbox_with_states(path)
    assert main(["alerts", "retry", "--outbox", str(path), "--id", str(rows[1].id)]) == 0
    assert "moved 1 dead letter(s)" in capsys.readouterr().out
    assert main(["alerts", "retry", "--outbox", str(path), "--id", "9999"]) == 1
    assert "not dead letters" in capsys.readouterr().out
    assert main(["alerts", "retry", "--outbox", str(path), "--all"]) == 0
    assert "moved 1 dead letter(s)" in capsys.readouterr().out
    box = Outbox(path)
    assert box.counts() == {"pending": 3, "delivered": 1, "dead": 0}
    box.close()


def test_alerts_purge(tmp_path, capsys):
    path = tmp_path / "outbox.db"
    _outbox_with_states(path)
    assert main(["alerts", "purge", "--outbox", str(path), "--delivered", "--dead", "--older-than", "1h"]) == 0
    assert "purged 0 delivered and 0 dead" in capsys.readouterr().out
    assert main(["alerts", "purge", "--outbox", str(path), "--dead"]) == 0
    assert "purged 0 delivered and 2 dead" in capsys.readouterr().out
    box = Outbox(path)
    assert box.counts() == {"pending": 1, "delivered": 1, "dead": 0}
    box.close()


def test_alerts_purge_needs_state(tmp_path, capsys):
    path = tmp_path / "outbox.db"
    _outbox_with_states(path)
    assert main(["alerts", "purge", "--outbox", str(path)]) == 2
    assert "needs --delivered, --dead or both" in capsys.readouterr().err


def test_alerts_missing_outbox(tmp_path, capsys):
    assert main(["alerts", "list", "--outbox", str(tmp_path / "none.db")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def _run_args(tmp_path, toml, argv=(), environ=None):
    path = tmp_path / "run.toml"
    path.write_text(toml)
    parser = build_parser()
    apply_run_defaults(parser.run_parser, load_run_config(path, parser.run_parser, environ=environ or {}))
    return parser.parse_args(["run", "--config", str(path), *argv])


RUN = """
[run]
model = "m"
bootstrap_servers = "127.0.0.1:9092"
topic = ["metrics"]
group_id = "g"
outbox = "outbox.db"
webhook_timeout = 3
webhook_max_attempts = 4
webhook_secret_env = "STREAMAD_TEST_SECRET"
"""


def test_webhook_tables_override_run_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "from-env")
    (tmp_path / "secret").write_text("from-file\n")
    args = _run_args(
        tmp_path,
        RUN
        + f"""
[webhooks.pager]
url = "http://127.0.0.1:9/pager"
read_timeout_s = 7
secret_file = "{tmp_path / 'secret'}"
rate_limit_per_minute = 30

[webhooks.am]
url = "http://127.0.0.1:9/am"
format = "alertmanager"
group_by = "label:team"
group_wait_s = 2
""",
        ["--webhook", "http://127.0.0.1:9/plain"],
    )
    endpoints = {endpoint.name: endpoint for endpoint in check_webhooks(args)}
    assert sorted(endpoints) == ["am", "http://127.0.0.1:9/plain", "pager"]
    plain = endpoints["http://127.0.0.1:9/plain"]
    assert (plain.connect_timeout_s, plain.read_timeout_s, plain.max_attempts) == (3.0, 3.0, 4)
    assert plain.secret == "from-env"
    pager = endpoints["pager"]
    assert (pager.connect_timeout_s, pager.read_timeout_s) == (3.0, 7.0)
    assert pager.secret == "from-file"
    assert pager.rate_limit_per_minute == 30
    am = endpoints["am"]
    assert (am.format, am.group_by, am.group_wait_s) == ("alertmanager", "label:team", 2.0)
    assert am.group_key({"labels": {"team": "ops"}}) == "ops"
    assert "from-env" not in repr(plain)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('format = "xml"', "format 'xml' is unknown"),
        ('timeout_s = "fast"', "timeout_s = 'fast' is invalid; use a number"),
        ("retries = 3", "unknown key 'retries'"),
        ('group_by = "series"', "group_by needs format 'alertmanager'"),
        ("max_attempts = 0", "max_attempts=0 is invalid"),
        ('secret_env = "STREAMAD_TEST_UNSET"', "STREAMAD_TEST_UNSET for the signing secret is unset"),
        ('ca_file = "ca.pem"', "need an https:// url"),
    ],
)
def test_webhook_table_rejects_invalid_key(tmp_path, monkeypatch, table, message):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "x")
    monkeypatch.delenv("STREAMAD_TEST_UNSET", raising=False)
    args = _run_args(tmp_path, RUN + f'\n[webhooks.pager]\nurl = "http://127.0.0.1:9/p"\n{table}\n')
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_webhooks(args)


def test_webhook_table_needs_url(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "x")
    args = _run_args(tmp_path, RUN + '\n[webhooks.pager]\nformat = "generic"\n')
    with pytest.raises(ConfigError, match=r"\[webhooks.pager\] has no url"):
        check_webhooks(args)


def test_webhook_needs_outbox(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "x")
    args = _run_args(tmp_path, RUN.replace('outbox = "outbox.db"\n', ""), ["--webhook", "http://127.0.0.1:9/x"])
    with pytest.raises(ConfigError, match="need --outbox PATH"):
        check_webhooks(args)


def test_config_check_reports_missing_outbox(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "x")
    path = tmp_path / "run.toml"
    path.write_text(RUN.replace('outbox = "outbox.db"\n', "") + '\n[webhooks.pager]\nurl = "http://127.0.0.1:9/p"\n')
    assert main(["config", "check", str(path)]) == 2
    error = capsys.readouterr().err
    assert "need --outbox PATH" in error
    assert error.count("\n") == 1


def test_config_check_accepts_webhook_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAMAD_TEST_SECRET", "x")
    series = load_series(require(MACHINE_TEMPERATURE), out_of_order="drop").slice(0, 500)
    # One epoch: the check only needs a bundle that loads.
    bundle = train_bundle([series], TrainConfig(window=16, latent=2, hidden=8, epochs=1, seed=0), progress=False)
    save_bundle(bundle, tmp_path / "model")
    path = tmp_path / "run.toml"
    text = RUN.replace('model = "m"', f'model = "{tmp_path / "model"}"')
    path.write_text(text + '\n[webhooks.pager]\nurl = "http://127.0.0.1:9/p"\n\n[webhooks.other]\nurl = "http://127.0.0.1:9/o"\n')
    assert main(["config", "check", str(path)]) == 0
    assert "2 webhook endpoint(s)" in capsys.readouterr().out
