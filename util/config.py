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

from brats.cases import MODALITIES


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
class SyntheticConfig:
    """The synthetic cases demo.py trains on (synthetic.py): which world, how many cases."""

    world: str = "plain"  # "plain" (the template world) or "randomised" (datasets/domain.py)
    train_cases: int = 24
    validation_cases: int = 6


FAMILIES = ("een", "kermi2018", "unet3d_patches", "bennaceur2020")  # families.py's registry


@dataclass
class ModelConfig:
    """The embedding network (SPEC.md section 2). The spatial input shape is data.crop_size.

    `family` picks the system (families.py); every other field here is the EEN's. A baseline
    family takes its settings from its own section (KermiConfig, UNet3DConfig, BennaceurConfig).
    """

    family: str = "een"  # een | kermi2018 | unet3d_patches | bennaceur2020
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
    # Departures from the paper, each off by default (docs/findings.md, "Making the 2D branch
    # matter"):
    backbone_input_scale: float = 1.0  # x this before the backbone's own 1/255 rescaling
    norm_2d: str = "batch"  # "batch" (paper) or "group": normalisation of backbone and 2D decoder
    decoder_upsampling: str = "transpose"  # "transpose" (paper) or "resize" (bilinear + conv)
    skip_dropout: float = 0.0  # training: probability of dropping the 3D skips (all together)
    skip_dropout_levels: tuple = (1, 2, 3)  # which skips it drops: 1 full depth ... 3 deepest
    skip_dropout_decay_epochs: int = 0  # > 0: the rate falls linearly to skip_dropout_final
    skip_dropout_final: float = 0.0  # the rate from epoch skip_dropout_decay_epochs on
    # Training memory (docs/configurations.md, "Training memory"): the 3D levels listed (1 full
    # depth D, 2 D/f1, 3 D/(f1 f2), 4 depth 3; each a residual block with its strided or upsampling
    # step, encoder and decoder alike) recompute their inner maps in the backward pass instead of
    # keeping them
    remat_levels: tuple = ()


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
    randomise: bool = False  # each training image through another acquisition (domain.jitter)
    seed: int = 0


@dataclass
class KermiConfig:
    """Kermi et al. 2018, 2D residual U-Net on axial patches (BASELINES.md section 1)."""

    patch_size: int = 128  # square axial training patch
    filters: int = 64  # width of the first level (64 in the paper; x2 per level)
    patches_per_slice: float = 3.0  # patches drawn per case = this x slices of the crop
    noise_stddev: float = 0.01  # GaussianNoise on the input (training only)
    class_weights: tuple = (1.0, 5.0, 2.0, 4.0)  # weighted CE, classes 0, 1, 2, 4
    gdl_weight_cap: float = 0.0  # 0: GDL class weights 1/(r^2 + 1e-7) uncapped (faithful)
    learning_rate: float = 0.08  # SGD momentum 0.9; divided by 10 at every epoch start
    decay: float = 5e-6  # Keras-2 per-iteration decay; multiplied by 10 at every epoch start
    schedule_epoch_steps: int = 0  # steps between two /10 of the rate; 0: every training epoch
    flip: bool = True  # left-right flip of patch and labels with probability 0.5
    percentiles: tuple = (1.0, 99.0)  # per-slice clip before the z-score


@dataclass
class UNet3DConfig:
    """3D U-Net on random sub-volumes, MSD Task01 (BASELINES.md section 2)."""

    patch_size: tuple = (160, 160, 16)  # sub-volume H, W, D (each a multiple of 8, H == W)
    filters: int = 32  # width of the first level (x2 per level)
    patches_per_case: int = 10
    background_limit: float = 0.95  # a sub-volume is kept if its non-tumour share is below this
    max_tries: int = 1000  # corners drawn per sub-volume before the case is skipped
    augment: bool = True  # spatial flip, rot90 in H-W, intensity x U(0.9, 1.1)
    learning_rate: float = 1e-5  # Adam
    plateau_factor: float = 0.2  # ReduceLROnPlateau(val_loss)
    plateau_patience: int = 10
    min_learning_rate: float = 1e-6
    early_stopping_patience: int = 20  # EarlyStopping(val_loss, restore best weights)
    threshold: float = 0.5  # inference threshold of each sigmoid output (published path: 0.9)


@dataclass
class BennaceurConfig:
    """Ben naceur et al. 2020, selective attention on 2D patches (BASELINES.md section 3)."""

    variant: str = "input_sparse"  # input_sparse (130,180), sparse (127,876) or dense (181,124)
    patch_size: int = 64
    stride: int = 32  # grid of training patches over each axial slice; no-brain patches dropped
    class_weights: tuple = (0.28, 0.08, 0.43, 0.21)  # weighted CE, classes 0, 1, 2, 4
    learning_rate: float = 1e-3  # SGD Nesterov 0.9, x lr_decay per epoch
    lr_decay: float = 0.99
    early_stopping_patience: int = 10  # EarlyStopping(val_loss)
    percentiles: tuple = (1.0, 99.0)  # per-slice clip (published code: both bounds at 1st, a bug)
    min_component: int = 110  # post-processing 1: 8-connected tumour components below this go
    opening: bool = True  # post-processing 2: grey opening with the 3x3 cross per slice


BASELINE_SECTIONS = {"kermi2018": KermiConfig, "unet3d_patches": UNet3DConfig,
                     "bennaceur2020": BennaceurConfig}
EEN_ONLY_TRAIN = ("optimizer", "learning_rate", "plateau_factor", "plateau_patience", "schedule",
                  "warmup_epochs", "dice_per_channel", "augment", "randomise")


@dataclass
class Config:
    name: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    kermi2018: KermiConfig = field(default_factory=KermiConfig)
    unet3d_patches: UNet3DConfig = field(default_factory=UNet3DConfig)
    bennaceur2020: BennaceurConfig = field(default_factory=BennaceurConfig)

    def to_dict(self) -> dict:
        """Plain values of the settings model.family reads (what save_config writes)."""
        values = _plain(dataclasses.asdict(self))
        if self.model.family != "een":
            values["model"] = {"family": self.model.family}
            values["train"] = {k: v for k, v in values["train"].items() if k not in EEN_ONLY_TRAIN}
        return {k: v for k, v in values.items()
                if k not in BASELINE_SECTIONS or k == self.model.family}


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
    if model.family not in FAMILIES:
        raise ConfigError(f"{where}: model.family: unknown family {model.family!r} "
                          f"(known: {', '.join(FAMILIES)})")
    if config.synthetic.world not in ("plain", "randomised"):
        raise ConfigError(f"{where}: synthetic.world must be plain or randomised, "
                          f"got {config.synthetic.world!r}")
    if config.synthetic.train_cases < 2 or config.synthetic.validation_cases < 1:
        raise ConfigError(f"{where}: synthetic.train_cases must be at least 2 and "
                          f"validation_cases at least 1")
    if not 0 <= train.validation_fraction < 1:
        raise ConfigError(f"{where}: train.validation_fraction must be in [0, 1)")
    if model.family != "een":
        return validate_baseline(config, where)
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
    if not set(model.remat_levels) <= {1, 2, 3, 4}:
        raise ConfigError(f"{where}: model.remat_levels must be some of 1, 2, 3, 4 (depth levels)")
    if model.skip_dropout_decay_epochs < 0:
        raise ConfigError(f"{where}: model.skip_dropout_decay_epochs must be 0 or more")
    if not 0 <= model.skip_dropout_final <= model.skip_dropout:
        raise ConfigError(f"{where}: model.skip_dropout_final must be in [0, skip_dropout]")
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
    return config


def validate_baseline(config: Config, where: str) -> Config:
    """The checks of a baseline family: four modalities in order, patches that fit the crop."""
    family, data = config.model.family, config.data
    section = getattr(config, family)
    if tuple(data.modalities) != MODALITIES:
        raise ConfigError(f"{where}: data.modalities: {family} reads all four modalities as "
                          f"channels in the order {', '.join(MODALITIES)}")
    height, width, depth = data.crop_size
    if family == "unet3d_patches":
        patch = tuple(section.patch_size)
        if len(patch) != 3 or any(s < 8 or s % 8 for s in patch) or patch[0] != patch[1]:
            raise ConfigError(f"{where}: unet3d_patches.patch_size must be three multiples of 8 "
                              f"with H == W (three poolings, rot90), got {list(patch)}")
        if any(p > c for p, c in zip(patch, data.crop_size)):
            raise ConfigError(f"{where}: unet3d_patches.patch_size {list(patch)} exceeds "
                              f"data.crop_size {list(data.crop_size)}")
        if not 0 < section.threshold < 1 or not 0 < section.background_limit <= 1:
            raise ConfigError(f"{where}: unet3d_patches.threshold must be in (0, 1) and "
                              f"background_limit in (0, 1]")
        return config
    levels = {"kermi2018": 8, "bennaceur2020": 4}[family]  # input halved 3 or 2 times
    if section.patch_size % levels or section.patch_size > min(height, width):
        raise ConfigError(f"{where}: {family}.patch_size {section.patch_size} must be a multiple "
                          f"of {levels} and fit data.crop_size {height}x{width}")
    if len(section.class_weights) != 4:
        raise ConfigError(f"{where}: {family}.class_weights needs four entries "
                          f"(classes 0, 1, 2, 4)")
    low, high = section.percentiles
    if not 0 <= low < high <= 100:
        raise ConfigError(f"{where}: {family}.percentiles must be two values "
                          f"0 <= low < high <= 100")
    if family == "bennaceur2020" and section.variant not in ("input_sparse", "sparse", "dense"):
        raise ConfigError(f"{where}: bennaceur2020.variant must be input_sparse, sparse or dense, "
                          f"got {section.variant!r}")
    if family == "kermi2018" and section.schedule_epoch_steps < 0:
        raise ConfigError(f"{where}: kermi2018.schedule_epoch_steps must be 0 (every training "
                          f"epoch) or a number of steps")
    if family == "bennaceur2020" and section.stride < 1:
        raise ConfigError(f"{where}: bennaceur2020.stride must be at least 1")
    return config


def check_family_keys(values: dict, where: str) -> None:
    """One line for a YAML mixing families: EEN keys for a baseline, another family's section."""
    model = values.get("model") or {}
    family = model.get("family", "een") if isinstance(model, dict) else "een"
    for key in BASELINE_SECTIONS:
        if key in values and key != family:
            raise ConfigError(f"{where}: section {key} belongs to model.family {key}, "
                              f"but model.family is {family}")
    if family == "een" or family not in FAMILIES:
        return
    een_model = sorted(set(model) - {"family"})
    if een_model:
        raise ConfigError(f"{where}: model.{een_model[0]} is an EEN setting; model.family "
                          f"{family} takes its settings from the {family} section")
    train = values.get("train") or {}
    een_train = sorted(set(train) & set(EEN_ONLY_TRAIN)) if isinstance(train, dict) else []
    if een_train:
        raise ConfigError(f"{where}: train.{een_train[0]} is an EEN setting; model.family "
                          f"{family} takes it from the {family} section")


def config_from_dict(values: dict, where: str = "config") -> Config:
    values = dict(values or {})
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                "synthetic": SyntheticConfig, **BASELINE_SECTIONS}
    unknown = sorted(set(values) - set(sections) - {"name"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)} "
                          f"(known: name, {', '.join(sections)})")
    check_family_keys(values, where)
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
