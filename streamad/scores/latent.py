"""The latent point ``z*`` at which the likelihood score expands the decoder."""

from __future__ import annotations

import logging
import math

import torch
from torch.func import grad_and_value, jacfwd, vmap

from streamad.models.base import WindowVAE

logger = logging.getLogger(__name__)

Z_STAR_CHOICES = ("encoder_mean", "map")

# Damping added to the Hessian after a rejected step, in units of the prior's curvature,
# which is the identity. Each further rejection multiplies the damping by 10, and each
# accepted step divides it by 10.
INITIAL_DAMPING = 1e-3
DAMPING_FACTOR = 10.0
MIN_DAMPING = 1e-12


def encoder_mean(model: WindowVAE, x: torch.Tensor) -> torch.Tensor:
    """Return the encoder mean ``μ_e(x)`` of ``q(z|x)``, shape ``(B, d)``."""
    mu, _ = model.encode(x)
    return mu


def latent_point(model: WindowVAE, x: torch.Tensor, z_star: str, map_steps: int) -> torch.Tensor:
    """Return ``z*`` for each window: the encoder mean, or the MAP point started from it.

    Parameters
    ----------
    model
        The VAE, in eval mode.
    x
        Windows, shape ``(B, L, C)``.
    z_star
        ``"encoder_mean"`` or ``"map"``.
    map_steps
        Maximum number of Newton steps for ``"map"``.

    Returns
    -------
    torch.Tensor
        Latent points in the model's dtype, shape ``(B, d)``.
    """
    start = encoder_mean(model, x)
    if z_star == "encoder_mean":
        return start
    return map_latent(model, x, start, map_steps)


def map_latent(model: WindowVAE, x: torch.Tensor, start: torch.Tensor, steps: int) -> torch.Tensor:
    """Minimise ``-log p(x|z) - log p(z)`` over ``z`` for each window by damped Newton steps.

    The objective of one window is ``½ Σ_j (x_j - f_j(z))² / Σ_jj + ½ ‖z‖²``, which is
    ``-log p(x|z) - log p(z)`` up to a constant. Its exact gradient and Hessian come from
    ``torch.func`` (forward over reverse mode) and only ``z`` is differentiated, so the
    decoder's parameters get no gradient. Every window keeps its own Levenberg-Marquardt
    damping: a step that raises the objective is rejected and the damping grows, and an
    indefinite Hessian is shifted until it is positive definite. The windows are
    independent, so ``z*`` does not depend on the batch a window comes in.

    A window stops when its Hessian is positive definite and the Newton decrement
    ``sqrt(gᵀ H⁻¹ g)`` is at most ``sqrt(eps)`` of the model's dtype. It then takes that
    last full Newton step, which brings the error to about ``eps``. A window that has not
    converged after ``steps`` steps keeps its best point so far, and the count of such
    windows is logged at DEBUG level.

    Parameters
    ----------
    model
        The VAE, in eval mode.
    x
        Windows, shape ``(B, L, C)``.
    start
        Starting points, shape ``(B, d)``, usually the encoder mean.
    steps
        Maximum number of Newton steps.

    Returns
    -------
    torch.Tensor
        The MAP points in the dtype of ``start``, shape ``(B, d)``.
    """
    var = model.noise_var().to(x.dtype)

    def objective(z: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        residual = window - model.decode(z[None])[0]
        return 0.5 * (residual.square() / var).sum() + 0.5 * z.square().sum()

    def gradient_with_value(z: torch.Tensor, window: torch.Tensor):
        gradient, value = grad_and_value(objective)(z, window)
        return gradient, (gradient, value)

    derivatives = vmap(jacfwd(gradient_with_value, has_aux=True))

    def evaluate(z: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hessian, (gradient, value) = derivatives(z, windows)
        return value.to(torch.float64), gradient.to(torch.float64), hessian.to(torch.float64)

    eps = torch.finfo(start.dtype).eps
    tolerance = math.sqrt(eps)
    batch = start.shape[0]
    z = start.clone()
    value, gradient, hessian = evaluate(z, x)
    damping = torch.zeros(batch, dtype=torch.float64, device=z.device)
    active = torch.ones(batch, dtype=torch.bool, device=z.device)

    for _ in range(steps):
        # Only the windows still searching are evaluated, each on its own.
        rows = torch.nonzero(active).flatten()
        if rows.numel() == 0:
            break
        row_z, row_value, row_gradient, row_hessian = z[rows], value[rows], gradient[rows], hessian[rows]
        row_damping = damping[rows]

        eigenvalues, eigenvectors = torch.linalg.eigh(row_hessian)
        projected = (eigenvectors.mT @ row_gradient[..., None])[..., 0]
        smallest = eigenvalues[..., 0]
        positive = smallest > 0

        # The Newton decrement sqrt(gᵀ H⁻¹ g) measures the distance to the optimum in the
        # Hessian's norm, independent of how z is scaled.
        safe_eigenvalues = torch.where(positive[..., None], eigenvalues, torch.ones_like(eigenvalues))
        decrement = torch.sqrt((projected.square() / safe_eigenvalues).sum(dim=-1))
        finished = positive & (decrement <= tolerance)

        shift = torch.where(positive, torch.zeros_like(smallest), INITIAL_DAMPING - smallest)
        shift = torch.maximum(row_damping, shift)
        shift = torch.where(finished, torch.zeros_like(shift), shift)
        step = -(eigenvectors @ (projected / (eigenvalues + shift[..., None]))[..., None])[..., 0]
        candidate = row_z + step.to(z.dtype)

        new_value, new_gradient, new_hessian = evaluate(candidate, x[rows])
        # Accept ties up to rounding, so that a converged window is not stuck rejecting steps.
        slack = 8.0 * eps * (1.0 + row_value.abs())
        improved = new_value <= row_value + slack
        accept = torch.isfinite(new_value) & (finished | improved)

        z[rows] = torch.where(accept[..., None], candidate, row_z)
        value[rows] = torch.where(accept, new_value, row_value)
        gradient[rows] = torch.where(accept[..., None], new_gradient, row_gradient)
        hessian[rows] = torch.where(accept[..., None, None], new_hessian, row_hessian)

        relaxed = row_damping / DAMPING_FACTOR
        relaxed = torch.where(relaxed < MIN_DAMPING, torch.zeros_like(relaxed), relaxed)
        raised = torch.clamp_min(row_damping * DAMPING_FACTOR, INITIAL_DAMPING)
        damping[rows] = torch.where(accept, relaxed, raised)
        active[rows] = ~finished

    unconverged = int(active.sum())
    if unconverged:
        logger.debug("MAP search stopped after %d steps with %d of %d windows unconverged", steps, unconverged, batch)
    return z
