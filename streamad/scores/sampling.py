"""Monte Carlo scores from samples of the encoder's ``q(z|x)``: negative ELBO and importance sampling.

Both draw ``z_k = μ_e(x) + exp(½ log σ_e²(x)) ⊙ ε_k`` with ``ε_k ~ N(0, I_d)``. All noise
for a call is drawn at once from ``generator``, and the decoder then runs over the samples
in chunks, so the result with a seeded generator does not depend on the memory budget.
Log-densities are accumulated in float64.
"""

from __future__ import annotations

import math

import torch

from streamad.models.base import WindowVAE
from streamad.scores.likelihood import DEFAULT_MEMORY_BUDGET_MB, gaussian_log_likelihood
from streamad.scores.runtime import batch_slices, chunk_size, scoring_mode
from streamad.scores.validation import validate_generator, validate_int, validate_positive, validate_windows


def elbo_score(
    model: WindowVAE,
    x: torch.Tensor,
    *,
    samples: int = 16,
    generator: torch.Generator | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> torch.Tensor:
    """Estimate ``-ELBO`` per window with ``samples`` reparameterised draws from ``q(z|x)``.

    ``ELBO = E_q[log p(x|z)] - KL(q(z|x) ‖ N(0, I))``, with the expectation averaged
    over the draws and the KL term in closed form. The ELBO is a lower bound on
    ``log p(x)``, so this score is at least ``-log p(x)`` up to Monte Carlo error.

    Parameters
    ----------
    model
        The VAE, run in eval mode under ``torch.no_grad``.
    x
        Windows in the model's dtype, shape ``(B, L, C)``.
    samples
        Number of draws ``K`` per window.
    generator
        Source of the draws, for reproducible scores. ``None`` uses the global state.
    memory_budget_mb
        Memory in MiB for the decoded samples of one chunk, ``B·D·8`` bytes per draw.

    Returns
    -------
    torch.Tensor
        Float64 scores, shape ``(B,)``.

    Raises
    ------
    ValueError
        If ``x`` or an option is invalid.
    """
    draws = _posterior_draws(model, x, samples, generator, memory_budget_mb)
    if draws is None:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    mu, logvar, noise, z, log_likelihood = draws

    mu64 = mu.to(torch.float64)
    logvar64 = logvar.to(torch.float64)
    kl = 0.5 * (mu64.square() + torch.exp(logvar64) - 1.0 - logvar64).sum(dim=-1)
    return kl - log_likelihood.mean(dim=0)


def importance_score(
    model: WindowVAE,
    x: torch.Tensor,
    *,
    samples: int = 64,
    generator: torch.Generator | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
) -> torch.Tensor:
    """Estimate ``-log p(x)`` per window by importance sampling with ``q(z|x)`` as the proposal.

    The estimate is ``-(logsumexp_k log w_k - log K)`` with
    ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, the log of the mean weight.
    The estimate of ``p(x)`` is unbiased, so its log is biased low by Jensen's
    inequality, and the bias shrinks as ``K`` grows. On average over draws it lies
    between ``-ELBO`` and ``-log p(x)``.

    Parameters
    ----------
    model
        The VAE, run in eval mode under ``torch.no_grad``.
    x
        Windows in the model's dtype, shape ``(B, L, C)``.
    samples
        Number of draws ``K`` per window.
    generator
        Source of the draws, for reproducible scores. ``None`` uses the global state.
    memory_budget_mb
        Memory in MiB for the decoded samples of one chunk, ``B·D·8`` bytes per draw.

    Returns
    -------
    torch.Tensor
        Float64 scores, shape ``(B,)``.

    Raises
    ------
    ValueError
        If ``x`` or an option is invalid.
    """
    draws = _posterior_draws(model, x, samples, generator, memory_budget_mb)
    if draws is None:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    mu, logvar, noise, z, log_likelihood = draws

    # log p(z) - log q(z|x): the (d/2) log 2π terms cancel, and z - μ = σ ⊙ ε.
    z64 = z.to(torch.float64)
    noise64 = noise.to(torch.float64)
    log_ratio = 0.5 * (noise64.square() - z64.square()).sum(dim=-1) + 0.5 * logvar.to(torch.float64).sum(dim=-1)
    log_weights = log_likelihood + log_ratio
    return -(torch.logsumexp(log_weights, dim=0) - math.log(samples))


def _posterior_draws(model, x, samples, generator, memory_budget_mb):
    """Validate the options, then draw ``z_k ~ q(z|x)`` and return their log-likelihoods.

    Returns ``(mu, logvar, noise, z, log_likelihood)`` with ``z = mu + σ ⊙ noise`` of shape
    ``(K, B, d)`` and ``log_likelihood = log p(x|z_k)`` of shape ``(K, B)``, or None for an
    empty batch.
    """
    samples = validate_int("samples", samples, minimum=1)
    generator = validate_generator(generator)
    memory_budget_mb = validate_positive("memory_budget_mb", memory_budget_mb)
    validate_windows(model, x)
    if x.shape[0] == 0:
        return None

    with scoring_mode(model):
        mu, logvar, noise = _draw_noise(model, x, samples, generator)
        z = mu + torch.exp(0.5 * logvar) * noise
        log_likelihood = _sample_log_likelihoods(model, x, z, memory_budget_mb)
    return mu, logvar, noise, z, log_likelihood


def _draw_noise(
    model: WindowVAE, x: torch.Tensor, samples: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the encoder's ``μ`` and ``log σ²``, each ``(B, d)``, and standard normal noise ``(K, B, d)``."""
    mu, logvar = model.encode(x)
    noise = torch.randn((samples,) + tuple(mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
    return mu, logvar, noise


def _sample_log_likelihoods(model: WindowVAE, x: torch.Tensor, z: torch.Tensor, memory_budget_mb: float) -> torch.Tensor:
    """Return ``log p(x|z_k)`` in float64, shape ``(K, B)``, for latent samples ``z`` of shape ``(K, B, d)``."""
    samples, batch, latent = z.shape
    per_sample_bytes = batch * model.data_dim * 8
    chunks = []
    for draws in batch_slices(samples, chunk_size(per_sample_bytes, memory_budget_mb)):
        z_chunk = z[draws]
        mean = model.decode(z_chunk.reshape(-1, latent)).reshape(z_chunk.shape[:2] + x.shape[1:])
        chunks.append(gaussian_log_likelihood(model, x.unsqueeze(0), mean).sum(dim=(-2, -1)))
    return torch.cat(chunks)
