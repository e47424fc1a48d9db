"""Dense (MLP) VAE over flattened windows."""

from __future__ import annotations

import torch
from torch import nn

from streamad.models.base import WindowVAE


class DenseVAE(WindowVAE):
    """A VAE whose encoder and decoder are MLPs over the flattened ``L·C`` window.

    Parameters
    ----------
    window, channels, latent, noise
        See :class:`~streamad.models.base.WindowVAE`.
    hidden
        Width of the hidden layers.
    layers
        Number of hidden layers in the encoder and in the decoder.

    Examples
    --------
    >>> import torch
    >>> model = DenseVAE(window=16, channels=2, latent=3)
    >>> mu, logvar = model.encode(torch.zeros(5, 16, 2))
    >>> tuple(mu.shape), tuple(model.decode(mu).shape)
    ((5, 3), (5, 16, 2))
    """

    def __init__(
        self,
        window: int,
        channels: int,
        latent: int,
        noise: str = "channel",
        hidden: int = 128,
        layers: int = 2,
    ) -> None:
        super().__init__(window, channels, latent, noise)
        self.hidden = int(hidden)
        self.layers = int(layers)

        encoder: list[nn.Module] = []
        width = self.data_dim
        for _ in range(self.layers):
            encoder += [nn.Linear(width, self.hidden), nn.SiLU()]
            width = self.hidden
        self.encoder = nn.Sequential(*encoder)
        self.to_mu = nn.Linear(width, latent)
        self.to_logvar = nn.Linear(width, latent)

        decoder: list[nn.Module] = []
        width = latent
        for _ in range(self.layers):
            decoder += [nn.Linear(width, self.hidden), nn.SiLU()]
            width = self.hidden
        decoder.append(nn.Linear(width, self.data_dim))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(x.reshape(x.shape[0], -1))
        return self.to_mu(features), self.to_logvar(features)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(z.shape[0], self.window, self.channels)

    def architecture(self) -> dict:
        return {
            "type": "dense",
            "window": self.window,
            "channels": self.channels,
            "latent": self.latent,
            "noise": self.noise,
            "hidden": self.hidden,
            "layers": self.layers,
        }
