"""Scores of VAEs trained by ``fit_model``, against a known density and the importance estimate.

The parabola model has ``z ~ N(0.5, 0.15²)`` and ``x = [z², z] + e`` with ``e ~ N(0, 0.1² I)``.
Its ``log p(x)`` is a one-dimensional integral over ``z``, so a trained VAE's likelihood
score can be checked against the true density of the data it was trained on.

Each model is trained on data standardised by a ``StandardScaler`` fitted on its training
part, as ``train_bundle`` does, because the noise-variance floor and the initial noise
variance of the models assume standardised units. The scores are then log-densities of
standardised windows. For a window of one step,
``log p(x) = log p(scaled x) - Σ_c log scale_c``, a constant shift that leaves every ROC-AUC
unchanged.

Run ``pytest -s`` to see the measured AUCs and correlations.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from streamad.data import StandardScaler, sliding_windows
from streamad.scores import score_windows
from streamad.training.trainer import TrainConfig, fit_model

Z_STARS = ["encoder_mean", "map"]

PARABOLA_CENTRE = 0.5
PARABOLA_SPREAD = 0.15
PARABOLA_SIGMA = 0.1
PARABOLA_COUNT = 500

# latent 1 is the dimension of the true manifold. With seed 0 (torch 2.13, CPU) early stopping
# ends training at epoch 145 of 300.
PARABOLA_CONFIG = TrainConfig(
    window=1, latent=1, hidden=32, layers=2, epochs=300, batch_size=64, learning_rate=1e-2, patience=50, seed=0
)

SINE_PERIOD = 24
SINE_NOISE = 0.1
SINE_FIT_STEPS = 800
SINE_VALIDATION_STEPS = 300
SINE_TEST_WINDOWS = 300
IMPORTANCE_SAMPLES = 1000

# Every channel is a function of the phase, so the windows lie on a closed curve, which a
# 2-dimensional latent space can hold.
SINE_CONFIG = TrainConfig(
    window=16, latent=2, hidden=64, layers=2, epochs=150, batch_size=64, learning_rate=3e-3, patience=20, seed=0
)


@pytest.fixture(scope="module")
def single_thread():
    # Adam steps on models this small spend most of their time synchronising threads, so one
    # thread trains several times faster on a shared machine. It also fixes the order of
    # floating-point reductions, so the trained weights do not depend on the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_windows(scaler: StandardScaler, values: np.ndarray, window: int) -> np.ndarray:
    return sliding_windows(scaler.transform(values), window).x


def as_tensor(windows: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(windows, dtype=torch.float32)


def roc_auc(normal_scores: torch.Tensor, anomaly_scores: torch.Tensor) -> float:
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomaly_scores))]
    return float(roc_auc_score(labels, torch.cat([normal_scores, anomaly_scores]).numpy()))


# Parabola


def parabola_points(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([z**2, z], axis=1) + PARABOLA_SIGMA * rng.standard_normal((len(z), 2))


def parabola_normal_points(count: int, rng: np.random.Generator) -> np.ndarray:
    return parabola_points(PARABOLA_CENTRE + PARABOLA_SPREAD * rng.standard_normal(count), rng)


def parabola_log_density(points: np.ndarray) -> np.ndarray:
    """Return ``log p(x)`` of the parabola model by a Riemann sum over ``z`` within 10 prior standard deviations."""
    z, step = np.linspace(PARABOLA_CENTRE - 10 * PARABOLA_SPREAD, PARABOLA_CENTRE + 10 * PARABOLA_SPREAD, 4001, retstep=True)
    squared = (points[:, :1] - z**2) ** 2 + (points[:, 1:] - z) ** 2
    log_likelihood = -0.5 * squared / PARABOLA_SIGMA**2 - math.log(2 * math.pi * PARABOLA_SIGMA**2)
    log_prior = -0.5 * ((z - PARABOLA_CENTRE) / PARABOLA_SPREAD) ** 2 - math.log(PARABOLA_SPREAD * math.sqrt(2 * math.pi))
    log_integrand = log_likelihood + log_prior
    peak = log_integrand.max(axis=1, keepdims=True)
    return peak[:, 0] + np.log(np.exp(log_integrand - peak).sum(axis=1) * step)


@pytest.fixture(scope="module")
def parabola_data() -> dict[str, np.ndarray]:
    """Points in data units: training, validation for early stopping, fresh normal points and two anomaly sets."""
    rng = np.random.default_rng(0)
    data = {
        "train": parabola_normal_points(PARABOLA_COUNT, rng),
        "validation": parabola_normal_points(200, rng),
        "normal": parabola_normal_points(PARABOLA_COUNT, rng),
    }

    # Off the support: uniform on [-1, 3] × [-1.5, 2], kept where the true density is below 1e-3.
    candidates = np.stack([rng.uniform(-1.0, 3.0, 2 * PARABOLA_COUNT), rng.uniform(-1.5, 2.0, 2 * PARABOLA_COUNT)], axis=1)
    data["off_support"] = candidates[parabola_log_density(candidates) < math.log(1e-3)][:PARABOLA_COUNT]

    # On the manifold in the prior's tail: z uniform on [1.9, 2.4] ∪ [-1.6, -1.1], each with probability 1/2.
    offset = rng.uniform(0.0, 0.5, PARABOLA_COUNT)
    tail_z = np.where(rng.uniform(size=PARABOLA_COUNT) < 0.5, 1.9 + offset, -1.6 + offset)
    data["tail"] = parabola_points(tail_z, rng)
    return data


@pytest.fixture(scope="module")
def trained_parabola(single_thread, parabola_data):
    scaler = StandardScaler().fit(parabola_data["train"])
    windows = {name: scaler.transform(points).reshape(-1, 1, 2) for name, points in parabola_data.items()}
    model, _ = fit_model(windows["train"], windows["validation"], PARABOLA_CONFIG, progress=False)
    tensors = {name: as_tensor(array) for name, array in windows.items()}
    return model, scaler, tensors


@pytest.fixture(scope="module")
def parabola_scores(trained_parabola) -> dict[tuple[str, str], torch.Tensor]:
    """Scores keyed by (score, set), with ``likelihood-map`` and ``likelihood-encoder_mean`` for the two z*."""
    model, _, tensors = trained_parabola
    scores = {}
    for name in ("normal", "off_support", "tail"):
        for z_star in Z_STARS:
            scores[(f"likelihood-{z_star}", name)] = score_windows(model, tensors[name], "likelihood", z_star=z_star)
        scores[("reconstruction", name)] = score_windows(model, tensors[name], "reconstruction")
    return scores


def test_trained_parabola_anomaly_sets_full(parabola_data):
    assert len(parabola_data["off_support"]) == PARABOLA_COUNT
    assert len(parabola_data["tail"]) == PARABOLA_COUNT


@pytest.mark.parametrize("anomalies", ["off_support", "tail"])
@pytest.mark.parametrize("z_star", Z_STARS)
def test_trained_parabola_likelihood_auc(parabola_scores, anomalies, z_star):
    key = f"likelihood-{z_star}"
    likelihood_auc = roc_auc(parabola_scores[(key, "normal")], parabola_scores[(key, anomalies)])
    # Reconstruction error has no bound here, because it detects the tail only where the
    # trained decoder happens to extrapolate away from it.
    reconstruction_auc = roc_auc(parabola_scores[("reconstruction", "normal")], parabola_scores[("reconstruction", anomalies)])
    print(f"\nparabola {anomalies}: likelihood ({z_star}) AUC {likelihood_auc:.4f}, reconstruction AUC {reconstruction_auc:.4f}")

    assert likelihood_auc >= 0.9, f"reconstruction AUC on the same set: {reconstruction_auc:.4f}"


@pytest.mark.parametrize("z_star", Z_STARS)
def test_trained_parabola_log_density_near_truth(trained_parabola, parabola_data, parabola_scores, z_star):
    # By Gibbs' inequality the model's mean log-density on fresh normal points is at most the
    # true one, up to sampling error. The gap thus measures both the model's fit and how well
    # the Laplace estimate tracks the model's log p(x).
    _, scaler, _ = trained_parabola
    estimate = -parabola_scores[(f"likelihood-{z_star}", "normal")].numpy() - np.log(scaler.scale_).sum()
    exact = parabola_log_density(parabola_data["normal"])

    mean_gap = estimate.mean() - exact.mean()
    mean_absolute_gap = np.abs(estimate - exact).mean()
    print(f"\nparabola normal ({z_star}): mean log p estimate {estimate.mean():.4f}, true {exact.mean():.4f}, "
          f"mean |gap| {mean_absolute_gap:.4f}")

    assert abs(mean_gap) < 0.1
    assert mean_absolute_gap < 0.2


def test_trained_parabola_full_log_det_undershoots(trained_parabola, parabola_data):
    # jacobian_weight=1.0 subtracts ½ log det(J̃ᵀJ̃ + I) more than the Laplace integral does,
    # so its mean log-density falls well below the true one.
    model, scaler, tensors = trained_parabola
    weight_one = -score_windows(model, tensors["normal"], "likelihood", jacobian_weight=1.0).numpy()
    estimate = weight_one - np.log(scaler.scale_).sum()
    exact = parabola_log_density(parabola_data["normal"])

    shortfall = exact.mean() - estimate.mean()
    print(f"\nparabola normal: jacobian_weight=1.0 mean log p {estimate.mean():.4f}, true {exact.mean():.4f}")

    assert shortfall > 0.5


# Sine series


def sine_series(length: int, rng: np.random.Generator) -> np.ndarray:
    phase = 2 * np.pi * np.arange(length) / SINE_PERIOD
    clean = np.stack([np.sin(phase), 0.5 * np.cos(phase), np.sin(2 * phase + 0.3)], axis=1)
    return clean + SINE_NOISE * rng.standard_normal(clean.shape)


@pytest.fixture(scope="module")
def trained_sine(single_thread):
    """A DenseVAE trained on a three-channel sine series, and 300 test windows that follow its training span."""
    window = SINE_CONFIG.window
    test_steps = SINE_TEST_WINDOWS + window - 1
    values = sine_series(SINE_FIT_STEPS + SINE_VALIDATION_STEPS + test_steps, np.random.default_rng(0))
    fit_part = values[:SINE_FIT_STEPS]
    validation_part = values[SINE_FIT_STEPS : SINE_FIT_STEPS + SINE_VALIDATION_STEPS]
    test_part = values[SINE_FIT_STEPS + SINE_VALIDATION_STEPS :]

    scaler = StandardScaler().fit(fit_part)
    model, _ = fit_model(
        as_windows(scaler, fit_part, window), as_windows(scaler, validation_part, window), SINE_CONFIG, progress=False
    )
    return model, as_tensor(as_windows(scaler, test_part, window))


@pytest.fixture(scope="module")
def sine_importance(trained_sine) -> torch.Tensor:
    model, x = trained_sine
    generator = torch.Generator().manual_seed(0)
    return score_windows(model, x, "importance", samples=IMPORTANCE_SAMPLES, generator=generator)


def test_trained_sine_test_window_count(trained_sine):
    _, x = trained_sine

    assert tuple(x.shape) == (SINE_TEST_WINDOWS, 16, 3)


@pytest.mark.parametrize("z_star", Z_STARS)
def test_trained_likelihood_tracks_importance(trained_sine, sine_importance, z_star):
    model, x = trained_sine

    likelihood = score_windows(model, x, "likelihood", z_star=z_star)

    correlation = float(np.corrcoef(likelihood.numpy(), sine_importance.numpy())[0, 1])
    mean_gap = (likelihood - sine_importance).mean().item()
    print(f"\nsine normal windows ({z_star}): Pearson r {correlation:.4f} with importance (K={IMPORTANCE_SAMPLES}), "
          f"mean score gap {mean_gap:.3f} nats")
    assert correlation >= 0.95


# Chunking

# Each case is (options, number of windows). With one window per chunk, MAP runs a separate
# Newton search for each window, so it is checked on fewer windows.
CHUNK_CASES = [
    ({}, SINE_TEST_WINDOWS),
    ({"z_star": "map"}, 10),
    ({"form": "manifold", "jacobian": "encoder"}, SINE_TEST_WINDOWS),
]


@pytest.mark.parametrize(("options", "count"), CHUNK_CASES)
def test_trained_likelihood_chunking_float32(trained_sine, options, count):
    # The float32 decoder's output rounds differently with the batch size, and the float64
    # test below shows that the chunking itself is exact. Whitened by the small noise
    # variances, the rounding moves a score by about 2e-5 nats. The scores' standard
    # deviation over these windows is about 4.8 nats.
    model, x = trained_sine
    x = x[:count]

    one_chunk = score_windows(model, x, "likelihood", **options)
    chunks_of_one = score_windows(model, x, "likelihood", memory_budget_mb=1e-9, **options)

    difference = (one_chunk - chunks_of_one).abs().max().item()
    print(f"\nfloat32 model {options}: max |difference| between chunkings {difference:.2e} nats")
    assert difference < 1e-3


@pytest.mark.parametrize(("options", "count"), CHUNK_CASES)
def test_trained_likelihood_chunking_float64(trained_sine, options, count):
    model, x = trained_sine
    model = copy.deepcopy(model).double()
    x = x[:count].double()

    one_chunk = score_windows(model, x, "likelihood", **options)
    chunks_of_one = score_windows(model, x, "likelihood", memory_budget_mb=1e-9, **options)

    assert torch.allclose(chunks_of_one, one_chunk, rtol=0, atol=1e-9)
