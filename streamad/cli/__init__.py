"""The ``streamad`` command line: train, replay, run, evaluate, demo, alerts."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from kafka.errors import KafkaError

from streamad.cli import alerts, benchmark, commands, config, messages, select

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a windowed VAE on a data file and write a model bundle",
        description="Train a windowed VAE on the start of each data file and write a model bundle directory.",
    )
    parser.add_argument("--data", required=True, nargs="+", help="data file(s): CSV, .npy or JSON lines")
    parser.add_argument("--out", required=True, help="model bundle directory to write")
    parser.add_argument("--channels", help="comma-separated channels to model: CSV column names, or positions 0,1,... for .npy (default: all numeric columns)")
    parser.add_argument("--window", type=int, default=32, help="window length L in time steps (default 32)")
    parser.add_argument("--stride", type=int, default=1, help="steps between scored windows when streaming (default 1)")
    parser.add_argument("--latent", type=int, default=4, help="latent dimension d (default 4)")
    parser.add_argument("--architecture", choices=("dense", "conv"), default="dense", help="encoder/decoder type (default dense)")
    parser.add_argument("--hidden", type=int, default=128, help="hidden width or number of filters (default 128)")
    parser.add_argument("--layers", type=int, default=2, help="hidden layers in encoder and decoder (default 2)")
    parser.add_argument("--noise", choices=("channel", "shared"), default="channel", help="noise variance per channel or shared (default channel)")
    parser.add_argument("--epochs", type=int, default=100, help="maximum training epochs (default 100)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per optimisation step (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step size (default 1e-3)")
    parser.add_argument("--patience", type=int, default=10, help="epochs without validation improvement before stopping (default 10)")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="fraction of each file, from its start, used for training (default 1.0; NAB's probationary period is 0.15)")
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="fraction of the training span, from its end, held out for validation (default 0.2)")
    parser.add_argument("--max-fill", type=int, default=3, help="longest NaN run that is forward-filled; longer gaps skip their windows (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device for training (default cpu)")
    parser.set_defaults(handler=commands.train)


def _add_scoring_options(parser) -> None:
    parser.add_argument("--score", default="likelihood", help="score: likelihood (default), reconstruction, elbo or importance")
    parser.add_argument("--level", type=float, default=0.999, help="quantile level of the adaptive threshold (default 0.999)")
    parser.add_argument("--warmup", type=int, default=0, help="scores per series that never alert (default 0)")
    parser.add_argument("--resolve-after", type=int, default=3, help="non-alerting windows that resolve an incident (default 3)")
    parser.add_argument("--resolve-after-s", type=float, default=None, help="seconds of series time after an incident's last alerting window before a non-alerting window resolves it; replaces --resolve-after for timestamped series, ignored for step-indexed ones (default: unset, use --resolve-after)")
    parser.add_argument("--update-every", type=int, default=10, help="alerting windows between two update events of an incident (default 10)")
    parser.add_argument("--update-interval-s", type=float, default=None, help="minimum seconds of series time between two events of an incident before an update; replaces --update-every for timestamped series, ignored for step-indexed ones (default: unset, use --update-every)")
    parser.add_argument("--top-channels", type=int, default=3, help="channels named in an event's attribution; the rest are summed as 'other' (default 3)")
    parser.add_argument("--severity-warning", type=float, default=0.99, help="anomaly probability of the incident's peak score at or above which its severity is warning (default 0.99)")
    parser.add_argument("--severity-critical", type=float, default=0.999, help="anomaly probability of the incident's peak score at or above which its severity is critical (default 0.999)")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=VALUE", help="label added to every event, e.g. team=pumps; NAME is a Prometheus label name (repeatable)")
    parser.add_argument("--annotation", action="append", default=[], metavar="NAME=TEMPLATE", help="annotation added to every event; TEMPLATE may use event fields such as {series}, {severity} or {alert_id} (repeatable)")


def _add_replay(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="score a data file with a model bundle and write scores and alerts",
        description="Replay data files through the streaming engine; write every window's score and the alert events.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--data", required=True, nargs="+", help="data file(s) to replay")
    parser.add_argument("--scores", required=True, help="output CSV: timestamp, series, score, threshold, anomaly_probability, is_alert")
    parser.add_argument("--alerts", required=True, help="output JSON lines of incident events (truncated first)")
    parser.add_argument("--speed", type=float, default=None, help="replay this many times faster than real time (default: as fast as possible)")
    _add_scoring_options(parser)
    # Invalid lines.
    parser.add_argument("--dead-letter", help="JSON lines file (truncated first) for invalid lines of JSON-lines files, CSV rows with an invalid value or timestamp, rows whose timestamp is not after every earlier row of their series, and records the engine rejects (e.g. value_out_of_range), in the format of streamad run's dead letters; without it they are only logged. Either way they are skipped. A CSV row with the wrong number of fields still stops the replay")
    parser.set_defaults(handler=commands.replay)


def _add_run(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="consume a Kafka topic, score every window and emit alerts (the daemon)",
        description=(
            "Consume records from Kafka in a consumer group, score every window and deliver incident events. "
            "Offsets are committed only after the events of a batch are delivered. Stops on SIGINT or SIGTERM "
            "after finishing the batch and committing."
        ),
    )
    parser.add_argument("--config", help="TOML file whose [run] table sets any of these options. STREAMAD_RUN_<OPTION> variables override it, and options given here override both, except that --topic and --webhook add to the configured lists")
    parser.add_argument("--model", required=True, help="model bundle directory, or a directory of bundle versions whose current one is used and reloaded when it changes")
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]")
    parser.add_argument("--topic", required=True, action="append", help="topic to consume (repeat for several)")
    parser.add_argument("--group-id", required=True, help="Kafka consumer group id")
    parser.add_argument("--alerts-topic", help="Kafka topic for incident events")
    parser.add_argument("--alerts", help="JSON lines file for incident events (appended, fsynced per batch)")
    parser.add_argument("--webhook", action="append", default=[], help="URL to POST each incident event to (repeatable)")
    parser.add_argument("--webhook-timeout", type=float, default=5.0, help="seconds to connect, and seconds to wait for each read of the response, per webhook request (default 5)")
    parser.add_argument("--dead-letter", help="JSON lines file for records that cannot be used")
    parser.add_argument("--dead-letter-topic", help="Kafka topic for records that cannot be used")
    parser.add_argument("--stdout", action="store_true", help="also print each incident event on standard output")
    parser.add_argument("--max-poll-records", type=int, default=500, help="records per poll (default 500)")
    parser.add_argument("--max-poll-interval-ms", type=int, default=300_000, help="maximum ms between polls before the consumer leaves the group; one batch must be scored within it (default 300000)")
    parser.add_argument("--session-timeout-ms", type=int, default=10_000, help="ms without heartbeat after which the broker drops the consumer from the group (default 10000)")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=3_000, help="ms between consumer heartbeats; at most a third of --session-timeout-ms (default 3000)")
    parser.add_argument("--scores", help="JSON lines file for every scored window (appended, fsynced before each commit)")
    parser.add_argument("--checkpoint-dir", help="directory for the per-partition state checkpoints; without it a restart loses the open windows and incidents")
    parser.add_argument("--checkpoint-every-records", type=int, default=1000, help="checkpoint and commit after this many records (default 1000)")
    parser.add_argument("--checkpoint-interval-s", type=float, default=5.0, help="checkpoint and commit at least every this many seconds while records arrive (default 5)")
    parser.add_argument("--per-series-threshold", action="store_true", help="one threshold quantile per series instead of one shared by all; makes each series' alerts independent of the other series")
    _add_scoring_options(parser)
    # Webhook delivery through the outbox. These are the defaults of every endpoint; the
    # [webhooks.<name>] tables of the config file override them per endpoint.
    parser.add_argument("--outbox", help="SQLite file where webhook events wait for delivery (created when missing); required with --webhook or [webhooks.*] endpoints")
    parser.add_argument("--outbox-keep-delivered-s", type=float, default=604_800.0, help="seconds that delivered rows stay in the outbox to ignore re-emitted events, 0 keeps them (default 604800, 7 days)")
    parser.add_argument("--webhook-secret-env", help="environment variable with the HMAC-SHA256 signing secret of the webhooks (default: unsigned)")
    parser.add_argument("--webhook-secret-file", help="file with the HMAC-SHA256 signing secret of the webhooks (default: unsigned)")
    parser.add_argument("--webhook-ca-file", help="PEM file of the CA certificates that verify https webhooks (default: the system's)")
    parser.add_argument("--webhook-cert-file", help="PEM client certificate for https webhooks, with its key unless --webhook-key-file is given (default: none)")
    parser.add_argument("--webhook-key-file", help="PEM private key of --webhook-cert-file (default: in the certificate file)")
    parser.add_argument("--webhook-max-attempts", type=int, default=10, help="failed attempts after which an event moves to the outbox's dead letters (default 10)")
    parser.add_argument("--webhook-max-age-s", type=float, default=86_400.0, help="seconds after which an event that fails moves to the dead letters (default 86400)")
    parser.add_argument("--webhook-backoff-base-s", type=float, default=1.0, help="seconds of the first retry's maximum delay, doubled per attempt, with full jitter (default 1)")
    parser.add_argument("--webhook-backoff-max-s", type=float, default=300.0, help="maximum seconds between two attempts (default 300)")
    parser.add_argument("--webhook-rate-limit", type=int, default=0, help="maximum events per minute per endpoint; excess events wait (default 0, no limit)")
    parser.add_argument("--webhook-drain-s", type=float, default=10.0, help="seconds to keep delivering pending events after SIGTERM before exiting (default 10)")
    # Metrics, health check and model reload.
    parser.add_argument("--metrics-port", type=int, default=0, help="TCP port of the HTTP server for /metrics (Prometheus text format 0.0.4) and /healthz (default 0: no server)")
    parser.add_argument("--metrics-address", default="127.0.0.1", help="IP address the /metrics and /healthz server listens on (default 127.0.0.1); an address other than loopback needs --metrics-allow-remote")
    parser.add_argument("--metrics-allow-remote", action="store_true", help="allow a --metrics-address other than loopback, although the endpoints have no authentication")
    parser.add_argument("--health-max-stall-s", type=float, default=None, help="seconds without a poll after which /healthz returns 503 (default: --max-poll-interval-ms in seconds)")
    parser.add_argument("--reload-interval-s", type=float, default=30.0, help="seconds between checks of a --model directory of versions for a new current version, swapped in between batches (default 30; 0 disables reloading)")
    _add_alertmanager_options(parser)
    # Backpressure.
    parser.add_argument("--max-in-flight", type=int, default=10_000, help="maximum number of events accepted but not yet delivered by asynchronous sinks, such as a webhook outbox; above it the daemon pauses its partitions until the backlog falls below half (default 10000)")
    # Checkpoints in Kafka and broker outages.
    parser.add_argument("--checkpoint-topic", help="compacted Kafka topic for the per-partition state checkpoints, created if missing; with --checkpoint-dir too, both are written and the checkpoint with the higher offset is read")
    parser.add_argument("--retry-backoff-max-s", type=float, default=30.0, help="maximum seconds between two retries of a Kafka delivery, commit or checkpoint during a broker outage; the wait starts at 0.5 s and doubles, with jitter (default 30)")
    parser.add_argument("--request-timeout-ms", type=int, default=30_000, help="ms that one Kafka request (fetch, commit, delivery, checkpoint) waits before it fails or is retried, and that the daemon waits for the broker at start (default 30000)")
    parser.set_defaults(handler=commands.run)
    return parser


def _add_alertmanager_options(parser) -> None:
    parser.add_argument("--alertmanager", help="base URL of a Prometheus Alertmanager to push incidents to (POST <URL>/api/v2/alerts), best effort with retries, e.g. http://alertmanager:9093")
    parser.add_argument("--alertmanager-resend-s", type=float, default=60.0, help="seconds between two sends of every open incident to Alertmanager; keep it below Alertmanager's resolve_timeout (default 60)")
    parser.add_argument("--alertmanager-timeout-s", type=float, default=5.0, help="seconds per Alertmanager request (default 5)")


def _add_config(subparsers) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check a TOML config file of streamad run",
        description="Check a TOML config file of streamad run together with the STREAMAD_RUN_* environment variables.",
    )
    actions = parser.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="validate the options, the environment overrides and the model bundle",
        description="Validate a config file: known options of the right types, every required option set, an alert destination, and a model bundle that loads. Exits 0 when valid, 2 with one line naming the problem otherwise.",
    )
    check.add_argument("config", help="TOML file with a [run] table")
    check.set_defaults(handler=config.check)


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a labelled data file and print ROC-AUC, PR-AUC and event-level F1 per score",
        description="Replay a labelled data file and print ROC-AUC, PR-AUC, best point-wise F1 and event-level precision, recall and F1 for each score.",
    )
    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--data", required=True, help="labelled data file")
    parser.add_argument("--labels", required=True, help="NAB combined_windows.json or SMAP/MSL labeled_anomalies.csv")
    parser.add_argument("--score", default="likelihood,reconstruction,elbo,importance", help="comma-separated score names (default: all four)")
    parser.add_argument("--level", type=float, default=0.999, help="quantile level of the adaptive threshold (default 0.999)")
    parser.add_argument("--skip-fraction", type=float, default=0.0, help="fraction of the file, from its start, left out of the metrics, e.g. 0.15 for NAB's probationary period (default 0)")
    parser.add_argument("--json", dest="json_out", help="also write the metrics to this JSON file")
    parser.set_defaults(handler=commands.evaluate)


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train on river's water-flow series, stream the rest through Kafka and print alerts",
        description=(
            "Train on the first part of river's bundled water-flow series, start a local Tansu broker unless "
            "--bootstrap-servers is given, produce the rest of the series to a topic, run the daemon on it and "
            "print each alert as it is emitted."
        ),
    )
    parser.add_argument("--bootstrap-servers", help="use this Kafka instead of starting a local Tansu broker")
    parser.add_argument("--out", default=None, help="directory for the model bundle and outputs (default: a temporary directory)")
    parser.add_argument("--train-fraction", type=float, default=0.55, help="fraction of the series used for training (default 0.55)")
    parser.add_argument("--epochs", type=int, default=300, help="maximum training epochs (default 300)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the daemon to consume the topic (default 300)")
    parser.set_defaults(handler=commands.demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamad",
        description="Streaming anomaly detection for time series with a likelihood score from windowed VAEs.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default INFO; kafka-python's own logs start at WARNING unless DEBUG)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_replay(subparsers)
    parser.run_parser = _add_run(subparsers)
    _add_evaluate(subparsers)
    _add_demo(subparsers)
    select.add_parser(subparsers)
    benchmark.add_parser(subparsers)
    _add_config(subparsers)
    alerts.add_parser(subparsers)
    parser.command_parsers = subparsers.choices
    return parser


def _command_and_config(argv: list[str]) -> tuple[str | None, str | None]:
    """Return the sub-command of ``argv`` and the value of its ``--config`` option, if any."""
    command = None
    config_path = None
    tokens = iter(argv)
    for token in tokens:
        if command is None:
            if token == "--log-level":
                next(tokens, None)
            elif not token.startswith("-"):
                command = token
            continue
        if token == "--config":
            config_path = next(tokens, None)
        elif token.startswith("--config="):
            config_path = token.split("=", 1)[1]
    return command, config_path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    command, config_path = _command_and_config(argv)
    if command == "run":
        # The config file and the environment become the defaults, so the command line overrides them.
        try:
            config.apply_run_defaults(parser.run_parser, config.load_run_config(config_path, parser.run_parser))
        except config.ConfigError as error:
            print(f"streamad run: error: {error}", file=sys.stderr)
            return 2
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    if args.log_level != "DEBUG":
        logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLevelName(args.log_level)))
    try:
        return int(args.handler(args) or 0)
    except BrokenPipeError:
        return _exit_on_broken_pipe()
    except (ValueError, OSError) as error:
        # Invalid options and missing or malformed files and bundles: one line for the user,
        # the traceback only at DEBUG level.
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        message = messages.name_options(str(error), parser.command_parsers.get(args.command))
        print(f"streamad {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (RuntimeError, KafkaError) as error:
        # Failures of the outside world (Kafka, webhooks, the local broker) and of torch.
        # Offsets of undelivered results are not committed, so a restart resumes from the
        # last committed batch.
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        print(f"streamad {args.command}: error: {error}", file=sys.stderr)
        return 1



def _exit_on_broken_pipe() -> int:
    """Exit quietly when the reader of stdout went away, e.g. ``streamad alerts list | head``.

    Standard output is pointed at /dev/null first, so that the interpreter's final flush
    does not raise BrokenPipeError again (see the Python docs on SIGPIPE, module signal).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor, e.g. under pytest's capture
    return 1


if __name__ == "__main__":
    sys.exit(main())
