"""``streamad benchmark``: run the detector over the NAB and SMAP/MSL benchmarks."""

from __future__ import annotations

import contextlib
from pathlib import Path

from streamad.cli.commands import UsageError
from streamad.scores import SCORE_NAMES

# Narrower than the 128 of `streamad train`, because the benchmark trains one model per file
# and most NAB files offer only a few hundred training windows.
DEFAULT_HIDDEN = 64
# A window of 32 x 1 values through 64 hidden units is too little work per operation to split
# over threads. On a 2-core machine shared with other jobs, training with 2 threads took
# 4.7 times as long as with 1 (30 epochs on one NAB file, torch 2.13).
DEFAULT_THREADS = 1


def add_parser(subparsers) -> None:
    """Register the ``benchmark`` sub-command with its ``nab`` and ``smap-msl`` benchmarks."""
    parser = subparsers.add_parser(
        "benchmark",
        help="run the NAB or SMAP/MSL benchmark",
        description="Train one model per data file or channel, replay the labelled data and report detection metrics per score.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    _add_nab(benchmarks)
    _add_smap_msl(benchmarks)


def _add_nab(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "nab",
        help="NAB: write NAB's results format and our own per-file metrics",
        description=(
            "For every labelled NAB file, train on NAB's probationary period (the first 15 %% of the rows, "
            "at most 750), stream the whole file through the engine and write "
            "OUT/<detector>/<category>/<detector>_<file>.csv with timestamp,value,anomaly_score,label, where "
            "anomaly_score is the engine's anomaly_probability. Copy OUT/<detector> into the results folder "
            "of a numenta/NAB checkout to score it with NAB's run.py. OUT/summary.csv and OUT/summary.json "
            "hold ROC-AUC, PR-AUC and event-level metrics per file, computed after the probationary period."
        ),
    )
    parser.add_argument("--data", required=True, type=Path, help="NAB's data folder, which contains one folder per category")
    parser.add_argument("--labels", type=Path, help="NAB's combined_windows.json (default: DATA/../labels/combined_windows.json)")
    parser.add_argument("--out", required=True, type=Path, help="results folder to write")
    parser.add_argument("--detector", help="NAB detector name; only with a single --score (default: streamad<Score>, e.g. streamadLikelihood)")
    parser.add_argument(
        "--files",
        action="append",
        metavar="GLOB",
        help="benchmark only files whose <category>/<name>.csv matches this shell pattern, e.g. 'realKnownCause/*' (repeatable)",
    )
    parser.add_argument(
        "--uncapped-probation",
        action="store_true",
        help=(
            "train on the first 15 %% of every file even where that exceeds NAB's 750-row probationary period; "
            "NAB's scorer then scores rows the model was trained on, so its score is not a valid NAB result"
        ),
    )
    parser.add_argument("--models", type=Path, help="also save each file's model bundle under MODELS/<category>/<name>")
    _add_common_options(parser)
    parser.set_defaults(handler=run_nab_command)


def _add_smap_msl(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "smap-msl",
        help="SMAP/MSL: event-level and point-wise metrics per channel and score",
        description=(
            "For every channel, train on train/<channel>.npy, replay test/<channel>.npy and report event-level "
            "precision, recall and F1 of the engine's alerts (an event is detected when an alert overlaps it; "
            "each alert run that overlaps no event is one false positive), the best point-wise F1, ROC-AUC and "
            "PR-AUC of every score. Point-adjusted F1 is not reported."
        ),
    )
    parser.add_argument("--data", required=True, type=Path, help="folder with train/, test/ and labeled_anomalies.csv")
    parser.add_argument("--channels", help="comma-separated channel ids, e.g. A-1,D-1 (default: every channel with train and test arrays)")
    parser.add_argument("--out", type=Path, default=Path("runs/smap-msl"), help="folder for smap_msl.csv and smap_msl.json (default runs/smap-msl)")
    columns = parser.add_mutually_exclusive_group()
    columns.add_argument(
        "--telemetry-only",
        dest="telemetry_only",
        action="store_true",
        default=True,
        help="model only column 0, the telemetry value that the labels refer to (default)",
    )
    columns.add_argument(
        "--all-channels",
        dest="telemetry_only",
        action="store_false",
        help="model all columns, the telemetry value and the one-hot command flags",
    )
    _add_common_options(parser)
    parser.set_defaults(handler=run_smap_msl_command)


def _add_common_options(parser) -> None:
    parser.add_argument("--score", default=",".join(SCORE_NAMES), help="comma-separated scores (default: all four, replayed in one pass)")
    parser.add_argument("--level", type=float, default=0.999, help="quantile level of the adaptive threshold behind the alerts (default 0.999)")
    parser.add_argument("--window", type=int, default=32, help="window length in time steps (default 32)")
    parser.add_argument("--latent", type=int, default=4, help="latent dimension (default 4)")
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN, help=f"hidden width (default {DEFAULT_HIDDEN})")
    parser.add_argument("--layers", type=int, default=2, help="hidden layers in encoder and decoder (default 2)")
    parser.add_argument("--epochs", type=int, default=100, help="maximum training epochs per model (default 100)")
    parser.add_argument("--patience", type=int, default=10, help="epochs without validation improvement before stopping (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per optimisation step (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step size (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of training and of the sampled scores (default 0)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"torch intra-op threads (default {DEFAULT_THREADS})")


def _score_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SCORE_NAMES]
    if not names or unknown:
        raise UsageError(f"--score {text!r} is invalid; use a comma-separated list of {', '.join(SCORE_NAMES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--score {text!r} names a score twice")
    return names


def _train_config(args):
    from streamad.training import TrainConfig

    config = TrainConfig(
        window=args.window,
        latent=args.latent,
        hidden=args.hidden,
        layers=args.layers,
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    try:
        config.validate()
    except ValueError as error:
        raise UsageError(str(error)) from None
    if not 0.0 < args.level < 1.0:
        raise UsageError(f"--level {args.level!r} is invalid; use a quantile level strictly between 0 and 1, e.g. 0.999")
    return config


@contextlib.contextmanager
def _torch_threads(threads: int):
    """Run the block with ``threads`` torch intra-op threads, then restore the previous number."""
    import torch

    if threads < 1:
        raise UsageError(f"--threads {threads!r} is invalid; use an integer >= 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_nab_command(args) -> int:
    """Run the NAB benchmark and print the summary table."""
    from streamad.benchmark import BenchmarkInputError, NabOptions, detector_name, run_nab
    from streamad.benchmark.nab import format_summary

    scores = _score_names(args.score)
    if args.detector and len(scores) != 1:
        raise UsageError(f"--detector names one results tree, but --score selects {len(scores)} scores; pass a single --score")
    detectors = {name: args.detector or detector_name(name) for name in scores}
    labels = args.labels or args.data.parent / "labels" / "combined_windows.json"
    options = NabOptions(
        train=_train_config(args), detectors=detectors, level=args.level, cap_probation=not args.uncapped_probation, models_dir=args.models
    )
    try:
        with _torch_threads(args.threads):
            document = run_nab(args.data, labels, args.out, options, patterns=args.files)
    except BenchmarkInputError as error:
        raise UsageError(str(error)) from None

    print(f"NAB: {len(document['files']) // len(scores)} files in {document['seconds']:.0f} s; metrics after the probationary period")
    print(format_summary(document))
    print(f"results: {', '.join(str(args.out / name) for name in detectors.values())}; per-file metrics in {args.out / 'summary.csv'}")
    return 0


def run_smap_msl_command(args) -> int:
    """Run the SMAP/MSL benchmark and print one table per score."""
    from streamad.benchmark import BenchmarkInputError, SmapMslOptions, run_smap_msl
    from streamad.benchmark.smap_msl import format_report

    channels = [name.strip() for name in args.channels.split(",") if name.strip()] if args.channels else None
    options = SmapMslOptions(
        train=_train_config(args), score_names=_score_names(args.score), level=args.level, telemetry_only=args.telemetry_only
    )
    try:
        with _torch_threads(args.threads):
            document = run_smap_msl(args.data, channels, options, args.out)
    except BenchmarkInputError as error:
        raise UsageError(str(error)) from None

    modelled = "telemetry value only" if args.telemetry_only else "all columns"
    print(f"SMAP/MSL: {len(document['channels']) // len(options.score_names)} channels ({modelled}) in {document['seconds']:.0f} s")
    print(format_report(document))
    print(f"report: {args.out / 'smap_msl.csv'}, {args.out / 'smap_msl.json'}")
    return 0
