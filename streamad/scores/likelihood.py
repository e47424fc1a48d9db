r"""The likelihood score: an estimate of ``-log p(x)`` per window.

The model is ``z ~ N(0, I_d)`` and ``x = f(z) + e`` with ``e ~ N(0, Σ)``, where ``Σ`` is
diagonal with the per-channel noise variances repeated over the ``L`` steps, and
``D = L·C``. Around a latent point ``z*``, let ``J = ∂f/∂z`` (``D × d``),
``J̃ = Σ^(-1/2) J`` and ``r̃ = Σ^(-1/2) (x - f(z*))``. The score is ``-log p(x)`` with

``log p(x) ≈ log N(x; f(z*), Σ) + log N(z*; 0, I) + (d/2) log 2π - w · log det(M)``

- ``form="laplace"`` (default): ``M = J̃ᵀJ̃ + I``. This is Laplace's method on
  ``∫ p(x|z) p(z) dz`` with ``f`` linearised at ``z*``: the Gauss-Newton Hessian of
  ``-log p(x|z) - log p(z)`` is ``H = J̃ᵀJ̃ + I`` and the Gaussian integral contributes
  ``(2π)^(d/2) det(H)^(-1/2)``. When ``f(z) = W z + b`` is linear and ``z*`` is the MAP
  point, this is exactly the log-density of ``N(b, W Wᵀ + Σ)``. At the encoder mean, which is not a
  stationary point, the term ``½ gᵀH⁻¹g`` of the gradient ``g`` is left out.
- ``form="manifold"``: ``M = J̃ᵀJ̃``, the same with the prior's curvature ``I`` dropped,
  which treats ``p(z)`` as flat across the width of the posterior. The prior's mass
  then lies on the decoder's ``d``-dimensional manifold. The change of variables from
  ``z`` to the manifold chart scales volume by ``sqrt(det(J̃ᵀJ̃))``, so the density on
  the manifold is ``p(z*) / sqrt(det(J̃ᵀJ̃))``. The noise spreads that density across
  the other ``D - d`` directions. With isotropic noise ``σ²`` this reads
  ``-‖x - f(z*)‖²/(2σ²) - ((D-d)/2) log(2πσ²) + log p(z*) - ½ log det(JᵀJ)``. It is close
  to the Laplace form when ``J̃ᵀJ̃ ≫ I``, which holds when the decoder moves the output by
  many noise standard deviations per unit of ``z``.

Why ``jacobian_weight`` ``w = 0.5``: both volume factors are square roots of a
determinant. The chart from the ``d``-dimensional latent space to the ``d``-dimensional
manifold scales volume by ``sqrt(det(JᵀJ))``, so the density on the manifold picks up
``-½ log det(JᵀJ)``. The Laplace integral over ``z`` contributes
``(2π)^(d/2) det(H)^(-1/2)``, again a square root. ``jacobian_weight=1.0`` subtracts the
full ``log det``, which counts the volume twice and no longer gives ``log p(x)``. It
exists only to reproduce the numbers of implementations that do so.

``jacobian="encoder"`` takes the volume from the encoder instead of the decoder. With
``x̃ = Σ^(-1/2) x`` the whitened window, the encoder's Jacobian in whitened coordinates is
``J̃_e = ∂μ_e/∂x̃ = (∂μ_e/∂x) Σ^(1/2)`` (``d × D``), evaluated at ``x``, and
``G = J̃_e J̃_eᵀ``. If the encoder inverts the decoder on the manifold, ``J̃_e`` is the
pseudo-inverse of ``J̃`` and ``G = (J̃ᵀJ̃)⁻¹``, so ``G⁻¹`` replaces ``J̃ᵀJ̃``. The
manifold form uses ``M = G⁻¹``, whose volume term is ``+w · log det(G)``, and the
Laplace form uses ``M = G⁻¹ + I``, whose log-determinant is computed as
``log det(I + G) - log det(G)``. The residual and prior terms still come from ``f(z*)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamad.models.base import LOG_2PI, WindowVAE
from streamad.scores.jacobian import decoder_jacobian, encoder_jacobian
from streamad.scores.latent import Z_STAR_CHOICES, latent_point
from streamad.scores.linalg import log_det_capacitance, log_det_gram
from streamad.scores.runtime import batch_slices, chunk_size, scoring_mode
from streamad.scores.validation import (
    model_dtype,
    validate_choice,
    validate_int,
    validate_positive,
    validate_windows,
)

FORMS = ("laplace", "manifold")
JACOBIANS = ("decoder", "encoder")
DEFAULT_MEMORY_BUDGET_MB = 256.0


@dataclass(frozen=True)
class LikelihoodOptions:
    """Validated options of the likelihood score, and their defaults. See :func:`likelihood_terms`."""

    z_star: str = "encoder_mean"
    map_steps: int = 50
    form: str = "laplace"
    jacobian_weight: float = 0.5
    jacobian: str = "decoder"
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB

    def __post_init__(self) -> None:
        validate_choice("z_star", self.z_star, Z_STAR_CHOICES)
        validate_choice("form", self.form, FORMS)
        validate_choice("jacobian", self.jacobian, JACOBIANS)
        # Store plain Python numbers, so that numpy scalars from a config behave the same.
        object.__setattr__(self, "map_steps", validate_int("map_steps", self.map_steps, minimum=1))
        object.__setattr__(self, "jacobian_weight", validate_positive("jacobian_weight", self.jacobian_weight))
        object.__setattr__(self, "memory_budget_mb", validate_positive("memory_budget_mb", self.memory_budget_mb))

    def windows_per_chunk(self, model: WindowVAE) -> int:
        """Return how many windows' float64 Jacobians (``D·d·8`` bytes each) fit the memory budget."""
        return chunk_size(model.data_dim * model.latent * 8, self.memory_budget_mb)


@dataclass(frozen=True)
class LikelihoodTerms:
    """Terms of the approximate ``log p(x)`` of each window.

    Every field except ``z_star`` is float64 with shape ``(B,)``.

    Attributes
    ----------
    z_star
        The latent point of the expansion, in the model's dtype, shape ``(B, d)``.
    log_likelihood
        ``log p(x|z*) = log N(x; f(z*), Σ)``, summed over the window.
    log_prior
        ``log p(z*) = log N(z*; 0, I_d)``.
    log_volume
        ``(d/2) log 2π - w · log det(M)``, the log of the Gaussian integral's volume
        factor, with ``M`` and ``w`` as in the module docstring.
    """

    z_star: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_volume: torch.Tensor

    @property
    def log_density(self) -> torch.Tensor:
        """The estimate of ``log p(x)``: the sum of the three log terms."""
        return self.log_likelihood + self.log_prior + self.log_volume


def likelihood_terms(
    model: WindowVAE,
    x: torch.Tensor,
    *,
    z_star: str = LikelihoodOptions.z_star,
    map_steps: int = LikelihoodOptions.map_steps,
    form: str = LikelihoodOptions.form,
    jacobian_weight: float = LikelihoodOptions.jacobian_weight,
    jacobian: str = LikelihoodOptions.jacobian,
    memory_budget_mb: float = LikelihoodOptions.memory_budget_mb,
) -> LikelihoodTerms:
    """Compute the terms of the approximate ``log p(x)`` of each window.

    The model runs in eval mode under ``torch.no_grad`` and its training flags are
    restored afterwards. Windows are processed in chunks, and each window's result
    depends only on that window. The batch size and the chunking therefore change a result
    only by rounding: not at all in float64, by about 2e-5 nats for a float32 model whose
    scores spread over a few nats.

    Parameters
    ----------
    model
        The VAE.
    x
        Windows in the model's dtype, shape ``(B, L, C)``.
    z_star
        ``"encoder_mean"`` expands at the encoder mean ``μ_e(x)``. ``"map"`` expands at
        the MAP point of ``p(x|z) p(z)``, found by Newton steps from the encoder mean in
        the model's dtype, so a float32 model gets ``z*`` to float32 precision. The
        Laplace form is exact for a linear decoder only at the MAP point.
    map_steps
        Maximum number of Newton steps for ``z_star="map"``.
    form
        ``"laplace"`` or ``"manifold"``, see the module docstring.
    jacobian_weight
        Weight ``w`` of the log-determinant. 0.5 gives ``log p(x)``, and any other
        positive value is accepted for comparison with other implementations.
    jacobian
        ``"decoder"`` takes the volume term from ``∂f/∂z`` at ``z*``, ``"encoder"``
        from ``∂μ_e/∂x`` at ``x``, see the module docstring.
    memory_budget_mb
        Memory in MiB for the float64 Jacobians of one chunk, ``D·d·8`` bytes per window.
        The decoder's activations during differentiation are not counted.

    Returns
    -------
    LikelihoodTerms
        The terms, float64 except ``z_star``. The score is ``-terms.log_density``.

    Raises
    ------
    ValueError
        If ``x`` or an option is invalid.
    """
    options = LikelihoodOptions(z_star, map_steps, form, jacobian_weight, jacobian, memory_budget_mb)
    validate_windows(model, x)
    batch = x.shape[0]
    if batch == 0:
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        z_empty = torch.zeros(0, model.latent, dtype=model_dtype(model), device=x.device)
        return LikelihoodTerms(z_empty, empty, empty, empty)

    chunks = []
    with scoring_mode(model):
        for rows in batch_slices(batch, options.windows_per_chunk(model)):
            chunks.append(_likelihood_terms_chunk(model, x[rows], options))
    return LikelihoodTerms(
        z_star=torch.cat([chunk.z_star for chunk in chunks]),
        log_likelihood=torch.cat([chunk.log_likelihood for chunk in chunks]),
        log_prior=torch.cat([chunk.log_prior for chunk in chunks]),
        log_volume=torch.cat([chunk.log_volume for chunk in chunks]),
    )


def likelihood_score(model: WindowVAE, x: torch.Tensor, **options) -> torch.Tensor:
    """Return ``-log p(x)`` per window, float64 of shape ``(B,)``; options as in :func:`likelihood_terms`."""
    return -likelihood_terms(model, x, **options).log_density


def gaussian_log_likelihood(model: WindowVAE, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Return ``log N(x; mean, Σ)`` in float64 per value, shape ``(B, L, C)``."""
    var = model.noise_var().to(torch.float64)
    residual = (x - mean).to(torch.float64)
    return -0.5 * (residual.square() / var + torch.log(var) + LOG_2PI)


def _likelihood_terms_chunk(model: WindowVAE, x: torch.Tensor, options: LikelihoodOptions) -> LikelihoodTerms:
    z = latent_point(model, x, options.z_star, options.map_steps)
    latent = z.shape[-1]

    log_likelihood = gaussian_log_likelihood(model, x, model.decode(z)).sum(dim=(-2, -1))
    z64 = z.to(torch.float64)
    log_prior = -0.5 * z64.square().sum(dim=-1) - 0.5 * latent * LOG_2PI

    # Standard deviation of each flattened value, in the row-major order of x.reshape(B, -1).
    std = model.noise_var().to(torch.float64).sqrt().repeat(model.window)
    if options.jacobian == "decoder":
        j_tilde = decoder_jacobian(model, z).to(torch.float64) / std[:, None]
        if options.form == "laplace":
            log_det = log_det_capacitance(j_tilde)
        else:
            log_det = log_det_gram(j_tilde)
    else:
        # Columns of J̃_eᵀ (D × d) give G = J̃_e J̃_eᵀ as their Gram matrix.
        encoder_j_tilde = (encoder_jacobian(model, x).to(torch.float64) * std).mT
        log_det_g = log_det_gram(encoder_j_tilde)
        if options.form == "laplace":
            log_det = log_det_capacitance(encoder_j_tilde) - log_det_g
        else:
            log_det = -log_det_g

    log_volume = 0.5 * latent * LOG_2PI - options.jacobian_weight * log_det
    return LikelihoodTerms(z, log_likelihood, log_prior, log_volume)
