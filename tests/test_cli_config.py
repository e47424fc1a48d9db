"""TOML config files and STREAMAD_RUN_* overrides of `streamad run`, and `streamad config check`."""

import pytest

from shared_data import MACHINE_TEMPERATURE, require
from streamad.bundle import save_bundle
from streamad.cli import build_parser, main
from streamad.cli.config import ConfigError, apply_run_defaults, load_run_config
from streamad.data import load_series
from streamad.training import TrainConfig, train_bundle


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    series = load_series(require(MACHINE_TEMPERATURE), out_of_order="drop").slice(0, 1000)
    # One epoch: these tests only need a bundle that loads.
    bundle = train_bundle([series], TrainConfig(window=16, latent=2, hidden=8, epochs=1, seed=0), progress=False)
    directory = tmp_path_factory.mktemp("model")
    save_bundle(bundle, directory)
    return directory


def _write(path, text):
    path.write_text(text)
    return path


def _valid_config(tmp_path, model_dir):
    return _write(
        tmp_path / "run.toml",
        f"""
[run]
model = "{model_dir}"
bootstrap_servers = "127.0.0.1:9092"
topic = ["metrics"]
group-id = "streamad"
alerts = "{tmp_path / 'alerts.jsonl'}"
checkpoint_dir = "{tmp_path / 'checkpoints'}"
checkpoint_every_records = 500
checkpoint_interval_s = 2
per_series_threshold = true
""",
    )


def _run_args(argv, environ=None):
    parser = build_parser()
    config_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    apply_run_defaults(parser.run_parser, load_run_config(config_path, parser.run_parser, environ=environ or {}))
    return parser.parse_args(["run", *argv])


def test_config_file_sets_run_options(tmp_path, model_dir):
    path = _valid_config(tmp_path, model_dir)
    args = _run_args(["--config", str(path)])
    assert args.model == str(model_dir)
    assert args.group_id == "streamad"
    assert args.topic == ["metrics"]
    assert args.checkpoint_every_records == 500
    assert args.checkpoint_interval_s == 2.0
    assert args.per_series_threshold is True
    assert args.max_poll_records == 500


def test_environment_overrides_config_file(tmp_path, model_dir):
    path = _valid_config(tmp_path, model_dir)
    environ = {"STREAMAD_RUN_GROUP_ID": "from-env", "STREAMAD_RUN_MAX_POLL_RECORDS": "50", "STREAMAD_RUN_PER_SERIES_THRESHOLD": "false"}
    args = _run_args(["--config", str(path)], environ)
    assert args.group_id == "from-env"
    assert args.max_poll_records == 50
    assert args.per_series_threshold is False


def test_command_line_overrides_environment(tmp_path, model_dir):
    path = _valid_config(tmp_path, model_dir)
    args = _run_args(["--config", str(path), "--group-id", "from-cli"], {"STREAMAD_RUN_GROUP_ID": "from-env"})
    assert args.group_id == "from-cli"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_poll_records = 'many'", "max_poll_records = 'many' is invalid; use an integer"),
        ("max_poll_records = true", "use an integer"),
        ("level = 'high'", "use a number"),
        ("per_series_threshold = 1", "use true or false"),
        ("topic = [1]", "use a string or a list of strings"),
        ("group_id = 7", "use a string"),
        ("no_such_option = 1", "unknown option 'no_such_option'"),
    ],
)
def test_config_file_rejects_invalid_value(tmp_path, line, message):
    path = _write(tmp_path / "bad.toml", f"[run]\n{line}\n")
    parser = build_parser()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_run_config(path, parser.run_parser, environ={})


def test_config_file_rejects_other_table(tmp_path):
    path = _write(tmp_path / "bad.toml", "[daemon]\nmodel = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) \['daemon'\]"):
        load_run_config(path, build_parser().run_parser, environ={})


def test_config_file_rejects_invalid_toml(tmp_path):
    path = _write(tmp_path / "bad.toml", "[run\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_run_config(path, build_parser().run_parser, environ={})


def test_environment_rejects_unknown_option():
    with pytest.raises(ConfigError, match="STREAMAD_RUN_NOPE sets no option"):
        load_run_config(None, build_parser().run_parser, environ={"STREAMAD_RUN_NOPE": "1"})


def test_environment_rejects_invalid_number():
    with pytest.raises(ConfigError, match="STREAMAD_RUN_LEVEL='high' is invalid; use a number"):
        load_run_config(None, build_parser().run_parser, environ={"STREAMAD_RUN_LEVEL": "high"})


def test_config_check_accepts_valid_file(tmp_path, model_dir, capsys):
    path = _valid_config(tmp_path, model_dir)
    assert main(["config", "check", str(path)]) == 0
    assert f"config {path} is valid" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("remove", "extra", "message"),
    [
        ("group-id", "", "does not set --group-id"),
        ("alerts", "", "has no alert destination"),
        ("", "checkpoint_every_records = 0", "--checkpoint-every-records 0 is invalid"),
        ("", "heartbeat_interval_ms = 20000", "heartbeat_interval_ms=20000 is more than a third of"),
        ("", "score = 'nope'", "--score 'nope' is unknown"),
        ("", "max_in_flight = 0", "--max-in-flight 0 is invalid"),
        ("", "metrics_address = '0.0.0.0'", "--metrics-allow-remote"),
        ("", "metrics_port = 70000", "--metrics-port 70000 is invalid"),
        ("", "reload_interval_s = -1", "--reload-interval-s -1"),
        ("", "alertmanager = 'alertmanager:9093'", "--alertmanager 'alertmanager:9093' is invalid"),
    ],
)
def test_config_check_rejects_invalid_run(tmp_path, model_dir, capsys, remove, extra, message):
    text = _valid_config(tmp_path, model_dir).read_text()
    lines = [line for line in text.splitlines() if not (remove and line.startswith(remove))]
    if extra:
        lines = [line for line in lines if not line.startswith(extra.split(" =")[0])] + [extra]
    path = _write(tmp_path / "run.toml", "\n".join(lines) + "\n")
    assert main(["config", "check", str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert error.count("\n") == 1


def test_config_check_rejects_missing_model(tmp_path, model_dir, capsys):
    text = _valid_config(tmp_path, model_dir).read_text().replace(str(model_dir), str(tmp_path / "none"))
    path = _write(tmp_path / "run.toml", text)
    assert main(["config", "check", str(path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_reports_config_error_in_one_line(tmp_path, capsys):
    path = _write(tmp_path / "bad.toml", "[run]\nmax_poll_records = 'many'\n")
    assert main(["run", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("streamad run: error: config file")
    assert error.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--config", "a.toml"], ("run", "a.toml")),
        (["--log-level", "DEBUG", "run", "--config=a.toml", "--topic", "t"], ("run", "a.toml")),
        (["run", "--topic", "t"], ("run", None)),
        (["replay", "--model", "m"], ("replay", None)),
    ],
)
def test_command_line_config_option_found(argv, expected):
    from streamad.cli import _command_and_config

    assert _command_and_config(argv) == expected
