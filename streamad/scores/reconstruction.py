"""The reconstruction score: squared error of the decoded encoder mean."""

from __future__ import annotations

import torch

from streamad.models.base import WindowVAE
from streamad.scores.latent import encoder_mean
from streamad.scores.runtime import scoring_mode
from streamad.scores.validation import validate_windows


def reconstruction_score(model: WindowVAE, x: torch.Tensor) -> torch.Tensor:
    """Compute ``Σ_{t,c} (x_tc - f_tc(μ_e(x)))²`` per window, in the data's units.

    The score is the squared distance from ``x`` to the decoder's manifold only when the
    encoder mean ``μ_e`` is the orthogonal projection onto it, which a trained encoder
    approximates. It ignores the noise variances, the latent prior and the decoder's
    volume, so a window on the manifold in the tail of the prior scores as low as a
    typical window. The likelihood score accounts for both.

    Parameters
    ----------
    model
        The VAE, run in eval mode under ``torch.no_grad``.
    x
        Windows in the model's dtype, shape ``(B, L, C)``.

    Returns
    -------
    torch.Tensor
        Float64 scores, shape ``(B,)``.

    Raises
    ------
    ValueError
        If ``x`` is invalid.
    """
    validate_windows(model, x)
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=x.device)
    with scoring_mode(model):
        mean = model.decode(encoder_mean(model, x))
    return (x - mean).to(torch.float64).square().sum(dim=(-2, -1))
