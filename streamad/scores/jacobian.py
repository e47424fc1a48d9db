"""Per-window Jacobians of the decoder and the encoder mean, by ``torch.func``."""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev, vmap

from streamad.models.base import WindowVAE


def decoder_jacobian(model: WindowVAE, z: torch.Tensor) -> torch.Tensor:
    """Compute ``J = ∂f/∂z`` of the flattened decoder mean at each latent point.

    Forward mode (``jacfwd``) needs one pass per latent dimension, which is the cheap side
    because ``d`` is much smaller than ``D``. The decoder must be in eval mode, so that
    every window's output depends on its own ``z`` only.

    Parameters
    ----------
    model
        The VAE whose ``decode`` is differentiated.
    z
        Latent points, shape ``(B, d)``.

    Returns
    -------
    torch.Tensor
        Jacobians in the dtype of ``z``, shape ``(B, D, d)``, with ``D = L·C`` in the
        row-major order of ``decode(z).reshape(B, -1)``.
    """

    def flat_decode(point: torch.Tensor) -> torch.Tensor:
        return model.decode(point[None])[0].reshape(-1)

    return vmap(jacfwd(flat_decode))(z)


def encoder_jacobian(model: WindowVAE, x: torch.Tensor) -> torch.Tensor:
    """Compute ``J_e = ∂μ_e/∂x`` of the encoder mean with respect to the flattened window.

    Reverse mode (``jacrev``) needs one pass per latent dimension. The encoder must be in
    eval mode.

    Parameters
    ----------
    model
        The VAE whose encoder mean is differentiated.
    x
        Windows, shape ``(B, L, C)``.

    Returns
    -------
    torch.Tensor
        Jacobians in the dtype of ``x``, shape ``(B, d, D)``, with columns in the
        row-major order of ``x.reshape(B, -1)``.
    """
    shape = x.shape[1:]

    def encoder_mean(flat_window: torch.Tensor) -> torch.Tensor:
        mu, _ = model.encode(flat_window.reshape((1,) + shape))
        return mu[0]

    return vmap(jacrev(encoder_mean))(x.reshape(x.shape[0], -1))
