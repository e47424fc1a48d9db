"""1-D convolutional VAE over windows."""

from __future__ import annotations

import torch
from torch import nn

from streamad.models.base import WindowVAE


class ConvVAE(WindowVAE):
    """A VAE with 1-D convolutions along time in the encoder and decoder.

    The encoder runs ``layers`` convolutions (kernel 5, same padding) over the window and
    maps the flattened feature map to ``q(z|x)``. The decoder maps ``z`` linearly to a
    ``(hidden, L)`` feature map and refines it with the same number of convolutions,
    so neighbouring time steps of the reconstruction share structure.

    Parameters
    ----------
    window, channels, latent, noise
        See :class:`~streamad.models.base.WindowVAE`.
    hidden
        Number of convolution filters.
    layers
        Number of convolutions in the encoder and in the decoder.

    Examples
    --------
    >>> import torch
    >>> model = ConvVAE(window=16, channels=2, latent=3, hidden=8)
    >>> mu, _ = model.encode(torch.zeros(5, 16, 2))
    >>> tuple(model.decode(mu).shape)
    (5, 16, 2)
    """

    kernel_size = 5

    def __init__(
        self,
        window: int,
        channels: int,
        latent: int,
        noise: str = "channel",
        hidden: int = 32,
        layers: int = 2,
    ) -> None:
        super().__init__(window, channels, latent, noise)
        self.hidden = int(hidden)
        self.layers = int(layers)
        padding = self.kernel_size // 2

        encoder: list[nn.Module] = []
        width = channels
        for _ in range(self.layers):
            encoder += [nn.Conv1d(width, self.hidden, self.kernel_size, padding=padding), nn.SiLU()]
            width = self.hidden
        self.encoder = nn.Sequential(*encoder)
        self.to_mu = nn.Linear(self.hidden * window, latent)
        self.to_logvar = nn.Linear(self.hidden * window, latent)

        self.from_latent = nn.Linear(latent, self.hidden * window)
        decoder: list[nn.Module] = []
        for _ in range(self.layers - 1):
            decoder += [nn.SiLU(), nn.Conv1d(self.hidden, self.hidden, self.kernel_size, padding=padding)]
        decoder += [nn.SiLU(), nn.Conv1d(self.hidden, channels, self.kernel_size, padding=padding)]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x.transpose(1, 2)).flatten(start_dim=1)
        return self.to_mu(features), self.to_logvar(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        features = self.from_latent(z).reshape(z.shape[0], self.hidden, self.window)
        return self.decoder(features).transpose(1, 2)

    def architecture(self) -> dict:
        return {
            "type": "conv",
            "window": self.window,
            "channels": self.channels,
            "latent": self.latent,
            "noise": self.noise,
            "hidden": self.hidden,
            "layers": self.layers,
        }
