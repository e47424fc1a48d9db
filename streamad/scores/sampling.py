"""Monte Carlo scores from samples of the encoder's ``q(z|x)``: negative ELBO and importance sampling.

Both draw ``z_k = μ_e(x) + exp(½ log σ_e²(x)) ⊙ ε_k`` with ``ε_k ~ N(0, I_d)``. All noise
for a call is drawn before the decoder runs over the samples in chunks, so the result with
seeded draws does not depend on the memory budget. The noise comes either from one
``generator`` for the whole batch or, with ``window_seeds``, from one seed per window, which
makes each window's score independent of the batch it is in (see :func:`derive_window_seed`).
Log-densities are accumulated in float64.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from numbers import Integral

import torch

from streamad.models.base import WindowVAE
from streamad.scores.likelihood import DEFAULT_MEMORY_BUDGET_MB, gaussian_log_likelihood
from streamad.scores.runtime import batch_slices, chunk_size, scoring_mode
from streamad.scores.validation import (
    validate_generator,
    validate_int,
    validate_positive,
    validate_window_seeds,
    validate_windows,
)

# Domain-separation tag of derive_window_seed, so its seeds differ from other BLAKE2b hashes of the same fields.
_WINDOW_SEED_PERSON = b"streamad-window"


def elbo_score(
    model: WindowVAE,
    x: torch.Tensor,
    *,
    samples: int = 16,
    generator: torch.Generator | None = None,
    window_seeds: Sequence[int] | None = None,
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
        Source of the draws of the whole batch, for reproducible scores. ``None`` uses the
        global state, unless ``window_seeds`` is given.
    window_seeds
        One seed per window, integers in ``[0, 2**64)``, e.g. from :func:`derive_window_seed`.
        The draws of window ``b`` then come from a generator seeded with ``window_seeds[b]``,
        so its score does not depend on the other windows of the batch or on their order.
        It cannot be combined with ``generator``.
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
    draws = _posterior_draws(model, x, samples, generator, window_seeds, memory_budget_mb)
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
    window_seeds: Sequence[int] | None = None,
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
        Source of the draws of the whole batch, for reproducible scores. ``None`` uses the
        global state, unless ``window_seeds`` is given.
    window_seeds
        One seed per window, integers in ``[0, 2**64)``, e.g. from :func:`derive_window_seed`.
        The draws of window ``b`` then come from a generator seeded with ``window_seeds[b]``,
        so its score does not depend on the other windows of the batch or on their order.
        It cannot be combined with ``generator``.
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
    draws = _posterior_draws(model, x, samples, generator, window_seeds, memory_budget_mb)
    if draws is None:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    mu, logvar, noise, z, log_likelihood = draws

    # log p(z) - log q(z|x): the (d/2) log 2π terms cancel, and z - μ = σ ⊙ ε.
    z64 = z.to(torch.float64)
    noise64 = noise.to(torch.float64)
    log_ratio = 0.5 * (noise64.square() - z64.square()).sum(dim=-1) + 0.5 * logvar.to(torch.float64).sum(dim=-1)
    log_weights = log_likelihood + log_ratio
    return -(torch.logsumexp(log_weights, dim=0) - math.log(samples))


def derive_window_seed(seed: int, series: str, position: int) -> int:
    """Derive the 64-bit seed of the draws of one window from the run's seed, its series id and its position.

    The result is the BLAKE2b hash, 8 bytes read little-endian, of the three fields, each
    length-prefixed so that no two field tuples share an encoding. Unlike Python's
    ``hash``, it is the same in every process and on every platform, so every instance that
    scores the window draws the same noise. ``position`` is any integer that identifies the
    window within its series, e.g. the timestamp of its last point.

    Raises
    ------
    ValueError
        If ``seed`` or ``position`` is not an integer, or ``series`` is not a string.
    """
    for name, value in (("seed", seed), ("position", position)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"{name}={value!r} is invalid; pass an integer")
    if not isinstance(series, str):
        raise ValueError(f"series={series!r} is invalid; pass the series id as a string")

    payload = bytearray()
    for field in (str(int(seed)), series, str(int(position))):
        encoded = field.encode("utf-8")
        payload += len(encoded).to_bytes(8, "little")
        payload += encoded
    digest = hashlib.blake2b(payload, digest_size=8, person=_WINDOW_SEED_PERSON).digest()
    return int.from_bytes(digest, "little")


def _posterior_draws(model, x, samples, generator, window_seeds, memory_budget_mb):
    """Validate the options, then draw ``z_k ~ q(z|x)`` and return their log-likelihoods.

    Returns ``(mu, logvar, noise, z, log_likelihood)`` with ``z = mu + σ ⊙ noise`` of shape
    ``(K, B, d)`` and ``log_likelihood = log p(x|z_k)`` of shape ``(K, B)``, or None for an
    empty batch.
    """
    samples = validate_int("samples", samples, minimum=1)
    generator = validate_generator(generator)
    memory_budget_mb = validate_positive("memory_budget_mb", memory_budget_mb)
    validate_windows(model, x)
    window_seeds = validate_window_seeds(window_seeds, x.shape[0], generator)
    if x.shape[0] == 0:
        return None

    with scoring_mode(model):
        mu, logvar = model.encode(x)
        if window_seeds is None:
            noise = torch.randn((samples,) + tuple(mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
        else:
            noise = _window_noise(window_seeds, samples, mu)
        z = mu + torch.exp(0.5 * logvar) * noise
        log_likelihood = _sample_log_likelihoods(model, x, z, memory_budget_mb)
    return mu, logvar, noise, z, log_likelihood


def _window_noise(window_seeds: list[int], samples: int, mu: torch.Tensor) -> torch.Tensor:
    """Return standard normal noise ``(K, B, d)`` whose column ``b`` is drawn from a generator seeded with ``window_seeds[b]``.

    The noise is drawn on the CPU and then moved to ``mu``'s device, so a window gets the
    same noise on every device.
    """
    batch, latent = mu.shape
    noise = torch.empty((batch, samples, latent), dtype=mu.dtype)
    generator = torch.Generator()
    for row, seed in zip(noise.unbind(0), window_seeds):
        generator.manual_seed(seed)
        row.normal_(generator=generator)
    return noise.transpose(0, 1).contiguous().to(mu.device)


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
