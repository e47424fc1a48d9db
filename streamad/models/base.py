"""The windowed VAE interface that training, scores and the engine rely on."""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2.0 * math.pi)

NOISE_MODELS = ("channel", "shared")

# A floor on the noise variance in standardised units. Without it the learned variance of a
# channel that the decoder fits exactly collapses towards zero and its log-density diverges.
MIN_NOISE_VAR = 1e-4


class WindowVAE(nn.Module):
    """A VAE over windows ``x`` of shape ``(L, C)`` with a Gaussian decoder.

    The generative model is ``z ~ N(0, I_d)`` and ``x = f(z) + e`` with
    ``e ~ N(0, diag(σ²))``, where ``σ²`` has one learned variance per channel
    (``noise="channel"``) or one for all channels (``noise="shared"``), repeated over
    the ``L`` time steps of the window. The encoder is a diagonal Gaussian ``q(z|x)``.

    Subclasses implement :meth:`_encode_features` and :meth:`decode`. ``decode`` must be
    a pure function of ``z`` in eval mode (no dropout or batch statistics), because the
    likelihood score differentiates it with ``torch.func.jacfwd`` under ``torch.func.vmap``.

    Parameters
    ----------
    window
        Window length ``L`` in time steps.
    channels
        Number of channels ``C``.
    latent
        Latent dimension ``d``.
    noise
        ``"channel"`` for a learned variance per channel, ``"shared"`` for one variance.
    """

    def __init__(self, window: int, channels: int, latent: int, noise: str = "channel") -> None:
        super().__init__()
        if noise not in NOISE_MODELS:
            raise ValueError(f"noise={noise!r} is invalid; use one of {NOISE_MODELS}")
        self.window = int(window)
        self.channels = int(channels)
        self.latent = int(latent)
        self.noise = noise
        n_variances = self.channels if noise == "channel" else 1
        self.log_noise_var = nn.Parameter(torch.zeros(n_variances))

    @property
    def data_dim(self) -> int:
        """Dimension ``D = L·C`` of a flattened window."""
        return self.window * self.channels

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mean and log-variance of ``q(z|x)``, each ``(B, d)``, for ``x`` of shape ``(B, L, C)``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Return the decoder mean ``f(z)`` of shape ``(B, L, C)`` for ``z`` of shape ``(B, d)``."""
        raise NotImplementedError

    def noise_var(self) -> torch.Tensor:
        """Return the per-channel noise variance ``σ²``, shape ``(C,)``."""
        var = MIN_NOISE_VAR + torch.exp(self.log_noise_var)
        return var.expand(self.channels)

    def log_likelihood(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """Return ``log N(x; mean, Σ)`` summed over the window, shape ``(B,)``.

        ``x`` and ``mean`` have shape ``(B, L, C)``, or ``(K, B, L, C)`` for K samples,
        in which case the result is ``(K, B)``.
        """
        var = self.noise_var().to(x.dtype)
        per_value = -0.5 * ((x - mean) ** 2 / var + torch.log(var) + LOG_2PI)
        return per_value.sum(dim=(-2, -1))

    def elbo(self, x: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Return the ELBO per window, shape ``(B,)``, with ``samples`` reparameterised draws.

        The KL term of the diagonal Gaussian ``q(z|x)`` against ``N(0, I)`` is analytic.
        """
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn((samples,) + mu.shape, dtype=mu.dtype, device=mu.device)
        z = mu + std * eps
        mean = self.decode(z.reshape(-1, self.latent)).reshape((samples,) + x.shape)
        reconstruction = self.log_likelihood(x.unsqueeze(0), mean).mean(dim=0)
        kl = 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)
        return reconstruction - kl

    def architecture(self) -> dict:
        """Return the constructor arguments that rebuild this model, for ``config.json``."""
        raise NotImplementedError
