"""Label-free model selection: train a grid of configurations and rank them by validation log-likelihood.

Every configuration is trained with :func:`~streamad.training.trainer.train_bundle` and
scored with the ``likelihood`` score on the held-out normal validation windows. The
configurations are ranked by the mean validation log-likelihood per time step, the
Laplace estimate of ``log p(window)`` divided by the window length ``L``. The estimate
keeps every constant of the density: the ``2π`` terms, the learned noise variances and
the log-determinant (volume) term of the decoder's Jacobian. Dropping any of them would
favour some latent sizes or noise models over others.

The per-step numbers of different configurations are comparable for three reasons:

- Every configuration is validated on the same data. ``train_bundle`` cuts the
  validation part from the end of each series' training span by ``validation_fraction``,
  independently of ``L``. The windows of each configuration lie inside that span, so a
  longer window has ``L - 1`` fewer windows per series, and steps near the span's edges
  are covered by fewer windows. ``validation_fraction`` and ``max_fill`` (which fills
  gaps and so changes the values) may therefore not vary in a grid.
- Every configuration is validated in the same units. The log-likelihood is that of
  standardised data, and the scaler is fitted on the same fitting part for every
  configuration, so it is identical across configurations (:func:`select_model` checks
  this). The log-densities therefore differ from those of the raw data by the same
  constant, the log-determinant of the scaling: ``log p_data(x) = log p_std(x_std) -
  L · Σ_c log scale_c`` per window. The table also reports the per-step value in data
  units.
- Each value is a log-density over the ``L·C`` numbers of a window, whatever the latent
  size ``d``, so latent sizes compare directly, and dividing by ``L`` gives a rate per
  time step for comparing window lengths.

NOTE: for a stationary series, the expected ``log p(x_1..L) / L`` of even the true model
does not decrease with ``L``. It grows when steps depend on earlier ones, because the
first steps of a window have no context. So the per-step comparison favours longer
windows by an amount that this module does not estimate.

The standard error of the mean comes from batch means over consecutive validation
windows, because overlapping windows are correlated. It measures the sampling noise of
the validation set only, not the run-to-run noise of training.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple, get_type_hints

import numpy as np

from streamad.bundle import ModelBundle, load_bundle, save_bundle
from streamad.data import Series, StandardScaler
from streamad.training.trainer import TrainConfig, _split_training_span, train_bundle

logger = logging.getLogger(__name__)

GRID_TABLE = "grid"
FIXED_TABLE = "train"
TIE_BREAKS = ("best", "one-se")

# Fields that change the validation windows or their values. Varying them would validate
# configurations on different data, so their log-likelihoods would not be comparable.
FIXED_ONLY_FIELDS = ("validation_fraction", "max_fill")

# The standard error uses at most this many batches of consecutive windows, each at least one
# window long. Batch-means estimators commonly use 20 to 30 batches.
MAX_BATCHES = 30

RESULT_COLUMNS = (
    "validation_log_likelihood_per_step",
    "standard_error_per_step",
    "validation_log_likelihood_per_window",
    "validation_log_likelihood_per_step_data_units",
    "validation_windows",
    "parameters",
    "best_epoch",
    "epochs_run",
    "training_seconds",
    "model_version",
    "selected",
)


class GridError(ValueError):
    """A grid of configurations is invalid; the message names the key and the fix."""


class GridFile(NamedTuple):
    """The contents of a grid file."""

    grid: dict[str, list]
    """TrainConfig fields to vary, each with its list of values, in file order."""
    base: dict[str, object]
    """TrainConfig fields fixed for every configuration."""


@dataclass
class SelectionResult:
    """The ranked configurations of a grid and the selected model.

    Attributes
    ----------
    table
        One row per configuration, sorted by validation log-likelihood per step, highest
        first (non-finite values last). Each row has ``rank``, ``index`` (the
        configuration's position in grid order), the grid fields and ``RESULT_COLUMNS``.
    best_index
        The ``index`` of the selected configuration. Under ``tie_break="one-se"`` its row
        need not be the first one.
    best_bundle
        The selected model, unsaved unless ``models_dir`` was given.
    tie_break
        The rule that selected the configuration, one of ``TIE_BREAKS``.
    """

    table: list[dict]
    best_index: int
    best_bundle: ModelBundle
    tie_break: str = "best"

    @property
    def best_row(self) -> dict:
        """The table row of the selected configuration."""
        return next(row for row in self.table if row["index"] == self.best_index)


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise GridError(
                f"cannot read grid file {str(path)!r}: reading TOML needs Python 3.11 or newer, or the tomli "
                "package on Python 3.10; run 'pip install tomli'"
            ) from None
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise GridError(f"grid file {str(path)!r} not found; pass an existing TOML file to --grid") from None
    except tomllib.TOMLDecodeError as error:
        raise GridError(f"grid file {str(path)!r} is not valid TOML: {error}") from None


def load_grid(path: str | Path) -> GridFile:
    """Read and check a TOML grid file with a ``[grid]`` and an optional ``[train]`` table.

    ``[grid]`` maps TrainConfig fields to non-empty lists of values to try, and ``[train]``
    sets TrainConfig fields for every configuration, for example::

        [grid]
        window = [16, 32]
        latent = [2, 4, 8]
        architecture = ["dense", "conv"]

        [train]
        epochs = 100

    Raises
    ------
    GridError
        If the file is missing or not valid TOML, has another table, or any configuration
        of the grid is invalid (see :func:`grid_configurations`).
    """
    path = Path(path)
    document = _read_toml(path)
    source = f"grid file {str(path)!r}"
    unknown = [key for key in document if key not in (GRID_TABLE, FIXED_TABLE)]
    if unknown:
        raise GridError(
            f"{source}: unknown top-level key {unknown[0]!r}; use [{GRID_TABLE}] for the fields to vary and "
            f"[{FIXED_TABLE}] for the fields fixed in every configuration"
        )
    if GRID_TABLE not in document:
        raise GridError(f"{source} has no [{GRID_TABLE}] table; add one, e.g. [{GRID_TABLE}] latent = [2, 4, 8]")
    for table in (GRID_TABLE, FIXED_TABLE):
        if not isinstance(document.get(table, {}), dict):
            raise GridError(f"{source}: {table!r} must be a table, written [{table}]")

    grid_file = GridFile(grid=dict(document[GRID_TABLE]), base=dict(document.get(FIXED_TABLE, {})))
    grid_configurations(grid_file.grid, grid_file.base, source=source)
    return grid_file


def _field_names() -> list[str]:
    return [field.name for field in fields(TrainConfig)]


def _check_value(name: str, value: object, location: str) -> object:
    """Return ``value`` converted to the type of TrainConfig field ``name``, or raise GridError."""
    expected = get_type_hints(TrainConfig)[name]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, expected):
        raise GridError(
            f"{location} has {value!r} ({type(value).__name__}), but {name} takes {expected.__name__} values"
        )
    return value


def grid_configurations(grid: dict, base: TrainConfig | dict | None = None, source: str = "grid") -> list[TrainConfig]:
    """Expand ``grid`` over ``base`` into the list of configurations, in grid order.

    The last field of ``grid`` varies fastest. Every configuration is checked with
    :meth:`TrainConfig.validate`.

    Raises
    ------
    GridError
        If a key is not a TrainConfig field, a grid entry is not a non-empty list without
        repeats, a field is both varied and fixed, ``validation_fraction`` or ``max_fill``
        varies, or a value has the wrong type or is invalid.
    """
    valid = _field_names()
    if isinstance(base, TrainConfig):
        base_values = asdict(base)
    else:
        base_values = asdict(TrainConfig())
        for name, value in (base or {}).items():
            if name not in valid:
                raise GridError(
                    f"{source}: [{FIXED_TABLE}] key {name!r} is not a TrainConfig field; valid fields are "
                    f"{', '.join(valid)}"
                )
            if name in grid:
                raise GridError(
                    f"{source}: {name!r} is both in [{GRID_TABLE}] and in [{FIXED_TABLE}]; keep it in one of them"
                )
            base_values[name] = _check_value(name, value, f"{source}: [{FIXED_TABLE}] {name}")

    if not grid:
        raise GridError(f"{source}: [{GRID_TABLE}] is empty; give at least one field with a list of values")
    axes: dict[str, list] = {}
    for name, values in grid.items():
        if name not in valid:
            raise GridError(
                f"{source}: [{GRID_TABLE}] key {name!r} is not a TrainConfig field; valid fields are {', '.join(valid)}"
            )
        if name in FIXED_ONLY_FIELDS:
            raise GridError(
                f"{source}: {name} cannot vary in [{GRID_TABLE}], because every configuration must be validated "
                f"on the same data; set it in [{FIXED_TABLE}]"
            )
        if not isinstance(values, list):
            raise GridError(f"{source}: [{GRID_TABLE}] {name} = {values!r} must be a list, e.g. {name} = [{values!r}]")
        if not values:
            raise GridError(f"{source}: [{GRID_TABLE}] {name} is an empty list; give at least one value")
        checked = [_check_value(name, value, f"{source}: [{GRID_TABLE}] {name}") for value in values]
        repeated = [value for position, value in enumerate(checked) if value in checked[:position]]
        if repeated:
            raise GridError(f"{source}: [{GRID_TABLE}] {name} repeats the value {repeated[0]!r}; list each value once")
        axes[name] = checked

    configurations = []
    for combination in itertools.product(*axes.values()):
        overrides = dict(zip(axes, combination))
        config = TrainConfig(**{**base_values, **overrides})
        try:
            config.validate()
        except ValueError as error:
            raise GridError(f"{source}: invalid configuration {_describe(overrides)}: {error}") from None
        configurations.append(config)
    return configurations


def check_training_spans(series_list: list[Series], configurations: list[TrainConfig], train_fraction: float) -> None:
    """Raise ValueError before any training when a series is too short for a configuration's window."""
    if not series_list:
        raise ValueError("no series to select a model on; pass at least one data file")
    for config in configurations:
        for series in series_list:
            _split_training_span(series, train_fraction, config)


def _describe(overrides: dict) -> str:
    return " ".join(f"{name}={value}" for name, value in overrides.items())


def _standard_error(per_step: np.ndarray, window: int) -> float:
    """Estimate the standard error of the mean of per-step log-likelihoods by batch means.

    ``per_step`` contains the values of consecutive sliding windows. They are cut into at most
    ``MAX_BATCHES`` batches of at least ``window`` windows each, so that neighbouring
    batches share few time steps. Returns NaN with fewer than two batches.
    """
    batch = max(window, math.ceil(len(per_step) / MAX_BATCHES))
    count = len(per_step) // batch
    if count < 2:
        return math.nan
    means = per_step[: count * batch].reshape(count, batch).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(count))


def choose_configuration(table: list[dict], tie_break: str = "best") -> int:
    """Return the ``index`` of the configuration that ``tie_break`` selects from the rows of ``table``.

    ``"best"`` takes the highest validation log-likelihood per step. ``"one-se"`` (the
    one-standard-error rule) takes the configuration with the fewest parameters whose
    log-likelihood is within one standard error of the highest, and the higher
    log-likelihood among equally large ones. Without a standard error of the best row it
    falls back to ``"best"``.

    Raises
    ------
    ValueError
        If ``tie_break`` is unknown or no row has a finite log-likelihood.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r} is unknown; use one of {', '.join(TIE_BREAKS)}")
    finite = [row for row in table if math.isfinite(row["validation_log_likelihood_per_step"])]
    if not finite:
        raise ValueError("no configuration has a finite validation log-likelihood; check the data and training logs")
    best = max(finite, key=lambda row: row["validation_log_likelihood_per_step"])
    if tie_break == "best":
        return best["index"]

    standard_error = best["standard_error_per_step"]
    if not math.isfinite(standard_error):
        logger.warning(
            "configuration %d has too few validation windows for a standard error; selecting by the highest "
            "log-likelihood instead of the one-standard-error rule",
            best["index"],
        )
        return best["index"]
    threshold = best["validation_log_likelihood_per_step"] - standard_error
    candidates = [row for row in finite if row["validation_log_likelihood_per_step"] >= threshold]
    chosen = min(candidates, key=lambda row: (row["parameters"], -row["validation_log_likelihood_per_step"]))
    return chosen["index"]


def _sort_key(row: dict) -> tuple[bool, float]:
    value = row["validation_log_likelihood_per_step"]
    return (not math.isfinite(value), -value if math.isfinite(value) else 0.0)


def _result_row(index: int, overrides: dict, bundle: ModelBundle, version: str) -> dict:
    window = bundle.window
    per_window = -np.asarray(bundle.validation_scores["likelihood"], dtype=np.float64)
    per_step = per_window / window
    mean_per_step = float(per_step.mean())
    log_scale_per_step = float(np.log(bundle.scaler.scale_).sum())
    metadata = bundle.metadata
    return {
        "rank": 0,
        "index": index,
        **overrides,
        "validation_log_likelihood_per_step": mean_per_step,
        "standard_error_per_step": _standard_error(per_step, window),
        "validation_log_likelihood_per_window": float(per_window.mean()),
        "validation_log_likelihood_per_step_data_units": mean_per_step - log_scale_per_step,
        "validation_windows": int(per_window.size),
        "parameters": sum(parameter.numel() for parameter in bundle.model.parameters()),
        "best_epoch": metadata["best_epoch"],
        "epochs_run": metadata["epochs_run"],
        "training_seconds": metadata["training_seconds"],
        "model_version": version,
        "selected": False,
    }


def _check_same_scaler(reference: StandardScaler, scaler: StandardScaler, description: str) -> None:
    same = np.array_equal(reference.mean_, scaler.mean_) and np.array_equal(reference.scale_, scaler.scale_)
    if not same:
        raise RuntimeError(
            f"configuration {description} was standardised with a different scaler than the first configuration, "
            "so their log-likelihoods are in different units; the training split must not depend on the configuration"
        )


def select_model(
    series_list: list[Series],
    grid: dict,
    base: TrainConfig | dict | None = None,
    train_fraction: float = 1.0,
    *,
    tie_break: str = "best",
    models_dir: str | Path | None = None,
    progress: bool = False,
) -> SelectionResult:
    """Train every configuration of ``grid`` and select one by mean validation log-likelihood per step.

    Parameters
    ----------
    series_list
        Training series, all with the same channels. The first ``train_fraction`` of each
        is its training span, as in :func:`~streamad.training.trainer.train_bundle`.
    grid
        TrainConfig fields to vary, each with a non-empty list of values.
    base
        The fixed fields, as a TrainConfig or a dict of fields (defaults for the rest).
    train_fraction
        Fraction of each series, from its start, used for fitting and validation.
    tie_break
        ``"best"`` (default) or ``"one-se"``, see :func:`choose_configuration`.
    models_dir
        When given, every bundle is saved to ``models_dir/<index>/``. Otherwise the
        bundles go to a temporary directory that is removed before returning.
    progress
        Show each configuration's training progress bar.

    Returns
    -------
    SelectionResult
        The ranked table and the selected bundle. The module docstring explains why the
        log-likelihoods of different configurations are comparable.

    Raises
    ------
    GridError
        If the grid is invalid, before any training.
    ValueError
        If ``tie_break`` is unknown or a series is too short for a window, before any
        training.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break={tie_break!r} is unknown; use one of {', '.join(TIE_BREAKS)}")
    configurations = grid_configurations(grid, base)
    check_training_spans(series_list, configurations, train_fraction)
    series_ids = ", ".join(series.series_id for series in series_list)
    logger.info("selecting among %d configurations on series %s", len(configurations), series_ids)

    if models_dir is None:
        directory_context = tempfile.TemporaryDirectory(prefix="streamad-select-")
    else:
        directory_context = contextlib.nullcontext(models_dir)
    with directory_context as directory_name:
        directory = Path(directory_name)
        table: list[dict] = []
        reference: StandardScaler | None = None
        for index, config in enumerate(configurations):
            overrides = {name: getattr(config, name) for name in grid}
            description = f"{index} ({_describe(overrides)})"
            logger.info("configuration %s, %d of %d: training on series %s", description, index + 1, len(configurations), series_ids)
            bundle = train_bundle(series_list, config, train_fraction=train_fraction, progress=progress)
            if reference is None:
                reference = bundle.scaler
            _check_same_scaler(reference, bundle.scaler, description)
            version = save_bundle(bundle, directory / str(index))
            row = _result_row(index, overrides, bundle, version)
            table.append(row)
            logger.info(
                "configuration %s: validation log-likelihood %.4f ± %.4f nats per step on %d windows, best epoch %d "
                "of %d, %.1f s, model %s",
                description,
                row["validation_log_likelihood_per_step"],
                row["standard_error_per_step"],
                row["validation_windows"],
                row["best_epoch"],
                row["epochs_run"],
                row["training_seconds"],
                version,
            )

        best_index = choose_configuration(table, tie_break)
        best_bundle = load_bundle(directory / str(best_index))
        if models_dir is None:
            best_bundle.path = None

    table.sort(key=_sort_key)
    for rank, row in enumerate(table, start=1):
        row["rank"] = rank
        row["selected"] = row["index"] == best_index
    result = SelectionResult(table=table, best_index=best_index, best_bundle=best_bundle, tie_break=tie_break)
    logger.info(
        "selected configuration %d (%s) by tie-break %r: %.4f nats per step, model %s",
        best_index,
        _describe({name: result.best_row[name] for name in grid}),
        tie_break,
        result.best_row["validation_log_likelihood_per_step"],
        result.best_row["model_version"],
    )
    return result


def table_columns(table: list[dict]) -> list[str]:
    """Return the column names of a selection table: rank, index, the grid fields, then ``RESULT_COLUMNS``."""
    if not table:
        return ["rank", "index", *RESULT_COLUMNS]
    grid_fields = [name for name in table[0] if name not in ("rank", "index", *RESULT_COLUMNS)]
    return ["rank", "index", *grid_fields, *RESULT_COLUMNS]


def write_table_csv(table: list[dict], path: str | Path) -> None:
    """Write the rows of a selection table to a CSV file, in table order."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=table_columns(table))
        writer.writeheader()
        writer.writerows(table)
