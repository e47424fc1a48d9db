"""``streamad select``: label-free model selection over a grid of configurations."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from streamad.bundle import save_bundle
from streamad.cli.commands import UsageError, _load_data, _parse_channels
from streamad.training.selection import (
    TIE_BREAKS,
    check_training_spans,
    grid_configurations,
    load_grid,
    select_model,
    table_columns,
    write_table_csv,
)

logger = logging.getLogger(__name__)

TABLE_FILE = "selection.csv"
BEST_DIR = "best"
MODELS_DIR = "models"

# Short headers for the printed table. The CSV file keeps the full column names.
SHORT_HEADERS = {
    "validation_log_likelihood_per_step": "LL/step",
    "standard_error_per_step": "SE/step",
    "validation_log_likelihood_per_window": "LL/window",
    "validation_log_likelihood_per_step_data_units": "LL/step(data)",
    "validation_windows": "windows",
    "parameters": "params",
    "best_epoch": "best ep",
    "epochs_run": "epochs",
    "training_seconds": "seconds",
    "model_version": "version",
    "selected": "selected",
}


def add_parser(subparsers) -> None:
    """Register the ``select`` sub-command."""
    parser = subparsers.add_parser(
        "select",
        help="train a grid of configurations and keep the best by validation log-likelihood",
        description=(
            "Train every configuration of a TOML grid on the start of each data file, score the held-out normal "
            "validation windows with the likelihood score and keep the configuration with the highest mean "
            "validation log-likelihood per time step. Writes OUT/selection.csv (best first) and the selected "
            "bundle to OUT/best/."
        ),
    )

    parser.add_argument("--data", required=True, nargs="+", help="data file(s): CSV, .npy or JSON lines")
    parser.add_argument(
        "--grid",
        required=True,
        help="TOML file: a [grid] table of TrainConfig fields with lists of values, and an optional [train] table of fixed fields",
    )
    parser.add_argument("--out", required=True, help="output directory for selection.csv, best/ and models/")
    parser.add_argument("--channels", help="comma-separated channels to model: CSV column names, or positions 0,1,... for .npy (default: all numeric columns)")
    parser.add_argument("--train-fraction", type=float, default=1.0, help="fraction of each file, from its start, used for training and validation (default 1.0; NAB's probationary period is 0.15)")

    parser.add_argument(
        "--tie-break",
        choices=TIE_BREAKS,
        default="best",
        help="'best' (default) keeps the highest validation log-likelihood; 'one-se' keeps the model with the fewest "
        "parameters within one standard error of the highest",
    )
    parser.add_argument("--keep-all", action="store_true", help="also save every configuration's bundle to OUT/models/<index>/")
    parser.add_argument("--progress", action="store_true", help="show each configuration's training progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads for training and scoring (default: torch's choice, usually one per core); "
        "1 is often faster for small models on a busy machine",
    )
    parser.set_defaults(handler=select)


def select(args) -> int:
    """Run the grid of ``--grid`` on ``--data``; write the table and the selected bundle to ``--out``."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; pass a directory path")
    if args.threads is not None:
        if args.threads < 1:
            raise UsageError(f"--threads {args.threads} is invalid; use an integer >= 1")
        torch.set_num_threads(args.threads)
    try:
        grid_file = load_grid(args.grid)
        configurations = grid_configurations(grid_file.grid, grid_file.base, source=f"grid file {args.grid!r}")
        series_list = _load_data(args.data, _parse_channels(args.channels))
        check_training_spans(series_list, configurations, args.train_fraction)
    except ValueError as error:
        raise UsageError(str(error)) from error

    out.mkdir(parents=True, exist_ok=True)
    result = select_model(
        series_list,
        grid_file.grid,
        grid_file.base,
        args.train_fraction,
        tie_break=args.tie_break,
        models_dir=out / MODELS_DIR if args.keep_all else None,
        progress=args.progress,
    )
    write_table_csv(result.table, out / TABLE_FILE)
    version = save_bundle(result.best_bundle, out / BEST_DIR)
    if version != result.best_row["model_version"]:
        logger.warning(
            "the saved bundle %s has version %s, but %s lists %s for it; saving the same weights gave different bytes",
            out / BEST_DIR, version, out / TABLE_FILE, result.best_row["model_version"],
        )

    print(format_table(result.table))
    row = result.best_row
    print(
        f"selected configuration {result.best_index} by tie-break {result.tie_break!r}: "
        f"{row['validation_log_likelihood_per_step']:.4f} nats per time step; model {version} written to "
        f"{out / BEST_DIR}, table in {out / TABLE_FILE}"
    )
    return 0


def _format_cell(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if name == "training_seconds":
        return f"{value:.1f}"
    if isinstance(value, float) and name in SHORT_HEADERS:
        return f"{value:.4f}"
    return str(value)


def format_table(table: list[dict]) -> str:
    """Format the rows of a selection table as aligned text columns, with ``*`` on the selected row."""
    columns = table_columns(table)
    headers = [SHORT_HEADERS.get(name, name) for name in columns]
    cells = [[_format_cell(name, row[name]) for name in columns] for row in table]
    widths = [max(len(text) for text in [header, *(line[position] for line in cells)]) for position, header in enumerate(headers)]
    lines = ["  ".join(header.rjust(width) for header, width in zip(headers, widths))]
    lines += ["  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)
