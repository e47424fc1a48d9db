"""Attribution of a window's likelihood score to its channels, for alerts."""

from __future__ import annotations

import torch

from streamad.models.base import WindowVAE
from streamad.scores.latent import latent_point
from streamad.scores.likelihood import LikelihoodOptions, gaussian_log_likelihood
from streamad.scores.runtime import batch_slices, scoring_mode
from streamad.scores.validation import validate_windows


def channel_contributions(model: WindowVAE, x: torch.Tensor, **likelihood_options) -> torch.Tensor:
    """Split the residual part of each window's ``-log p(x)`` by channel.

    For channel ``c`` the contribution is
    ``½ Σ_t [(x_tc - f_tc(z*))² / σ_c² + log(2π σ_c²)]``, so the contributions of a window
    sum to ``-log p(x|z*)``, the residual part of the likelihood score. The prior and
    volume terms belong to the latent code as a whole and are not split. Each
    contribution includes the channel's constant ``(L/2) log(2π σ_c²)``, so a channel
    with a larger noise variance starts higher. Subtract that constant to rank channels
    by the whitened squared residual alone.

    Parameters
    ----------
    model
        The VAE.
    x
        Windows in the model's dtype, shape ``(B, L, C)``.
    **likelihood_options
        The options of :func:`streamad.scores.likelihood.likelihood_terms`. They are all
        validated, but only ``z_star``, ``map_steps`` and ``memory_budget_mb`` change the
        result, because the contributions need ``z*`` and no Jacobian.

    Returns
    -------
    torch.Tensor
        Float64 contributions, shape ``(B, C)``.

    Raises
    ------
    ValueError
        If ``x`` or an option is invalid.
    """
    options = LikelihoodOptions(**likelihood_options)
    validate_windows(model, x)
    chunks = [torch.zeros(0, model.channels, dtype=torch.float64, device=x.device)]
    with scoring_mode(model):
        for rows in batch_slices(x.shape[0], options.windows_per_chunk(model)):
            window = x[rows]
            z = latent_point(model, window, options.z_star, options.map_steps)
            per_value = gaussian_log_likelihood(model, window, model.decode(z))
            chunks.append(-per_value.sum(dim=1))
    return torch.cat(chunks)
