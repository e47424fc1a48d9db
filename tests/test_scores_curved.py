"""The likelihood score on curved decoders, against log p(x) by numerical integration.

Both models have ``d = 1`` and ``D = 2``, so ``p(x) = ∫ N(x; f(z), σ²I) N(z; 0, 1) dz``
is a one-dimensional integral that quadrature evaluates to many digits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from sklearn.metrics import roc_auc_score

from streamad.models.base import MIN_NOISE_VAR, WindowVAE
from streamad.scores import likelihood_terms, score_windows


class CurveVAE(WindowVAE):
    """``f(z) = [z, exp(2z)/4]`` with noise ``σ = 0.05`` and the encoder mean ``μ_e(x) = x_0``."""

    sigma = 0.05

    def __init__(self) -> None:
        super().__init__(window=1, channels=2, latent=1, noise="shared")
        self.double()
        with torch.no_grad():
            self.log_noise_var.fill_(math.log(self.sigma**2 - MIN_NOISE_VAR))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = x[:, 0, :1]
        return mu, torch.full_like(mu, -4.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.stack([z[:, 0], torch.exp(2 * z[:, 0]) / 4], dim=-1).reshape(z.shape[0], 1, 2)

    @staticmethod
    def decode_numpy(z: float) -> np.ndarray:
        return np.array([z, math.exp(2 * z) / 4])

    def exact_log_prob(self, point: np.ndarray, z_centre: float) -> float:
        def integrand(z: float) -> float:
            residual = point - self.decode_numpy(z)
            return math.exp(
                -0.5 * residual @ residual / self.sigma**2
                - math.log(2 * math.pi * self.sigma**2)
                - 0.5 * z * z
                - 0.5 * math.log(2 * math.pi)
            )

        value, _ = quad(integrand, z_centre - 1, z_centre + 1, points=[z_centre], limit=200, epsabs=0, epsrel=1e-12)
        return math.log(value)


# Latent value, log p(x) by quadrature, Laplace and manifold estimates at the MAP point.
CURVE_CASES = [(1.5, -2.2787, -2.2788, -2.279), (-1.5, 0.0341, 0.0341, 0.035)]


@pytest.fixture(scope="module")
def curve_terms():
    model = CurveVAE()
    x = torch.stack([model.decode(torch.tensor([[z]], dtype=torch.float64))[0] for z, *_ in CURVE_CASES])
    laplace = likelihood_terms(model, x, form="laplace", z_star="map")
    manifold = likelihood_terms(model, x, form="manifold", z_star="map")
    return model, x, laplace, manifold


@pytest.mark.parametrize("case", range(len(CURVE_CASES)))
def test_curve_quadrature_reference(curve_terms, case):
    model, x, _, _ = curve_terms
    z, expected, _, _ = CURVE_CASES[case]

    exact = model.exact_log_prob(x[case, 0].numpy(), z)

    assert exact == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("case", range(len(CURVE_CASES)))
def test_curve_laplace_matches_quadrature(curve_terms, case):
    model, x, laplace, _ = curve_terms
    z, _, expected_laplace, _ = CURVE_CASES[case]
    exact = model.exact_log_prob(x[case, 0].numpy(), z)

    estimate = laplace.log_density[case].item()

    assert estimate == pytest.approx(exact, abs=0.005)
    assert estimate == pytest.approx(expected_laplace, abs=0.0005)


@pytest.mark.parametrize("case", range(len(CURVE_CASES)))
def test_curve_manifold_estimate(curve_terms, case):
    _, _, _, manifold = curve_terms
    _, _, _, expected_manifold = CURVE_CASES[case]

    assert manifold.log_density[case].item() == pytest.approx(expected_manifold, abs=0.01)


def test_curve_without_jacobian_ties(curve_terms):
    # log p(x|z*) + log p(z*) is the same for both points, so the residual and the prior
    # alone cannot tell that f(1.5), where the decoder stretches space 10-fold, is less
    # likely than f(-1.5). Only the volume term separates them. The Laplace expression
    # without its log-det term adds (d/2) log 2π = 0.919 to both, about 3.03.
    _, _, laplace, _ = curve_terms
    without_jacobian = laplace.log_likelihood + laplace.log_prior

    assert without_jacobian[0].item() == pytest.approx(2.11, abs=0.01)
    assert without_jacobian[1].item() == pytest.approx(2.11, abs=0.01)
    assert abs(without_jacobian[0] - without_jacobian[1]).item() < 0.02
    assert laplace.log_density[0] < laplace.log_density[1] - 2.0


def test_curve_reconstruction_ties():
    model = CurveVAE()
    x = torch.stack([model.decode(torch.tensor([[z]], dtype=torch.float64))[0] for z, *_ in CURVE_CASES])

    score = score_windows(model, x, "reconstruction")

    assert score.tolist() == pytest.approx([0.0, 0.0], abs=1e-20)


class ParabolaVAE(WindowVAE):
    """The parabola ``x = [z², z] + e`` with ``z ~ N(0.5, 0.15²)`` and noise ``σ = 0.1``.

    The latent is reparameterised as ``z = 0.5 + 0.15 u`` with ``u ~ N(0, 1)``, the prior
    that scores assume. The encoder mean is the orthogonal projection of ``x`` onto the
    parabola, so that the reconstruction score is the squared distance to the manifold.
    """

    sigma = 0.1
    centre = 0.5
    spread = 0.15

    def __init__(self) -> None:
        super().__init__(window=1, channels=2, latent=1, noise="shared")
        self.double()
        with torch.no_grad():
            self.log_noise_var.fill_(math.log(self.sigma**2 - MIN_NOISE_VAR))

    def curve_point(self, u: torch.Tensor) -> torch.Tensor:
        return self.centre + self.spread * u

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        z = self.curve_point(u[:, 0])
        return torch.stack([z.square(), z], dim=-1).reshape(u.shape[0], 1, 2)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = project_onto_parabola(x[:, 0, 0], x[:, 0, 1])
        mu = ((z - self.centre) / self.spread)[:, None]
        return mu, torch.full_like(mu, -2.0)


def project_onto_parabola(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Return the ``z`` that minimises ``(a - z²)² + (b - z)²``, by grid search and Newton steps."""
    grid = torch.linspace(-4.0, 5.0, 1801, dtype=a.dtype)
    distance = (a[:, None] - grid.square()) ** 2 + (b[:, None] - grid) ** 2
    z = grid[distance.argmin(dim=1)]
    for _ in range(5):
        # Half the derivative of the squared distance, and its derivative.
        gradient = 2 * z**3 + (1 - 2 * a) * z - b
        curvature = 6 * z**2 + 1 - 2 * a
        z = z - gradient / curvature
    return z


def parabola_log_density(points: np.ndarray) -> np.ndarray:
    """Return log p(x) of the parabola model by a Riemann sum over a dense grid of u."""
    sigma, centre, spread = ParabolaVAE.sigma, ParabolaVAE.centre, ParabolaVAE.spread
    u, step = np.linspace(-10.0, 10.0, 4001, retstep=True)
    z = centre + spread * u
    squared = (points[:, :1] - z**2) ** 2 + (points[:, 1:] - z) ** 2
    log_integrand = -0.5 * squared / sigma**2 - math.log(2 * math.pi * sigma**2) - 0.5 * u**2 - 0.5 * math.log(2 * math.pi)
    peak = log_integrand.max(axis=1, keepdims=True)
    return peak[:, 0] + np.log(np.exp(log_integrand - peak).sum(axis=1) * step)


@pytest.fixture(scope="module")
def parabola_sets():
    rng = np.random.default_rng(0)
    model = ParabolaVAE()
    count = 500

    z = ParabolaVAE.centre + ParabolaVAE.spread * rng.standard_normal(count)
    normal = np.stack([z**2, z], axis=1) + ParabolaVAE.sigma * rng.standard_normal((count, 2))

    candidates = np.stack([rng.uniform(-1.0, 3.0, 8 * count), rng.uniform(-1.5, 2.0, 8 * count)], axis=1)
    off_support = candidates[parabola_log_density(candidates) < math.log(1e-3)][:count]
    assert len(off_support) == count

    # z uniform on [1.9, 2.4] ∪ [-1.6, -1.1], each interval with probability 1/2.
    offset = rng.uniform(0.0, 0.5, count)
    tail_z = np.where(rng.uniform(size=count) < 0.5, 1.9 + offset, -1.6 + offset)
    tail = np.stack([tail_z**2, tail_z], axis=1) + ParabolaVAE.sigma * rng.standard_normal((count, 2))

    def windows(points: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(points).reshape(-1, 1, 2)

    return model, windows(normal), windows(off_support), windows(tail)


def roc_auc(model, normal, anomalies, name, **options) -> float:
    scores = score_windows(model, torch.cat([normal, anomalies]), name, **options)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
    return roc_auc_score(labels, scores.numpy())


def test_parabola_reconstruction_blind_to_tail(parabola_sets):
    model, normal, _, tail = parabola_sets

    auc = roc_auc(model, normal, tail, "reconstruction")

    assert 0.45 <= auc <= 0.55


@pytest.mark.parametrize("z_star", ["map", "encoder_mean"])
def test_parabola_likelihood_detects_tail(parabola_sets, z_star):
    model, normal, _, tail = parabola_sets

    auc = roc_auc(model, normal, tail, "likelihood", z_star=z_star)

    assert auc >= 0.99


@pytest.mark.parametrize("z_star", ["map", "encoder_mean"])
def test_parabola_likelihood_detects_off_support(parabola_sets, z_star):
    model, normal, off_support, _ = parabola_sets

    auc = roc_auc(model, normal, off_support, "likelihood", z_star=z_star)

    assert auc >= 0.99


def test_parabola_likelihood_tracks_true_density(parabola_sets):
    # On normal points the Laplace estimate at the MAP point is close to log p(x).
    model, normal, _, _ = parabola_sets

    estimate = -score_windows(model, normal, "likelihood", z_star="map").numpy()

    exact = parabola_log_density(normal.reshape(-1, 2).numpy())
    assert np.abs(estimate - exact).mean() < 0.05
