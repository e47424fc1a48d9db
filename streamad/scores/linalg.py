"""Log-determinants of the small ``d × d`` matrices that the likelihood score needs.

Both helpers take the whitened Jacobian ``J̃ = Σ^(-1/2) J`` of shape ``(..., D, d)``,
form a ``d × d`` matrix in float64 and take its log-determinant from a Cholesky factor,
following ``torch.distributions.LowRankMultivariateNormal``, which never forms the
``D × D`` covariance or an inverse.

Forming ``J̃ᵀJ̃`` squares the condition number, so Cholesky resolves a small singular
value of ``J̃`` only to about ``sqrt(eps)`` of the largest. Where the factorisation fails,
or a squared pivot falls below ``PIVOT_RATIO`` times the mean diagonal entry or below
``SINGULAR_VALUE_FLOOR²``, the value comes instead from the singular values of ``J̃``,
clamped at ``SINGULAR_VALUE_FLOOR``. A decoder that collapses a latent direction thus
gets a large but finite volume term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Smallest singular value of J̃ that the fallback uses. A whitened Jacobian this flat means
# that a latent direction moves the output by 1e-6 noise standard deviations per unit of z.
SINGULAR_VALUE_FLOOR = 1e-6

# Squared Cholesky pivot, relative to the mean diagonal entry, below which the singular
# values of J̃ are used. It corresponds to a condition number of J̃ of about 1e5.
PIVOT_RATIO = 1e-10

# Jitter on the diagonal before the Cholesky factorisation, relative to the mean diagonal
# entry. It is below PIVOT_RATIO, so a pivot that only the jitter keeps positive still
# sends the window to the singular values.
CHOLESKY_JITTER = 1e-13


def log_det_capacitance(j_tilde: torch.Tensor) -> torch.Tensor:
    """Compute ``log det(I + J̃ᵀJ̃)``, the log-determinant of the capacitance matrix.

    By the matrix determinant lemma, ``det(Σ + J Jᵀ) = det(Σ) · det(I + Jᵀ Σ⁻¹ J)``, and
    ``Jᵀ Σ⁻¹ J = J̃ᵀJ̃`` for ``J̃ = Σ^(-1/2) J``. So this is the ``D``-dimensional
    ``log det(Σ + J Jᵀ) - log det(Σ)`` computed in ``d`` dimensions. It is also the
    log-determinant of the Hessian ``J̃ᵀJ̃ + I`` of ``-log p(x|z) - log p(z)`` at a point
    where the decoder is linear.

    Parameters
    ----------
    j_tilde
        Whitened Jacobian ``J̃``, shape ``(..., D, d)``.

    Returns
    -------
    torch.Tensor
        Float64 log-determinants, shape ``(...)``.
    """
    j_tilde = j_tilde.to(torch.float64)
    gram = j_tilde.mT @ j_tilde
    capacitance = gram + torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)

    def from_singular_values(singular_values: torch.Tensor) -> torch.Tensor:
        return torch.log1p(singular_values.square()).sum(dim=-1)

    return _log_det_cholesky(capacitance, j_tilde, from_singular_values)


def log_det_gram(j_tilde: torch.Tensor) -> torch.Tensor:
    """Compute ``log det(J̃ᵀJ̃) = 2 Σ_i log s_i``, with ``s_i`` the singular values of ``J̃``.

    ``sqrt(det(J̃ᵀJ̃))`` is the factor by which the map ``z ↦ f(z)``, in whitened output
    coordinates, scales ``d``-dimensional volume onto the decoder's manifold.

    Parameters
    ----------
    j_tilde
        Whitened Jacobian ``J̃``, shape ``(..., D, d)`` with ``D >= d``.

    Returns
    -------
    torch.Tensor
        Float64 log-determinants, shape ``(...)``. Singular values below
        ``SINGULAR_VALUE_FLOOR`` count as the floor.
    """
    j_tilde = j_tilde.to(torch.float64)
    gram = j_tilde.mT @ j_tilde

    def from_singular_values(singular_values: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.log(singular_values.clamp_min(SINGULAR_VALUE_FLOOR)).sum(dim=-1)

    return _log_det_cholesky(gram, j_tilde, from_singular_values)


def _log_det_cholesky(
    matrix: torch.Tensor,
    j_tilde: torch.Tensor,
    from_singular_values: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Return ``log det(matrix)`` by Cholesky, or ``from_singular_values(svdvals(j_tilde))`` where that fails."""
    size = matrix.shape[-1]
    if size == 0:
        return matrix.new_zeros(matrix.shape[:-2])
    eye = torch.eye(size, dtype=matrix.dtype, device=matrix.device)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(dim=-1).abs()
    jittered = matrix + (CHOLESKY_JITTER * scale)[..., None, None] * eye

    factor, info = torch.linalg.cholesky_ex(jittered)
    pivots = factor.diagonal(dim1=-2, dim2=-1)
    log_det = 2.0 * torch.log(pivots).sum(dim=-1)

    threshold = torch.clamp_min(PIVOT_RATIO * scale, SINGULAR_VALUE_FLOOR**2)
    failed = (info != 0) | (pivots.square() < threshold[..., None]).any(dim=-1)
    if bool(failed.any()):
        fallback = from_singular_values(torch.linalg.svdvals(j_tilde[failed]))
        log_det = log_det.clone()
        log_det[failed] = fallback
    return log_det
