"""Checks of the windows and options that callers pass to the scores.

Every check raises ``ValueError`` with the invalid value, the valid range or choices,
and the fix, so that a wrong configuration fails before any model runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import torch

from streamad.models.base import WindowVAE


def model_dtype(model: WindowVAE) -> torch.dtype:
    """Return the floating dtype of the model's parameters."""
    return model.log_noise_var.dtype


def validate_windows(model: WindowVAE, x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is a finite ``(B, L, C)`` batch in the model's dtype."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (B, L, C), got {type(x).__name__}")
    expected = (model.window, model.channels)
    if x.ndim != 3 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, but the model expects (B, {model.window}, {model.channels}); "
            "stack windows of the model's length and channel count along the first axis"
        )
    dtype = model_dtype(model)
    if x.dtype != dtype:
        raise ValueError(f"x has dtype {x.dtype}, but the model has dtype {dtype}; pass x.to({dtype})")
    if not bool(torch.isfinite(x).all()):
        bad = torch.nonzero(~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)).flatten().tolist()
        raise ValueError(
            f"x contains NaN or infinite values in windows {bad[:10]}"
            f"{' and more' if len(bad) > 10 else ''}; drop or impute those windows before scoring"
        )


def validate_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is invalid; use one of {tuple(choices)}")
    return value


def validate_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an integer of at least ``minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; use an integer >= {minimum}")
    return int(value)


def validate_positive(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number above 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid; use a finite number > 0")
    return float(value)


def validate_generator(value: object) -> torch.Generator | None:
    """Return ``value`` if it is ``None`` or a ``torch.Generator``, else raise ``ValueError``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ValueError(
            f"generator={value!r} is invalid; pass a torch.Generator, e.g. torch.Generator().manual_seed(0), "
            "or None for the global random state"
        )
    return value


def validate_window_seeds(value: object, batch: int, generator: torch.Generator | None) -> list[int] | None:
    """Convert the ``batch`` seeds in ``value``, a sequence, 1-D tensor or array, to a list of ints, keeping None.

    Raises ``ValueError`` for another length, a seed outside ``[0, 2**64)``, or seeds
    together with a ``generator``, because only one of them can be the source of the draws.
    """
    if value is None:
        return None
    if generator is not None:
        raise ValueError(
            "generator and window_seeds are both set; pass window_seeds for draws that depend only on each "
            "window, or generator for draws of the whole batch, not both"
        )
    if hasattr(value, "__array__"):
        # A torch tensor or a NumPy array.
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"window_seeds={value!r} is invalid; pass one integer seed per window")
    if len(value) != batch:
        raise ValueError(f"window_seeds has {len(value)} seeds for {batch} windows; pass one seed per window")
    seeds = []
    for index, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2**64:
            raise ValueError(f"window_seeds[{index}]={seed!r} is invalid; use an integer in [0, 2**64)")
        seeds.append(int(seed))
    return seeds


def validate_option_names(score: str, options: dict, valid: Sequence[str]) -> None:
    """Raise ``ValueError`` if ``options`` contains a name that the score ``score`` does not take."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"option {unknown[0]!r} is invalid for the score {score!r}; "
            f"valid options are {tuple(valid) if valid else 'none'}"
        )
