"""The score API on the real models: options, model state, Jacobians, chunking and linear algebra."""

from __future__ import annotations

import math

import pytest
import torch

from streamad.models import ConvVAE, DenseVAE
from streamad.scores import SCORE_NAMES, channel_contributions, likelihood_terms, score_windows
from streamad.scores.jacobian import decoder_jacobian, encoder_jacobian
from streamad.scores.latent import map_latent
from streamad.scores.linalg import SINGULAR_VALUE_FLOOR, log_det_capacitance, log_det_gram


def make_dense(seed: int = 0, dtype: torch.dtype = torch.float64) -> DenseVAE:
    torch.manual_seed(seed)
    model = DenseVAE(window=5, channels=2, latent=3, hidden=16).to(dtype)
    with torch.no_grad():
        model.log_noise_var.copy_(torch.tensor([-3.0, -2.0]))
    return model


def make_conv(seed: int = 0) -> ConvVAE:
    torch.manual_seed(seed)
    return ConvVAE(window=6, channels=2, latent=2, hidden=4).double()


def make_windows(model, count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, model.window, model.channels, generator=generator, dtype=model.log_noise_var.dtype)


# Scores: defaults


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_scores_float64_per_window(name):
    model = make_dense(dtype=torch.float32)
    x = make_windows(model, 4)

    score = score_windows(model, x, name)

    assert score.dtype == torch.float64
    assert score.shape == (4,)
    assert bool(torch.isfinite(score).all())


@pytest.mark.parametrize("name", SCORE_NAMES)
def test_scores_empty_batch(name):
    model = make_dense()
    x = make_windows(model, 0)

    score = score_windows(model, x, name)

    assert score.shape == (0,)
    assert score.dtype == torch.float64


def test_default_score_is_likelihood():
    model = make_dense()
    x = make_windows(model, 3)

    default = score_windows(model, x)

    likelihood = -likelihood_terms(model, x).log_density
    assert torch.equal(default, likelihood)


# Model state


@pytest.mark.parametrize(
    "name, options",
    [
        ("likelihood", {"z_star": "map", "map_steps": 3}),
        ("likelihood", {"jacobian": "encoder"}),
        ("reconstruction", {}),
        ("elbo", {"samples": 2}),
        ("importance", {"samples": 2}),
    ],
)
def test_scoring_restores_training_flags(name, options):
    model = make_dense()
    model.train()
    model.decoder[0].eval()
    flags = {module_name: module.training for module_name, module in model.named_modules()}

    score_windows(model, make_windows(model, 3), name, **options)

    after = {module_name: module.training for module_name, module in model.named_modules()}
    assert after == flags


def test_scoring_leaves_no_parameter_gradients():
    model = make_dense()
    x = make_windows(model, 3)

    score_windows(model, x, "likelihood", z_star="map", map_steps=3)
    score_windows(model, x, "likelihood", jacobian="encoder")
    channel_contributions(model, x, z_star="map", map_steps=3)

    assert all(parameter.grad is None for parameter in model.parameters())


def test_scoring_runs_decoder_in_eval_mode():
    # With dropout active the decoder would be random and two calls would differ.
    torch.manual_seed(0)
    model = DenseVAE(window=4, channels=1, latent=2, hidden=8).double()
    model.decoder.insert(1, torch.nn.Dropout(0.5))
    model.train()
    x = make_windows(model, 3)

    first = score_windows(model, x, "likelihood")
    second = score_windows(model, x, "likelihood")

    assert torch.equal(first, second)


# Batch size and chunking


@pytest.mark.parametrize("make_model", [make_dense, make_conv])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"z_star": "map"},
        {"form": "manifold", "jacobian": "encoder"},
    ],
)
def test_likelihood_independent_of_batch(make_model, options):
    model = make_model()
    x = make_windows(model, 7)
    bytes_per_window = model.data_dim * model.latent * 8

    together = score_windows(model, x, "likelihood", **options)
    one_by_one = torch.cat([score_windows(model, x[i : i + 1], "likelihood", **options) for i in range(7)])
    chunks_of_three = score_windows(
        model, x, "likelihood", memory_budget_mb=3 * bytes_per_window / 2**20, **options
    )
    chunks_of_one = score_windows(model, x, "likelihood", memory_budget_mb=1e-9, **options)

    assert torch.allclose(one_by_one, together, rtol=0, atol=1e-9)
    assert torch.allclose(chunks_of_three, together, rtol=0, atol=1e-9)
    assert torch.allclose(chunks_of_one, together, rtol=0, atol=1e-9)


def test_reconstruction_independent_of_batch():
    model = make_conv()
    x = make_windows(model, 5)

    together = score_windows(model, x, "reconstruction")
    one_by_one = torch.cat([score_windows(model, x[i : i + 1], "reconstruction") for i in range(5)])

    assert torch.allclose(one_by_one, together, rtol=0, atol=1e-12)


def test_channel_contributions_independent_of_chunking():
    model = make_dense()
    x = make_windows(model, 5)

    together = channel_contributions(model, x, z_star="map")
    chunks_of_one = channel_contributions(model, x, z_star="map", memory_budget_mb=1e-9)

    assert torch.allclose(chunks_of_one, together, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["elbo", "importance"])
def test_sampling_scores_reproducible(name):
    model = make_dense()
    x = make_windows(model, 4)

    first = score_windows(model, x, name, samples=8, generator=torch.Generator().manual_seed(7))
    chunked = score_windows(
        model, x, name, samples=8, generator=torch.Generator().manual_seed(7), memory_budget_mb=1e-9
    )
    other_seed = score_windows(model, x, name, samples=8, generator=torch.Generator().manual_seed(8))

    assert torch.allclose(chunked, first, rtol=0, atol=1e-12)
    assert not torch.allclose(other_seed, first)


# MAP search


def test_map_point_is_stationary():
    model = make_dense()
    x = make_windows(model, 4)

    z = likelihood_terms(model, x, z_star="map").z_star.detach().requires_grad_(True)

    var = model.noise_var().detach()
    objective = 0.5 * ((x - model.decode(z)).square() / var).sum() + 0.5 * z.square().sum()
    (gradient,) = torch.autograd.grad(objective, z)
    assert gradient.abs().max().item() < 1e-8


def test_map_lowers_objective_from_start():
    model = make_dense()
    x = make_windows(model, 4)
    var = model.noise_var().detach()

    def objective(z):
        return 0.5 * ((x - model.decode(z)).square() / var).sum(dim=(1, 2)) + 0.5 * z.square().sum(dim=1)

    with torch.no_grad():
        start = model.encode(x)[0]
        z = map_latent(model, x, start, steps=50)
        assert bool((objective(z) < objective(start)).all())


# Jacobians against central finite differences


@pytest.mark.parametrize("make_model", [make_dense, make_conv])
def test_decoder_jacobian_matches_finite_differences(make_model):
    model = make_model().eval()
    z = torch.randn(3, model.latent, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    step = 1e-6

    with torch.no_grad():
        jacobian = decoder_jacobian(model, z)
        columns = []
        for j in range(model.latent):
            offset = torch.zeros_like(z)
            offset[:, j] = step
            difference = model.decode(z + offset) - model.decode(z - offset)
            columns.append(difference.reshape(3, -1) / (2 * step))
        expected = torch.stack(columns, dim=-1)

    assert jacobian.shape == (3, model.data_dim, model.latent)
    assert torch.allclose(jacobian, expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("make_model", [make_dense, make_conv])
def test_encoder_jacobian_matches_finite_differences(make_model):
    model = make_model().eval()
    x = make_windows(model, 3)
    step = 1e-6

    with torch.no_grad():
        jacobian = encoder_jacobian(model, x)
        flat = x.reshape(3, -1)
        columns = []
        for j in range(model.data_dim):
            offset = torch.zeros_like(flat)
            offset[:, j] = step
            plus = model.encode((flat + offset).reshape(x.shape))[0]
            minus = model.encode((flat - offset).reshape(x.shape))[0]
            columns.append((plus - minus) / (2 * step))
        expected = torch.stack(columns, dim=-1)

    assert jacobian.shape == (3, model.latent, model.data_dim)
    assert torch.allclose(jacobian, expected, rtol=0, atol=1e-8)


# Log-determinants


def test_log_det_capacitance_determinant_lemma():
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(4, 6, 2, generator=generator, dtype=torch.float64)
    variance = torch.rand(6, generator=generator, dtype=torch.float64) + 0.1

    value = log_det_capacitance(jacobian / variance.sqrt()[:, None])

    covariance = torch.diag(variance) + jacobian @ jacobian.mT
    expected = torch.logdet(covariance) - torch.log(variance).sum()
    assert torch.allclose(value, expected, rtol=0, atol=1e-10)


def test_log_det_gram_sum_of_log_singular_values():
    generator = torch.Generator().manual_seed(1)
    jacobian = torch.randn(4, 6, 3, generator=generator, dtype=torch.float32)

    value = log_det_gram(jacobian)

    expected = 2 * torch.log(torch.linalg.svdvals(jacobian.double())).sum(dim=-1)
    assert value.dtype == torch.float64
    assert torch.allclose(value, expected, rtol=0, atol=1e-5)


def test_log_det_gram_rank_deficient_uses_floor():
    jacobian = torch.zeros(2, 4, 2, dtype=torch.float64)
    jacobian[:, 0, 0] = 3.0
    jacobian[1, 1, 1] = 2.0

    value = log_det_gram(jacobian)

    assert value[0].item() == pytest.approx(2 * (math.log(3.0) + math.log(SINGULAR_VALUE_FLOOR)), abs=1e-9)
    assert value[1].item() == pytest.approx(2 * (math.log(3.0) + math.log(2.0)), abs=1e-9)


def test_log_det_capacitance_rank_deficient_finite():
    jacobian = torch.zeros(1, 4, 2, dtype=torch.float64)
    jacobian[0, 0, 0] = 3.0

    value = log_det_capacitance(jacobian)

    assert value.item() == pytest.approx(math.log(10.0), abs=1e-9)


# Invalid input


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("nope", {}, "'nope'"),
        ("likelihood", {"form": "bogus"}, "'bogus'"),
        ("likelihood", {"z_star": "mode"}, "'mode'"),
        ("likelihood", {"jacobian": "both"}, "'both'"),
        ("likelihood", {"jacobian_weight": 0.0}, "0.0"),
        ("likelihood", {"jacobian_weight": -1.0}, "-1.0"),
        ("likelihood", {"jacobian_weight": float("nan")}, "nan"),
        ("likelihood", {"jacobian_weight": True}, "True"),
        ("likelihood", {"map_steps": 0}, "map_steps=0"),
        ("likelihood", {"map_steps": 2.5}, "2.5"),
        ("likelihood", {"memory_budget_mb": 0}, "memory_budget_mb=0"),
        ("likelihood", {"samples": 4}, "'samples'"),
        ("elbo", {"samples": 0}, "samples=0"),
        ("importance", {"samples": "many"}, "'many'"),
        ("importance", {"generator": 3}, "generator=3"),
        ("elbo", {"form": "laplace"}, "'form'"),
        ("reconstruction", {"z_star": "map"}, "'z_star'"),
    ],
)
def test_invalid_option_raises(name, options, fragment):
    model = make_dense()

    with pytest.raises(ValueError) as error:
        score_windows(model, make_windows(model, 2), name, **options)

    assert fragment in str(error.value)


def test_invalid_name_lists_choices():
    model = make_dense()

    with pytest.raises(ValueError) as error:
        score_windows(model, make_windows(model, 2), "Likelihood")

    for name in SCORE_NAMES:
        assert name in str(error.value)


def test_channel_contributions_invalid_option():
    model = make_dense()

    with pytest.raises(ValueError, match="'median'"):
        channel_contributions(model, make_windows(model, 2), z_star="median")


@pytest.mark.parametrize(
    "x, fragment",
    [
        (torch.zeros(2, 4, 2, dtype=torch.float64), "(2, 4, 2)"),
        (torch.zeros(5, 2, dtype=torch.float64), "(5, 2)"),
        (torch.zeros(2, 5, 2, dtype=torch.float32), "torch.float32"),
        ([[0.0]], "list"),
    ],
)
def test_invalid_windows_raise(x, fragment):
    model = make_dense()

    with pytest.raises(ValueError) as error:
        score_windows(model, x, "likelihood")

    assert fragment in str(error.value)


def test_non_finite_windows_named():
    model = make_dense()
    x = make_windows(model, 4)
    x[2, 1, 0] = float("nan")
    x[3, 0, 1] = float("inf")

    with pytest.raises(ValueError, match=r"windows \[2, 3\]"):
        score_windows(model, x, "reconstruction")
