"""Anomaly scores of windows under a windowed VAE; higher means more anomalous.

``"likelihood"`` is the primary score, an estimate of ``-log p(x)`` from a Laplace
expansion of the decoder (see :mod:`streamad.scores.likelihood`). ``"reconstruction"``,
``"elbo"`` and ``"importance"`` are comparison scores. :func:`channel_contributions`
attributes the residual part of the likelihood score to channels for alerts.

Examples
--------
>>> import torch
>>> from streamad.models import DenseVAE
>>> model = DenseVAE(window=8, channels=2, latent=2, hidden=16)
>>> scores = score_windows(model, torch.zeros(4, 8, 2), "likelihood", z_star="map")
>>> scores.dtype, tuple(scores.shape)
(torch.float64, (4,))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from streamad.models.base import WindowVAE
from streamad.scores.attribution import channel_contributions
from streamad.scores.likelihood import LikelihoodTerms, likelihood_score, likelihood_terms
from streamad.scores.reconstruction import reconstruction_score
from streamad.scores.sampling import derive_window_seed, elbo_score, importance_score
from streamad.scores.validation import validate_choice, validate_option_names

SCORE_NAMES = ("likelihood", "reconstruction", "elbo", "importance")

_SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "likelihood": likelihood_terms,
    "reconstruction": reconstruction_score,
    "elbo": elbo_score,
    "importance": importance_score,
}


def score_windows(model: WindowVAE, x: torch.Tensor, name: str = "likelihood", **options) -> torch.Tensor:
    """Score each window of ``x`` with the score ``name``.

    Parameters
    ----------
    model
        The VAE. It runs in eval mode without autograd recording, and its training flags
        are restored afterwards.
    x
        Windows in the model's dtype, shape ``(B, L, C)``, all finite.
    name
        One of ``SCORE_NAMES``.
    **options
        Options of that score: ``likelihood`` takes those of
        :func:`~streamad.scores.likelihood.likelihood_terms` (``z_star``, ``map_steps``,
        ``form``, ``jacobian_weight``, ``jacobian``, ``memory_budget_mb``).
        ``elbo`` and ``importance`` take ``samples`` (defaults 16 and 64), ``generator``
        or ``window_seeds`` (see :func:`~streamad.scores.sampling.elbo_score`) and
        ``memory_budget_mb``. ``reconstruction`` takes none.

    Returns
    -------
    torch.Tensor
        Float64 scores, shape ``(B,)``.

    Raises
    ------
    ValueError
        If ``name``, an option name or value, or ``x`` is invalid.
    """
    validate_choice("name", name, SCORE_NAMES)
    function = _SCORES[name]
    valid = [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    validate_option_names(name, options, valid)
    if name == "likelihood":
        return likelihood_score(model, x, **options)
    return function(model, x, **options)


__all__ = [
    "SCORE_NAMES",
    "LikelihoodTerms",
    "channel_contributions",
    "derive_window_seed",
    "elbo_score",
    "importance_score",
    "likelihood_score",
    "likelihood_terms",
    "reconstruction_score",
    "score_windows",
]
