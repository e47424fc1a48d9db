"""Train a windowed VAE on the ELBO and package it as a model bundle."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from streamad.bundle import ModelBundle
from streamad.data import Series, StandardScaler, fill_gaps, sliding_windows
from streamad.models import ARCHITECTURES, WindowVAE, build_model
from streamad.models.base import NOISE_MODELS
from streamad.scores import SCORE_NAMES, score_windows
from streamad.training.progress import ProgressBar

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    Attributes
    ----------
    window
        Window length ``L`` in time steps.
    stride
        Step between scored windows in the engine. Training always uses stride 1.
    latent
        Latent dimension ``d``.
    architecture
        ``"dense"`` (MLP) or ``"conv"`` (1-D convolutions).
    hidden
        Hidden width (dense) or number of filters (conv).
    layers
        Hidden layers in the encoder and in the decoder.
    noise
        ``"channel"`` for a learned variance per channel, ``"shared"`` for one.
    epochs
        Maximum number of passes over the training windows.
    batch_size
        Windows per optimisation step.
    learning_rate
        Adam step size.
    validation_fraction
        Fraction of the training span, taken from its end, held out for early stopping
        and for the validation scores.
    patience
        Epochs without a better validation ELBO before training stops.
    max_fill
        Gap policy: NaN runs up to this many steps are forward-filled; a window that
        still contains NaN is skipped and counted.
    seed
        Seed of torch and numpy for weights, batches and ELBO samples.
    device
        Torch device for training, e.g. ``"cpu"`` or ``"cuda"``.
    """

    window: int = 32
    stride: int = 1
    latent: int = 4
    architecture: str = "dense"
    hidden: int = 128
    layers: int = 2
    noise: str = "channel"
    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    patience: int = 10
    max_fill: int = 3
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Raise ValueError naming the first invalid hyper-parameter and its valid range."""
        positive = ("window", "stride", "latent", "hidden", "layers", "epochs", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={self.architecture!r} is unknown; use one of {sorted(ARCHITECTURES)}")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise={self.noise!r} is invalid; use one of {NOISE_MODELS}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction!r} is invalid; use a value in (0, 1), e.g. 0.2")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate!r} is invalid; use a positive step size, e.g. 1e-3")
        if self.patience < 1:
            raise ValueError(f"patience={self.patience!r} is invalid; use a number of epochs >= 1")
        if self.max_fill < 0:
            raise ValueError(f"max_fill={self.max_fill!r} is invalid; use a number of steps >= 0 (0 fills no gap)")
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device={self.device!r} is invalid; use 'cpu' or 'cuda' ({error})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} is not available: this torch build has no usable CUDA GPU; use 'cpu'")


def _split_training_span(series: Series, train_fraction: float, config: TrainConfig) -> tuple[Series, Series]:
    """Cut the training span from the start of ``series`` and its validation part from the span's end."""
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction={train_fraction!r} is invalid; use a value in (0, 1], e.g. 0.15")
    span = max(1, int(round(len(series) * train_fraction)))
    validation_length = int(round(span * config.validation_fraction))
    fit_length = span - validation_length
    minimum = config.window + 1
    if fit_length < minimum or validation_length < config.window:
        raise ValueError(
            f"series {series.series_id!r}: the training span has {span} points ({fit_length} to fit, "
            f"{validation_length} to validate), too few for window={config.window}; use a smaller --window "
            f"or a larger --train-fraction"
        )
    return series.slice(0, fit_length), series.slice(fit_length, span)


def _windows(series_parts: list[Series], scaler: StandardScaler, config: TrainConfig) -> np.ndarray:
    blocks = []
    for part in series_parts:
        scaled = fill_gaps(scaler.transform(part.values), config.max_fill)
        windows = sliding_windows(scaled, config.window, 1)
        if windows.skipped:
            logger.info("series %s: skipped %d windows with gaps longer than max_fill=%d", part.series_id, windows.skipped, config.max_fill)
        blocks.append(windows.x)
    return np.concatenate(blocks, axis=0)


def _mean_negative_elbo(model: WindowVAE, windows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            total += -model.elbo(windows[start : start + batch_size]).sum().item()
    return total / windows.shape[0]


def fit_model(train_windows: np.ndarray, validation_windows: np.ndarray, config: TrainConfig, progress: bool = True) -> tuple[WindowVAE, dict]:
    """Train a VAE on windows shaped ``(N, L, C)`` with Adam and early stopping on the validation ELBO.

    Returns the model with the weights of its best validation epoch, in eval mode, and
    the training history.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    channels = train_windows.shape[2]
    model = build_model(
        {
            "type": config.architecture,
            "window": config.window,
            "channels": channels,
            "latent": config.latent,
            "noise": config.noise,
            "hidden": config.hidden,
            "layers": config.layers,
        }
    ).to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    train = torch.as_tensor(train_windows, dtype=torch.float32, device=config.device)
    validation = torch.as_tensor(validation_windows, dtype=torch.float32, device=config.device)

    best_loss = math.inf
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
    history: list[dict] = []
    bar = ProgressBar(total=config.epochs, label="train", enabled=progress)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(train.shape[0], generator=generator).to(config.device)
        train_loss = 0.0
        for start in range(0, train.shape[0], config.batch_size):
            batch = train[order[start : start + config.batch_size]]
            loss = -model.elbo(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * batch.shape[0]
        train_loss /= train.shape[0]

        validation_loss = _mean_negative_elbo(model, validation, config.batch_size * 4)
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": validation_loss})
        bar.update(epoch, f"loss {train_loss:.3f} val {validation_loss:.3f}")
        if validation_loss < best_loss:
            best_loss = validation_loss
            best_epoch = epoch
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        elif epoch - best_epoch >= config.patience:
            break
    bar.close()

    model.load_state_dict(best_state)
    model.eval()
    summary = {
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_validation_loss": best_loss,
        "history": history,
    }
    return model, summary


def train_bundle(
    series_list: list[Series],
    config: TrainConfig,
    train_fraction: float = 1.0,
    progress: bool = True,
    score_names: tuple[str, ...] = SCORE_NAMES,
) -> ModelBundle:
    """Train a model on the start of each series and return an unsaved bundle.

    The first ``train_fraction`` of every series is the training span; its last
    ``config.validation_fraction`` is the validation part. The scaler is fitted on the
    fitting part only. All series must have the same channels.
    """
    config.validate()
    if not series_list:
        raise ValueError("no series to train on; pass at least one data file")
    channels = series_list[0].channels
    for series in series_list[1:]:
        if series.channels != channels:
            raise ValueError(
                f"series {series.series_id!r} has channels {series.channels}, but {series_list[0].series_id!r} has "
                f"{channels}; train one model per channel layout"
            )

    started = time.time()
    splits = [_split_training_span(series, train_fraction, config) for series in series_list]
    fit_values = np.concatenate([fit.values for fit, _ in splits], axis=0)
    scaler = StandardScaler().fit(fit_values)
    constant = [name for name, column in zip(channels, fit_values.T) if np.nanmin(column) == np.nanmax(column)]
    if constant:
        logger.warning(
            "channel(s) %s are constant in the training span; the model learns nothing about them and any "
            "change in them scores as anomalous. Drop them with --channels if they carry no signal",
            ", ".join(constant),
        )
    train_windows = _windows([fit for fit, _ in splits], scaler, config)
    validation_windows = _windows([validation for _, validation in splits], scaler, config)
    if len(train_windows) == 0 or len(validation_windows) == 0:
        raise ValueError(
            f"no complete training or validation windows after the gap policy (max_fill={config.max_fill}); "
            "raise max_fill or clean the data"
        )
    logger.info("training on %d windows, validating on %d windows", len(train_windows), len(validation_windows))

    model, summary = fit_model(train_windows, validation_windows, config, progress=progress)
    model.to("cpu")

    validation = torch.as_tensor(validation_windows, dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    validation_scores = {
        name: score_windows(model, validation, name, **({"generator": generator} if name in ("elbo", "importance") else {}))
        .cpu()
        .numpy()
        for name in score_names
    }
    mean_log_likelihood = float(-validation_scores["likelihood"].mean()) if "likelihood" in validation_scores else None

    has_clock = all(series.has_clock for series in series_list)
    bundle_config = {
        "window": config.window,
        "stride": config.stride,
        "channels": list(channels),
        "max_fill": config.max_fill,
        "has_clock": has_clock,
    }
    metadata = {
        "train_config": asdict(config),
        "train_fraction": train_fraction,
        "series": [series.series_id for series in series_list],
        "train_windows": int(len(train_windows)),
        "validation_windows": int(len(validation_windows)),
        "validation_log_likelihood_per_window": mean_log_likelihood,
        "validation_log_likelihood_per_step": None if mean_log_likelihood is None else mean_log_likelihood / config.window,
        "training_seconds": round(time.time() - started, 2),
        "torch_version": torch.__version__,
        **{key: value for key, value in summary.items() if key != "history"},
        "history": summary["history"],
    }
    return ModelBundle(
        model=model,
        scaler=scaler,
        config=bundle_config,
        metadata=metadata,
        validation_scores=validation_scores,
    )
