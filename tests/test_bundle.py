"""Model bundle save, load, version and integrity checks."""

import json

import numpy as np
import pytest
import torch

from streamad.bundle import BundleError, load_bundle, save_bundle
from streamad.data import Series
from streamad.training import TrainConfig, train_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    t = np.arange(600)
    values = np.stack([np.sin(t / 8.0), np.cos(t / 8.0)], axis=1) + 0.05 * rng.normal(size=(600, 2))
    series = Series("sine", t * 60_000, values, ["a", "b"], True)
    config = TrainConfig(window=16, latent=2, hidden=32, epochs=3, seed=1)
    bundle = train_bundle([series], config, progress=False)
    directory = tmp_path_factory.mktemp("bundle")
    version = save_bundle(bundle, directory)
    return bundle, directory, version


def test_bundle_files_and_weights_only_load(trained):
    _, directory, _ = trained
    for name in ("model.pt", "config.json", "metadata.json", "validation_scores.json"):
        assert (directory / name).is_file()
    state = torch.load(directory / "model.pt", weights_only=True)
    assert "log_noise_var" in state


def test_bundle_round_trip_scores_identically(trained):
    bundle, directory, version = trained
    loaded = load_bundle(directory)
    assert loaded.version == version
    assert loaded.channels == ["a", "b"]
    x = torch.randn(4, 16, 2)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model.decode(torch.zeros(1, 2)), bundle.model.decode(torch.zeros(1, 2)))
        np.testing.assert_allclose(loaded.model.encode(x)[0], bundle.model.encode(x)[0])
    np.testing.assert_allclose(loaded.scaler.mean_, bundle.scaler.mean_)


def test_bundle_config_records_architecture(trained):
    _, directory, _ = trained
    config = json.loads((directory / "config.json").read_text())
    assert config["architecture"]["type"] == "dense"
    assert config["window"] == 16
    assert config["channels"] == ["a", "b"]
    assert "mean" in json.dumps(config["scaler"])


def test_bundle_has_validation_scores_for_every_score(trained):
    bundle, _, _ = trained
    assert set(bundle.validation_scores) == {"likelihood", "reconstruction", "elbo", "importance"}
    assert all(np.isfinite(scores).all() for scores in bundle.validation_scores.values())
    statistics = bundle.metadata["validation_score_statistics"]["likelihood"]
    assert statistics["count"] == len(bundle.validation_scores["likelihood"])


def test_bundle_version_is_content_hash(trained, tmp_path):
    bundle, _, version = trained
    assert save_bundle(bundle, tmp_path / "again") == version


def test_bundle_detects_modified_weights(trained, tmp_path):
    bundle, _, _ = trained
    directory = tmp_path / "tampered"
    save_bundle(bundle, directory)
    config = json.loads((directory / "config.json").read_text())
    config["window"] = 99
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="modified after saving"):
        load_bundle(directory)


def test_bundle_missing_directory_names_fix(tmp_path):
    with pytest.raises(BundleError, match="streamad train"):
        load_bundle(tmp_path / "nope")


def test_bundle_missing_file(trained, tmp_path):
    bundle, _, _ = trained
    directory = tmp_path / "partial"
    save_bundle(bundle, directory)
    (directory / "validation_scores.json").unlink()
    with pytest.raises(BundleError, match="validation_scores.json is missing"):
        load_bundle(directory)
