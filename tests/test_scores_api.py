"""The score API on the real models: options, model state, Jacobians, chunking and linear algebra."""

from __future__ import annotations

import math

import pytest
import torch

from streamad.models import ConvVAE, DenseVAE
from streamad.scores import SCORE_NAMES, channel_contributions, derive_window_seed, likelihood_terms, score_windows
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


def _scores_from_draws(model, x, name, noise):
    """Compute the ``elbo`` or ``importance`` score from the standard normal draws ``noise`` (K, B, d) with torch.distributions."""
    normal = torch.distributions.Normal
    with torch.no_grad():
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + std * noise
        samples, batch, latent = z.shape
        mean = model.decode(z.reshape(-1, latent)).reshape(samples, batch, model.window, model.channels)
        log_likelihood = normal(mean, model.noise_var().sqrt()).log_prob(x).sum(dim=(-2, -1))
        if name == "elbo":
            kl = torch.distributions.kl_divergence(normal(mu, std), normal(0.0, 1.0)).sum(dim=-1)
            return kl - log_likelihood.mean(dim=0)
        log_weights = log_likelihood + normal(0.0, 1.0).log_prob(z).sum(dim=-1) - normal(mu, std).log_prob(z).sum(dim=-1)
        return -(torch.logsumexp(log_weights, dim=0) - math.log(samples))


@pytest.mark.parametrize("name", ["elbo", "importance"])
def test_generator_draws_whole_batch(name):
    model = make_dense()
    x = make_windows(model, 4)

    score = score_windows(model, x, name, samples=8, generator=torch.Generator().manual_seed(7))

    noise = torch.randn((8, 4, model.latent), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(score, _scores_from_draws(model, x, name, noise), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["elbo", "importance"])
def test_window_seeds_draw_from_each_seed(name):
    model = make_dense()
    x = make_windows(model, 3)
    seeds = [derive_window_seed(0, "pump", position) for position in range(3)]

    score = score_windows(model, x, name, samples=8, window_seeds=seeds)

    noise = torch.stack(
        [torch.randn((8, model.latent), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) for seed in seeds],
        dim=1,
    )
    assert torch.allclose(score, _scores_from_draws(model, x, name, noise), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["elbo", "importance"])
def test_window_seeds_independent_of_batch(name):
    model = make_dense()
    x = make_windows(model, 5)
    seeds = [derive_window_seed(3, "pump", position) for position in range(5)]
    reverse = list(range(4, -1, -1))

    together = score_windows(model, x, name, samples=8, window_seeds=seeds)
    reversed_order = score_windows(model, x[reverse], name, samples=8, window_seeds=[seeds[i] for i in reverse])
    one_by_one = torch.cat([score_windows(model, x[i : i + 1], name, samples=8, window_seeds=seeds[i : i + 1]) for i in range(5)])
    chunked = score_windows(model, x, name, samples=8, window_seeds=seeds, memory_budget_mb=1e-9)
    # An int64 tensor stores only seeds below 2**63, so both calls take the seeds halved.
    from_tensor = score_windows(model, x, name, samples=8, window_seeds=torch.tensor([seed >> 1 for seed in seeds]))
    halved_seeds = score_windows(model, x, name, samples=8, window_seeds=[seed >> 1 for seed in seeds])

    assert torch.allclose(reversed_order, together[reverse], rtol=0, atol=1e-12)
    assert torch.allclose(one_by_one, together, rtol=0, atol=1e-12)
    assert torch.allclose(chunked, together, rtol=0, atol=1e-12)
    assert torch.equal(from_tensor, halved_seeds)


@pytest.mark.parametrize("name", ["elbo", "importance"])
def test_window_seeds_separate_equal_windows(name):
    model = make_dense()
    x = make_windows(model, 1).expand(3, -1, -1)
    first, second = derive_window_seed(0, "pump", 10), derive_window_seed(0, "pump", 11)

    score = score_windows(model, x, name, samples=8, window_seeds=[first, first, second])

    assert score[0].item() == score[1].item()
    assert abs(score[2].item() - score[0].item()) > 1e-6


def test_window_seed_stable_value():
    # A changed derivation re-draws every window, and instances of two releases then disagree.
    assert derive_window_seed(0, "pump-7", 1_700_000_000_000) == 1899582018196546100


def test_window_seed_depends_on_each_field():
    base = derive_window_seed(0, "a", 12)
    others = [
        derive_window_seed(1, "a", 12),
        derive_window_seed(0, "b", 12),
        derive_window_seed(0, "a", 13),
        derive_window_seed(0, "a1", 2),
        derive_window_seed(-1, "a", 12),
    ]

    assert 0 <= base < 2**64
    assert all(0 <= seed < 2**64 for seed in others)
    assert len(set(others + [base])) == len(others) + 1


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ((0.5, "a", 1), "seed=0.5"),
        ((True, "a", 1), "seed=True"),
        ((0, 7, 1), "series=7"),
        ((0, "a", "12"), "position='12'"),
    ],
)
def test_window_seed_invalid_input(arguments, fragment):
    with pytest.raises(ValueError) as error:
        derive_window_seed(*arguments)

    assert fragment in str(error.value)


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
        ("elbo", {"window_seeds": [1]}, "1 seeds for 2 windows"),
        ("elbo", {"window_seeds": 5}, "window_seeds=5"),
        ("importance", {"window_seeds": [0, -1]}, "window_seeds[1]=-1"),
        ("importance", {"window_seeds": [0, 2**64]}, "window_seeds[1]=18446744073709551616"),
        ("elbo", {"window_seeds": [0, 1.0]}, "window_seeds[1]=1.0"),
        ("elbo", {"window_seeds": [0, 1], "generator": torch.Generator()}, "both set"),
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
