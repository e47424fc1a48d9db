"""Model bundles: a trained VAE with everything needed to score new data.

A bundle is a directory with four files:

- ``model.pt``: the model's ``state_dict``, loadable with ``torch.load(..., weights_only=True)``.
- ``config.json``: architecture, window, stride, channel names, scaler and gap policy.
- ``metadata.json``: training metadata, validation-score statistics and the model version.
- ``validation_scores.json``: each score's values on the held-out normal validation
  windows, which seed the thresholds and calibrate anomaly probabilities.

The version is the first 12 hex digits of the SHA-256 of ``model.pt`` and ``config.json``,
so two bundles with the same weights and configuration have the same version.
"""

from __future__ import annotations

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


def load_bundle(directory: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a bundle written by :func:`save_bundle`, with the model in eval mode.

    Raises
    ------
    BundleError
        If a file is missing, the format is newer than this release supports, or the
        files do not match the stored version (the bundle was modified after saving).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"model bundle {str(directory)!r} not found; train one with 'streamad train --out {directory}'")
    for name in (WEIGHTS_FILE, CONFIG_FILE, METADATA_FILE, VALIDATION_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"model bundle {str(directory)!r} is incomplete: {name} is missing; retrain it")

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
