r"""Split a window's likelihood score ``-log p(x)`` into per-channel parts for alerts.

With the terms of :func:`streamad.scores.likelihood_terms` at the latent point ``z*``,

``-log p(x) = Σ_c ½ Σ_t r̃²_tc  +  Σ_c (L/2) log(2π σ_c²)  +  latent``

where ``r̃ = (x - f(z*)) / σ`` is the whitened residual and
``latent = -log p(z*) - log volume = ½‖z*‖² + w · log det(M)``. The three parts are:

- the channels' whitened squared residuals, each ≥ 0, which is where a fault in one
  channel shows;
- the log-normalizer ``Σ_c (L/2) log(2π σ_c²)``, a constant of the model that is the same
  for every window, and is reported once per event as ``log_normalizer``;
- the latent part, the prior and volume terms of the whole latent code. It does not
  belong to any one channel, so it is reported as its own ``latent`` entry instead of
  being spread over the channels. It is ≥ 0 for ``form="laplace"`` (the default), where
  ``log det(M) = log det(I + J̃ᵀJ̃) ≥ 0``, and can be negative for ``form="manifold"``.

Shares are taken of the part that varies between windows, ``-log p(x) - log_normalizer``,
so the shares of all channels and the latent entry sum to 1. So the listed ``nats``,
the ``other`` remainder, the ``latent`` entry and ``log_normalizer`` sum to the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamad.models.base import LOG_2PI, WindowVAE
from streamad.scores import likelihood_terms
from streamad.scores.runtime import scoring_mode

OTHER = "other"
LATENT = "latent"


@dataclass(frozen=True)
class WindowAttribution:
    """The parts of one window's ``-log p(x)``, float64 nats.

    Attributes
    ----------
    residual
        Whitened squared residual ``½ Σ_t r̃²_tc`` of each channel, shape ``(C,)``.
    latent
        ``-log p(z*) - log volume``.
    log_normalizer
        ``Σ_c (L/2) log(2π σ_c²)``, the same for every window of the model.
    """

    residual: np.ndarray
    latent: float
    log_normalizer: float

    @property
    def total(self) -> float:
        """The window's ``-log p(x)``: the sum of all parts."""
        return float(self.residual.sum() + self.latent + self.log_normalizer)


def log_normalizer(model: WindowVAE) -> float:
    """Return ``Σ_c (L/2) log(2π σ_c²)``, the Gaussian log-normalizer of one window, in nats."""
    with torch.no_grad():
        variance = model.noise_var().detach().to(torch.float64)
        return float(0.5 * model.window * (torch.log(variance) + LOG_2PI).sum())


def attribute_windows(model: WindowVAE, windows: torch.Tensor, **likelihood_options) -> list[WindowAttribution]:
    """Split the likelihood score of each window of ``windows`` (``(B, L, C)``) into its parts.

    ``likelihood_options`` are those of :func:`streamad.scores.likelihood_terms`; pass the
    options of the engine's likelihood score, so that the parts sum to its scores.
    """
    terms = likelihood_terms(model, windows, **likelihood_options)
    with scoring_mode(model):
        mean = model.decode(terms.z_star)
        variance = model.noise_var().to(torch.float64)
        residual = ((windows - mean).to(torch.float64).square() / variance).sum(dim=1) * 0.5
    latent = -(terms.log_prior + terms.log_volume)
    normalizer = log_normalizer(model)
    residual_array = residual.cpu().numpy()
    latent_array = latent.cpu().numpy()
    return [
        WindowAttribution(residual_array[row], float(latent_array[row]), normalizer)
        for row in range(residual_array.shape[0])
    ]


def channel_entries(attribution: WindowAttribution, channel_names: list[str], top: int) -> list[dict]:
    """Return the event's ``channels`` list: the top channels, an ``other`` remainder and ``latent``.

    Channels are ranked by their whitened squared residual. When at most ``top + 1``
    channels exist, all are listed and there is no ``other`` entry. Each entry has
    ``channel`` (the name, or ``other`` or ``latent``), ``kind`` (``channel``, ``other``
    or ``latent``, so that a channel named ``other`` stays distinct), ``nats`` and
    ``share``. ``other`` also has ``channels``, the number of channels it sums.
    ``share`` is None when the varying part of the score is not positive, which only
    the manifold form allows.
    """
    if top < 0:
        raise ValueError(f"top={top!r} (--top-channels) is invalid; use a count >= 0")
    residual = attribution.residual
    varying = float(residual.sum() + attribution.latent)
    order = np.argsort(-residual, kind="stable")
    listed = order if len(order) <= top + 1 else order[:top]
    rest = order[len(listed) :]

    def share(nats: float) -> float | None:
        return round(nats / varying, 4) if varying > 0 else None

    entries = [
        {"channel": channel_names[index], "kind": "channel", "nats": round(float(residual[index]), 4), "share": share(float(residual[index]))}
        for index in listed
    ]
    if len(rest):
        other = float(residual[rest].sum())
        entries.append({"channel": OTHER, "kind": OTHER, "channels": int(len(rest)), "nats": round(other, 4), "share": share(other)})
    entries.append({"channel": LATENT, "kind": LATENT, "nats": round(attribution.latent, 4), "share": share(attribution.latent)})
    return entries
