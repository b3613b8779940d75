"""The one typed configuration of EEN-BraTS: data, model and training, loadable from YAML.

    config = load_config("configs/paper.yaml")
    config.model.depth_factors      # (3, 3, 4)

Unknown keys and impossible values are errors with the file and key named, raised before any
work starts. Every field has the paper's value as its default (SPEC.md sections 1-3); the YAML
files under configs/ only say what differs.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from brats import MODALITIES


class ConfigError(ValueError):
    """A configuration that cannot be used; str() names the file and the key."""


@dataclass
class DataConfig:
    """Preprocessing: crop (H, W, D) in voxels, crop placement and which modalities exist."""

    crop_size: tuple = (192, 160, 108)
    crop_mode: str = "center"  # "center" (the paper) or "brain" (centred on the brain's box)
    downsample: int = 1  # block-average by this factor before cropping (1: full resolution)
    modalities: tuple = MODALITIES


@dataclass
class ModelConfig:
    """The embedding network (SPEC.md section 2). The spatial input shape is data.crop_size."""

    channels: int = 1
    depth_factors: tuple = (3, 3, 4)
    downsampling: str = "strided"  # "strided" (authors' code) or "maxpool" (paper's conclusion)
    encoder_filters: tuple = (16, 32, 64, 64)
    compression_activation: str = "relu"  # of the 1x1x1 conv making the 3-channel image
    decoder_filters: tuple = (512, 256, 128, 64)
    backbone: str = "EfficientNetB0"  # a key of model.BACKBONES
    backbone_weights: str | None = "imagenet"  # "imagenet", null, or a local .h5/.weights.h5 file
    backbone_trainable: bool = True
    output_channels: int = 3
    output_activation: str = "sigmoid"  # "sigmoid" (regions WT, TC, ET) or "softmax" (labels)
    encoder_dropout: float = 0.2
    decoder_dropout: float = 0.5
    groupnorm_groups: int = 8
    # Departures from the paper, each off by default (README, "Making the 2D branch matter"):
    backbone_input_scale: float = 1.0  # x this before the backbone's own 1/255 rescaling
    norm_2d: str = "batch"  # "batch" (paper) or "group": normalisation of backbone and 2D decoder
    decoder_upsampling: str = "transpose"  # "transpose" (paper) or "resize" (bilinear + conv)
    skip_dropout: float = 0.0  # training: probability of dropping the 3D skips (all together)
    skip_dropout_levels: tuple = (1, 2, 3)  # which skips it drops: 1 full depth ... 3 deepest


@dataclass
class TrainConfig:
    """Training as in the paper: batch 1, Nadam 1e-4, BCE - Dice, LR / 10 after 50 flat epochs."""

    epochs: int = 300
    batch_size: int = 1
    optimizer: str = "nadam"  # "nadam" (authors) or "adam" (paper's text)
    learning_rate: float = 1e-4
    plateau_factor: float = 0.1
    plateau_patience: int = 50
    schedule: str = "plateau"  # "plateau" (paper) or "cosine": warm-up, then cosine decay to 0
    warmup_epochs: int = 0  # cosine only: epochs of linear warm-up to learning_rate
    dice_per_channel: bool = True  # soft Dice per region, then averaged (False: over all regions)
    validation_fraction: float = 0.2
    augment: bool = False
    seed: int = 0


@dataclass
class Config:
    name: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    """Tuples -> lists so that YAML stays readable."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _section(cls, values: dict, where: str):
    """Build dataclass `cls` from a dict, rejecting unknown keys and coercing lists to tuples."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)} "
                          f"(known: {', '.join(known)})")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.{name}: expected a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) else value
        kwargs[name] = value
    return cls(**kwargs)


def validate(config: Config, where: str = "config") -> Config:
    """Raise ConfigError for values no network or run can use."""
    data, model, train = config.data, config.model, config.train
    if len(data.crop_size) != 3 or any(int(s) < 1 for s in data.crop_size):
        raise ConfigError(f"{where}: data.crop_size must be three positive sizes, got {data.crop_size}")
    height, width, depth = data.crop_size
    if height % 32 or width % 32:
        raise ConfigError(f"{where}: data.crop_size {height}x{width} in-plane must be multiples of "
                          f"32 (EfficientNet halves H and W five times)")
    if not isinstance(data.downsample, int) or data.downsample < 1:
        raise ConfigError(f"{where}: data.downsample must be a whole number >= 1")
    if data.crop_mode not in ("center", "brain"):
        raise ConfigError(f"{where}: data.crop_mode must be center or brain, got {data.crop_mode!r}")
    unknown = [m for m in data.modalities if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"{where}: data.modalities: unknown {unknown}, known {list(MODALITIES)}")
    if len(model.depth_factors) != 3 or math.prod(model.depth_factors) * 3 != depth:
        raise ConfigError(f"{where}: model.depth_factors {list(model.depth_factors)} multiply to "
                          f"{math.prod(model.depth_factors)}, but depth {depth} needs three "
                          f"factors whose product is {depth}/3 = {depth / 3:g}")
    if model.downsampling not in ("strided", "maxpool"):
        raise ConfigError(f"{where}: model.downsampling must be strided or maxpool")
    if model.compression_activation not in ("relu", "softplus", "elu", "linear"):
        raise ConfigError(f"{where}: model.compression_activation must be relu, softplus, elu or "
                          f"linear")
    if model.norm_2d not in ("batch", "group"):
        raise ConfigError(f"{where}: model.norm_2d must be batch or group")
    if model.decoder_upsampling not in ("transpose", "resize"):
        raise ConfigError(f"{where}: model.decoder_upsampling must be transpose or resize")
    if not 0 <= model.skip_dropout < 1:
        raise ConfigError(f"{where}: model.skip_dropout must be in [0, 1)")
    if not model.skip_dropout_levels or not set(model.skip_dropout_levels) <= {1, 2, 3}:
        raise ConfigError(f"{where}: model.skip_dropout_levels must be some of 1, 2, 3")
    if model.output_activation not in ("sigmoid", "softmax"):
        raise ConfigError(f"{where}: model.output_activation must be sigmoid or softmax")
    if len(model.encoder_filters) != 4 or len(model.decoder_filters) != 4:
        raise ConfigError(f"{where}: model.encoder_filters and decoder_filters need four entries")
    if any(f % model.groupnorm_groups for f in model.encoder_filters):
        raise ConfigError(f"{where}: model.encoder_filters must be multiples of groupnorm_groups")
    if train.optimizer not in ("nadam", "adam"):
        raise ConfigError(f"{where}: train.optimizer must be nadam or adam")
    if train.schedule not in ("plateau", "cosine"):
        raise ConfigError(f"{where}: train.schedule must be plateau or cosine")
    if not 0 <= train.validation_fraction < 1:
        raise ConfigError(f"{where}: train.validation_fraction must be in [0, 1)")
    return config


def config_from_dict(values: dict, where: str = "config") -> Config:
    values = dict(values or {})
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    unknown = sorted(set(values) - set(sections) - {"name"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)} (known: name, data, model, train)")
    config = Config(
        name=str(values.get("name", Path(where).stem)),
        **{key: _section(cls, values.get(key) or {}, f"{where}: {key}")
           for key, cls in sections.items()},
    )
    return validate(config, where)


def load_config(path: str | Path) -> Config:
    """Read and check a YAML configuration; every problem is a one-line ConfigError."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    return config_from_dict(values, str(path))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
