"""Scores on a linear-Gaussian VAE, where ``log p(x)`` is known in closed form.

For ``f(z) = W z + b`` and ``z ~ N(0, I)``, ``x ~ N(b, W Wᵀ + Σ)``, which
``torch.distributions.LowRankMultivariateNormal`` evaluates exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import LowRankMultivariateNormal

from streamad.models.base import MIN_NOISE_VAR, WindowVAE
from streamad.scores import channel_contributions, likelihood_terms, score_windows

SIGMA = 0.1


class LinearGaussianVAE(WindowVAE):
    """A VAE with decoder ``f(z) = W z + b`` and the linear encoder ``μ_e(x) = A (x - b)``.

    ``encoder`` picks ``A``: ``"posterior"`` gives the exact posterior mean
    ``(WᵀΣ⁻¹W + I)⁻¹ WᵀΣ⁻¹ (x - b)``, which is also the MAP point, and
    ``"pseudo_inverse"`` gives ``(WᵀΣ⁻¹W)⁻¹ WᵀΣ⁻¹ (x - b)``, the projection onto the
    decoder's subspace in the Σ-weighted norm. The encoder's variances are the diagonal
    of the exact posterior covariance times ``variance_scale``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        noise_var: torch.Tensor,
        window: int,
        channels: int,
        encoder: str = "posterior",
        variance_scale: float = 1.0,
    ) -> None:
        data_dim, latent = weight.shape
        assert data_dim == window * channels
        super().__init__(window, channels, latent, noise="channel" if noise_var.numel() > 1 else "shared")
        self.double()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        with torch.no_grad():
            self.log_noise_var.copy_(torch.log(noise_var - MIN_NOISE_VAR))

        inverse_var = 1.0 / noise_var.expand(channels).repeat(window)
        precision_data = weight.T @ (inverse_var[:, None] * weight)
        posterior_covariance = torch.linalg.inv(precision_data + torch.eye(latent, dtype=weight.dtype))
        if encoder == "posterior":
            matrix = posterior_covariance @ weight.T * inverse_var
        else:
            matrix = torch.linalg.solve(precision_data, weight.T * inverse_var)
        self.register_buffer("encoder_matrix", matrix)
        self.register_buffer("encoder_logvar", torch.log(variance_scale * posterior_covariance.diagonal()))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centred = x.reshape(x.shape[0], -1) - self.bias
        mu = centred @ self.encoder_matrix.T
        return mu, self.encoder_logvar.expand_as(mu)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.weight.T + self.bias).reshape(z.shape[0], self.window, self.channels)

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        cov_diag = self.noise_var().repeat(self.window)
        distribution = LowRankMultivariateNormal(loc=self.bias, cov_factor=self.weight, cov_diag=cov_diag)
        return distribution.log_prob(x.reshape(x.shape[0], -1))


def make_model(
    window: int = 3,
    channels: int = 2,
    latent: int = 2,
    noise_var: torch.Tensor | None = None,
    seed: int = 0,
    **encoder_options,
) -> LinearGaussianVAE:
    generator = torch.Generator().manual_seed(seed)
    data_dim = window * channels
    weight = torch.randn(data_dim, latent, generator=generator, dtype=torch.float64)
    bias = torch.randn(data_dim, generator=generator, dtype=torch.float64)
    if noise_var is None:
        noise_var = torch.tensor([SIGMA**2], dtype=torch.float64)
    return LinearGaussianVAE(weight, bias, noise_var, window, channels, **encoder_options)


def sample_windows(model: LinearGaussianVAE, count: int, seed: int = 1) -> torch.Tensor:
    """Draw windows from the model itself."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, model.latent, generator=generator, dtype=torch.float64)
    noise = torch.randn(count, model.window, model.channels, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        return model.decode(z) + model.noise_var().sqrt() * noise


def push_off_subspace(model: LinearGaussianVAE, x: torch.Tensor, distance: float) -> torch.Tensor:
    """Move each window by ``distance`` along a unit direction orthogonal to the columns of W."""
    data_dim = model.data_dim
    generator = torch.Generator().manual_seed(2)
    basis = torch.cat(
        [model.weight.detach(), torch.randn(data_dim, data_dim, generator=generator, dtype=torch.float64)], dim=1
    )
    q, _ = torch.linalg.qr(basis)
    normal = q[:, model.latent]
    assert torch.allclose(model.weight.detach().T @ normal, torch.zeros(model.latent, dtype=torch.float64), atol=1e-12)
    return x + distance * normal.reshape(model.window, model.channels)


def windows_on_and_off_subspace(model: LinearGaussianVAE) -> torch.Tensor:
    """Return 8 windows from the model, then the same moved 10σ and 50σ off the decoder's subspace."""
    normal = sample_windows(model, 8)
    return torch.cat([normal, push_off_subspace(model, normal, 10 * SIGMA), push_off_subspace(model, normal, 50 * SIGMA)])


@pytest.mark.parametrize("shape", [(3, 2), (6, 1)])
def test_laplace_at_map_is_exact(shape):
    window, channels = shape
    model = make_model(window, channels, encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    score = score_windows(model, x, "likelihood", form="laplace", z_star="map")

    expected = -model.exact_log_prob(x).detach()
    assert score.dtype == torch.float64
    assert torch.allclose(score, expected, rtol=0, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    window=st.integers(1, 4),
    channels=st.integers(1, 3),
    latent=st.integers(1, 3),
    noise_var=st.lists(st.floats(0.005, 1.0), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_laplace_exact_for_random_models(window, channels, latent, noise_var, seed):
    latent = min(latent, window * channels)
    variances = torch.tensor(noise_var[:channels], dtype=torch.float64)
    model = make_model(window, channels, latent, noise_var=variances, seed=seed)
    x = sample_windows(model, 4, seed=seed + 1)

    score = score_windows(model, x, "likelihood", z_star="map")

    expected = -model.exact_log_prob(x).detach()
    assert torch.allclose(score, expected, rtol=0, atol=1e-6)


def test_laplace_exact_with_channel_noise():
    noise_var = torch.tensor([0.01, 0.04, 0.0025], dtype=torch.float64)
    model = make_model(window=2, channels=3, noise_var=noise_var, encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    score = score_windows(model, x, "likelihood", z_star="map")

    expected = -model.exact_log_prob(x).detach()
    assert torch.allclose(score, expected, rtol=0, atol=1e-6)


def test_laplace_at_posterior_mean_encoder():
    model = make_model(encoder="posterior")
    x = windows_on_and_off_subspace(model)

    score = score_windows(model, x, "likelihood", z_star="encoder_mean")

    expected = -model.exact_log_prob(x).detach()
    assert torch.allclose(score, expected, rtol=0, atol=1e-6)


def test_manifold_close_to_exact():
    model = make_model(encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    score = score_windows(model, x, "likelihood", form="manifold", z_star="map")

    expected = -model.exact_log_prob(x).detach()
    gap = (score - expected).abs().max().item()
    assert gap < 0.05
    # The manifold form drops the prior curvature I, which makes det(M) smaller, so it
    # scores every window as slightly less anomalous.
    assert bool((score < expected).all())


def test_manifold_isotropic_closed_form():
    model = make_model(encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    terms = likelihood_terms(model, x, form="manifold", z_star="map")

    z = terms.z_star.detach()
    weight = model.weight.detach()
    residual = x.reshape(x.shape[0], -1) - (z @ weight.T + model.bias.detach())
    data_dim, latent = weight.shape
    variance = SIGMA**2
    log_prior = -0.5 * z.square().sum(dim=1) - 0.5 * latent * math.log(2 * math.pi)
    expected = (
        -residual.square().sum(dim=1) / (2 * variance)
        - 0.5 * (data_dim - latent) * math.log(2 * math.pi * variance)
        + log_prior
        - 0.5 * torch.logdet(weight.T @ weight)
    )
    assert torch.allclose(terms.log_density, expected, rtol=0, atol=1e-9)


def test_jacobian_weight_one_adds_log_singular_values():
    model = make_model(encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    half = score_windows(model, x, "likelihood", form="manifold", z_star="map", jacobian_weight=0.5)
    full = score_windows(model, x, "likelihood", form="manifold", z_star="map", jacobian_weight=1.0)

    singular_values = torch.linalg.svdvals(model.weight.detach() / SIGMA)
    expected = torch.log(singular_values).sum()
    assert torch.allclose(full - half, expected.expand_as(half), rtol=0, atol=1e-9)


@pytest.mark.parametrize("form", ["laplace", "manifold"])
def test_encoder_jacobian_matches_decoder(form):
    # With the Σ-weighted pseudo-inverse as encoder, J̃_e is the pseudo-inverse of J̃, so
    # both Jacobians must give the same volume term, also with per-channel noise.
    noise_var = torch.tensor([0.01, 0.03], dtype=torch.float64)
    model = make_model(window=3, channels=2, noise_var=noise_var, encoder="pseudo_inverse")
    x = windows_on_and_off_subspace(model)

    from_decoder = likelihood_terms(model, x, form=form, jacobian="decoder")
    from_encoder = likelihood_terms(model, x, form=form, jacobian="encoder")

    assert torch.allclose(from_encoder.log_volume, from_decoder.log_volume, rtol=0, atol=1e-9)
    assert torch.allclose(from_encoder.log_density, from_decoder.log_density, rtol=0, atol=1e-9)


def test_importance_converges_to_exact():
    model = make_model(encoder="posterior")
    x = windows_on_and_off_subspace(model)[::4]
    generator = torch.Generator().manual_seed(3)

    score = score_windows(model, x, "importance", samples=2000, generator=generator)

    expected = -model.exact_log_prob(x).detach()
    assert (score - expected).abs().max().item() < 0.05


def test_elbo_above_importance_on_average():
    # A proposal much wider than the posterior leaves a large gap between -ELBO and -log p(x).
    model = make_model(encoder="posterior", variance_scale=20.0)
    x = sample_windows(model, 32)
    generator = torch.Generator().manual_seed(4)

    elbo = score_windows(model, x, "elbo", samples=16, generator=generator)
    importance = score_windows(model, x, "importance", samples=64, generator=generator)
    exact = -model.exact_log_prob(x).detach()

    assert elbo.mean() > importance.mean()
    assert importance.mean() > exact.mean()


def test_elbo_exact_for_exact_posterior():
    # With the exact posterior as q the ELBO's gap KL(q ‖ p(z|x)) comes only from the
    # diagonal q, so -ELBO stays close above -log p(x).
    model = make_model(encoder="posterior")
    x = sample_windows(model, 32)
    generator = torch.Generator().manual_seed(5)

    elbo = score_windows(model, x, "elbo", samples=256, generator=generator)

    exact = -model.exact_log_prob(x).detach()
    assert (elbo - exact).mean().item() > 0
    assert (elbo - exact).mean().item() < 1.0


def test_reconstruction_hand_computed():
    model = make_model(window=3, channels=2, encoder="posterior")
    x = torch.arange(6, dtype=torch.float64).reshape(1, 3, 2) / 10

    score = score_windows(model, x, "reconstruction")

    weight = model.weight.detach()
    bias = model.bias.detach()
    mu = model.encoder_matrix @ (x.reshape(-1) - bias)
    expected = ((x.reshape(-1) - (weight @ mu + bias)) ** 2).sum()
    assert score.shape == (1,)
    assert score.item() == pytest.approx(expected.item(), rel=1e-12)


def test_channel_contributions_sum_to_residual_part():
    noise_var = torch.tensor([0.01, 0.02, 0.04], dtype=torch.float64)
    model = make_model(window=4, channels=3, noise_var=noise_var, encoder="posterior")
    x = sample_windows(model, 6)

    contributions = channel_contributions(model, x, z_star="map")
    terms = likelihood_terms(model, x, z_star="map")

    assert contributions.shape == (6, 3)
    assert contributions.dtype == torch.float64
    assert torch.allclose(contributions.sum(dim=1), -terms.log_likelihood, rtol=0, atol=1e-9)


def test_channel_contributions_rank_faulty_channel():
    model = make_model(window=4, channels=3, encoder="posterior")
    x = sample_windows(model, 6)
    faulty = x.clone()
    faulty[:, 1:3, 2] += 1.0

    contributions = channel_contributions(model, faulty, z_star="map")

    assert contributions.argmax(dim=1).tolist() == [2] * 6
