"""Windowed VAEs: the generative models behind every score."""

from __future__ import annotations

from streamad.models.base import WindowVAE
from streamad.models.conv import ConvVAE
from streamad.models.dense import DenseVAE

ARCHITECTURES = {"dense": DenseVAE, "conv": ConvVAE}


def build_model(architecture: dict) -> WindowVAE:
    """Build an untrained model from the ``architecture`` dict of a bundle's ``config.json``."""
    spec = dict(architecture)
    kind = spec.pop("type", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"architecture type {kind!r} is unknown; use one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[kind](**spec)


__all__ = ["ARCHITECTURES", "ConvVAE", "DenseVAE", "WindowVAE", "build_model"]
