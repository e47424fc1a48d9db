"""Model bundles: a trained VAE with everything needed to score new data.

A bundle is a directory with four files:

- ``model.pt``: the model's ``state_dict``, loadable with ``torch.load(..., weights_only=True)``.
- ``config.json``: architecture, window, stride, channel names, scaler and gap policy.
- ``metadata.json``: training metadata, validation-score statistics and the model version.
- ``validation_scores.json``: each score's values on the held-out normal validation
  windows, which seed the thresholds and calibrate anomaly probabilities.

The version is the first 12 hex digits of the SHA-256 of ``model.pt`` and ``config.json``,
so two bundles with the same weights and configuration have the same version.

A directory of versions contains one bundle per subdirectory. Its current bundle is the
subdirectory named by the first line of a ``CURRENT`` file when that file exists, and
otherwise the subdirectory saved last (see :func:`resolve_bundle_path`). Subdirectories
whose name starts with ``.`` are ignored, so a bundle can be written under a hidden name
and renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamad.data import StandardScaler
from streamad.models import WindowVAE, build_model

BUNDLE_FORMAT = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
VALIDATION_FILE = "validation_scores.json"
BUNDLE_FILES = (WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE, VALIDATION_FILE)
CURRENT_FILE = "CURRENT"


class BundleError(ValueError):
    """A model bundle is missing, incomplete or incompatible."""


@dataclass
class ModelBundle:
    """A trained model with its scaler, configuration and validation scores."""

    model: WindowVAE
    scaler: StandardScaler
    config: dict
    metadata: dict = field(default_factory=dict)
    validation_scores: dict[str, np.ndarray] = field(default_factory=dict)
    version: str = ""
    path: Path | None = None

    @property
    def window(self) -> int:
        return int(self.config["window"])

    @property
    def stride(self) -> int:
        return int(self.config["stride"])

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])

    @property
    def max_fill(self) -> int:
        return int(self.config.get("max_fill", 0))


def _content_version(weights: bytes, config: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(weights)
    digest.update(config)
    return digest.hexdigest()[:12]


def _score_statistics(scores: np.ndarray) -> dict:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return {"count": 0}
    quantiles = np.quantile(finite, [0.5, 0.9, 0.99, 0.999])
    return {
        "count": int(finite.size),
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "q50": float(quantiles[0]),
        "q90": float(quantiles[1]),
        "q99": float(quantiles[2]),
        "q999": float(quantiles[3]),
    }


def save_bundle(bundle: ModelBundle, directory: str | Path) -> str:
    """Write ``bundle`` to ``directory`` (created if missing) and return its version."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    config = dict(bundle.config)
    config["format"] = BUNDLE_FORMAT
    config["architecture"] = bundle.model.architecture()
    config["scaler"] = bundle.scaler.to_dict()
    config_bytes = json.dumps(config, indent=2, sort_keys=True).encode()

    weights_path = directory / WEIGHTS_FILE
    state = {name: tensor.detach().cpu() for name, tensor in bundle.model.state_dict().items()}
    torch.save(state, weights_path)
    (directory / CONFIG_FILE).write_bytes(config_bytes)
    version = _content_version(weights_path.read_bytes(), config_bytes)

    metadata = dict(bundle.metadata)
    metadata["version"] = version
    metadata["saved_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    metadata["validation_score_statistics"] = {
        name: _score_statistics(np.asarray(scores)) for name, scores in bundle.validation_scores.items()
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    validation = {name: np.asarray(scores, dtype=float).tolist() for name, scores in bundle.validation_scores.items()}
    (directory / VALIDATION_FILE).write_text(json.dumps(validation))

    bundle.config = config
    bundle.metadata = metadata
    bundle.version = version
    bundle.path = directory
    return version


def is_version_directory(directory: str | Path) -> bool:
    """Return True when ``directory`` is a directory without any bundle file, i.e. a directory of versions."""
    directory = Path(directory)
    return directory.is_dir() and not any((directory / name).exists() for name in BUNDLE_FILES)


def resolve_bundle_path(directory: str | Path) -> Path:
    """Return the bundle directory that ``directory`` stands for: itself, or the current version in it.

    For a directory of versions (:func:`is_version_directory`) the current version is

    1. the subdirectory named by the first line of ``directory/CURRENT``, when that file exists;
    2. otherwise the subdirectory with the latest ``saved_at`` in its ``metadata.json``. A
       subdirectory without a readable ``saved_at``, for example one still being written,
       counts with the modification time of its ``metadata.json``, or of itself when that
       file is missing. Equal times are ordered by name, and hidden subdirectories
       (name starting with ``.``) are ignored.

    The chosen subdirectory is not checked to be a complete bundle; :func:`load_bundle` does
    that. Raises BundleError when ``CURRENT`` names no subdirectory or there is none to choose.
    """
    directory = Path(directory)
    if not is_version_directory(directory):
        return directory
    current_file = directory / CURRENT_FILE
    if current_file.is_file():
        lines = current_file.read_text().strip().splitlines()
        name = lines[0].strip() if lines else ""
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise BundleError(
                f"{current_file} names {name!r}, which is not a subdirectory name; write the name of one "
                f"version subdirectory of {str(directory)!r} into it"
            )
        chosen = directory / name
        if not chosen.is_dir():
            raise BundleError(f"{current_file} names {name!r}, but {str(chosen)!r} is not a directory; fix {CURRENT_FILE}")
        return chosen

    versions = [path for path in directory.iterdir() if path.is_dir() and not path.name.startswith(".")]
    if not versions:
        raise BundleError(
            f"model directory {str(directory)!r} contains neither bundle files nor version subdirectories; "
            f"pass a bundle written by 'streamad train --out DIR', or a directory of such bundles"
        )
    return max(versions, key=lambda path: (_saved_time(path), path.name))


def _incomplete_version_message(requested: Path, chosen: Path, missing: str) -> str:
    """Return the error for an incomplete bundle that :func:`resolve_bundle_path` chose in a directory of versions."""
    if (requested / CURRENT_FILE).is_file():
        selection = f"named by {str(requested / CURRENT_FILE)!r}"
    else:
        selection = "chosen as the subdirectory saved last"
    return (
        f"model directory {str(requested)!r} has no bundle files, so it was read as a directory of model versions, "
        f"and its current version {chosen.name!r} ({selection}) is incomplete: {missing} is missing; pass a bundle "
        f"written by 'streamad train --out DIR', or retrain that version"
    )


def _saved_time(version_directory: Path) -> float:
    """Return the POSIX time at which the bundle in ``version_directory`` was saved, see :func:`resolve_bundle_path`."""
    metadata_path = version_directory / METADATA_FILE
    try:
        saved_at = json.loads(metadata_path.read_text()).get("saved_at")
        return dt.datetime.fromisoformat(saved_at).timestamp()
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        return metadata_path.stat().st_mtime
    except OSError:
        return version_directory.stat().st_mtime


def load_bundle(directory: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a bundle written by :func:`save_bundle`, with the model in eval mode.

    ``directory`` is a bundle or a directory of versions, whose current version is loaded
    (see :func:`resolve_bundle_path`); the bundle's ``path`` is the bundle directory loaded.

    Raises
    ------
    BundleError
        If a file is missing, the format is newer than this release supports, or the
        files do not match the stored version (the bundle was modified after saving).
    """
    requested = Path(directory)
    directory = resolve_bundle_path(requested)
    if not directory.is_dir():
        raise BundleError(f"model bundle {str(directory)!r} not found; train one with 'streamad train --out {directory}'")
    for name in (WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE, VALIDATION_FILE):
        if not (directory / name).is_file():
            if directory == requested:
                raise BundleError(f"model bundle {str(directory)!r} is incomplete: {name} is missing; retrain it")
            raise BundleError(_incomplete_version_message(requested, directory, name))

    config_bytes = (directory / CONFIG_FILE).read_bytes()
    config = json.loads(config_bytes)
    if config.get("format", 0) > BUNDLE_FORMAT:
        raise BundleError(
            f"model bundle {str(directory)!r} has format {config.get('format')}, but this release reads format "
            f"{BUNDLE_FORMAT} or older; upgrade streamad-vae"
        )
    metadata = json.loads((directory / METADATA_FILE).read_text())
    weights_bytes = (directory / WEIGHTS_FILE).read_bytes()
    version = _content_version(weights_bytes, config_bytes)
    if metadata.get("version") != version:
        raise BundleError(
            f"model bundle {str(directory)!r} was modified after saving: its content hash is {version}, "
            f"metadata.json says {metadata.get('version')!r}; retrain or restore the bundle"
        )

    model = build_model(config["architecture"])
    state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    model.to(device).eval()
    validation = json.loads((directory / VALIDATION_FILE).read_text())
    return ModelBundle(
        model=model,
        scaler=StandardScaler.from_dict(config["scaler"]),
        config=config,
        metadata=metadata,
        validation_scores={name: np.asarray(values, dtype=np.float64) for name, values in validation.items()},
        version=version,
        path=directory,
    )
