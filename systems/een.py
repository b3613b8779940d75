"""The efficient embedding network (Messaoudi et al., BrainLes 2020), SPEC.md section 2;
`model.py` is its command (summary, parameter count).

Input (H, W, D, C), channels last, e.g. 192x160x108x1:

    depth encoder   3D convolutions shrink only the depth: D -> D/f1 -> D/(f1 f2) -> 3,
                    then a 1x1x1 convolution gives one channel       -> "compressed_image" (H, W, 3)
    backbone        a keras.applications network (EfficientNet-B0 in the paper; BACKBONES) on that
                    3-channel image; skips at H/2 ... H/32
    2D decoder      four transposed convolutions with skip concatenation -> "decoded_image" (H, W, 3)
    3D decoder      the depth grows back 3 -> ... -> D, adding the encoder's 3D skips
    output          K channels: sigmoid regions WT, TC, ET (paper) or softmax labels (authors' code)

Only `keras` and `keras.ops` are used, so the model runs under the TensorFlow, JAX and PyTorch
backends alike.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from util.tensorflow_start import prepare_tensorflow

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

import keras
from keras import layers, ops

from util.config import Config, ConfigError
from systems.baselines import baseline_module
from systems import fast_initializers, fast_layers
from systems.fast_layers import GroupNorm

fast_initializers.install()  # on JAX: Keras's initial weights from a few compiled programs


class Backbone(NamedTuple):
    """A keras.applications network as the EEN's 2D encoder.

    skips: the five maps that feed the 2D decoder, at H/2, H/4, H/8, H/16 and H/32 (the last is
    the bottleneck). A map is named by its layer ("name"), by the layer it enters ("name/input",
    where its own layer has an automatic name that changes between builds), or is the network's
    output (NETWORK_OUTPUT); None: the family has no map at that scale, and that decoder step
    upsamples without a skip. preprocess: (scale, offset) of the input preprocessing that
    keras.applications leaves to the caller's preprocess_input, applied inside the encoder;
    None where the network holds its own (EfficientNet, ConvNeXt, MobileNetV3).
    """

    constructor: Callable
    skips: tuple
    preprocess: tuple | None = None


NETWORK_OUTPUT = "/output"  # "/" cannot occur in a layer name
_EFFICIENTNET_SKIPS = ("block2a_expand_activation", "block3a_expand_activation",
                       "block4a_expand_activation", "block6a_expand_activation", "top_activation")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# The backbone table, in the style of qubvel's segmentation_models: another keras.applications
# backbone is one more entry here (tests/test_model.py checks each entry's shapes).
BACKBONES = {
    **{f"EfficientNetB{i}": Backbone(getattr(keras.applications, f"EfficientNetB{i}"),
                                     _EFFICIENTNET_SKIPS) for i in range(8)},
    # fused blocks 1-3 stride in their expansion: stage outputs at H/2 and H/4
    "EfficientNetV2B0": Backbone(keras.applications.EfficientNetV2B0, (
        "block1a_project_activation", "block2b_add", "block4a_expand_activation",
        "block6a_expand_activation", "top_activation")),
    "EfficientNetV2S": Backbone(keras.applications.EfficientNetV2S, (
        "block1b_add", "block2d_add", "block4a_expand_activation", "block6a_expand_activation",
        "top_activation")),
    # pre-activation: the stem convolution at H/2; a stage strides in its last block
    "ResNet50V2": Backbone(keras.applications.ResNet50V2, (
        "conv1_conv", "conv2_block3_1_relu", "conv3_block4_1_relu", "conv4_block6_1_relu",
        "post_relu"), preprocess=(1 / 127.5, -1.0)),  # resnet_v2.preprocess_input, mode "tf"
    "DenseNet121": Backbone(keras.applications.DenseNet121, (
        "conv1_relu", "pool2_conv", "pool3_conv", "pool4_conv", "relu"),  # mode "torch":
        preprocess=(tuple(1 / (255 * s) for s in _IMAGENET_STD),
                    tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)))),
    # a 4x4 patchify stem: no H/2 map; stage outputs enter the next downsampling block
    "ConvNeXtTiny": Backbone(keras.applications.ConvNeXtTiny, (
        None, "convnext_tiny_downsampling_block_0/input", "convnext_tiny_downsampling_block_1/input",
        "convnext_tiny_downsampling_block_2/input", NETWORK_OUTPUT)),
    # as EfficientNet: the expansion of each stride-2 block, entering its depthwise padding
    "MobileNetV3Large": Backbone(keras.applications.MobileNetV3Large, (
        "expanded_conv_1_depthwise_pad/input", "expanded_conv_3_depthwise_pad/input",
        "expanded_conv_6_depthwise_pad/input", "expanded_conv_12_depthwise_pad/input",
        NETWORK_OUTPUT)),
}

COMPRESSED_IMAGE = "compressed_image"  # what the backbone sees, (H, W, 3)
DECODED_IMAGE = "decoded_image"  # what the 2D decoder hands to the 3D decoder, (H, W, 3)
OUTPUT = "segmentation"


class Kernels(NamedTuple):
    """The layer classes that compute the 3D part of the network.

    FAST (the default): fast_layers'; STOCK: plain Keras layers, how the authors' code runs and the
    benchmarks' baseline. Both compute the same function with the same weights
    (tests/test_fast_layers.py). Checkpoints load between networks whose classes have the same
    names (Keras keys weights by class name): FAST and Kernels(strided_conv=layers.Conv3D), the
    network as built before fast_layers.Conv3D, but not STOCK (GroupNormalization).
    """

    norm: type = GroupNorm
    strided_conv: type = fast_layers.Conv3D


FAST, STOCK = Kernels(), Kernels(layers.GroupNormalization, layers.Conv3D)


@keras.saving.register_keras_serializable("een")
class SkipDropout(layers.Layer):
    """In training, drop the given 3D skips together with probability `rate` (one draw per case).

    A step without skips must segment through the 2D branch (and the skips not given), so the
    decoder cannot learn to ignore the branch (model.skip_dropout and skip_dropout_levels; 0 in
    the paper). At inference the skips pass unchanged.
    Inputs and outputs: a list of 3D skip maps (B, H, W, D_i, F_i).
    """

    def __init__(self, rate: float, seed: int | None = None, decays: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed
        self.decays = decays
        self.generator = keras.random.SeedGenerator(seed)
        # decays: the rate in use is a variable that training lowers (skip_dropout_decay_epochs)
        self.current_rate = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(rate), trainable=False,
            name="current_rate") if decays else None

    def call(self, skips, training=False):
        if not training:
            return list(skips)
        batch = ops.shape(skips[0])[0]
        draw = keras.random.uniform((batch,), seed=self.generator)
        rate = self.rate if self.current_rate is None else ops.cast(self.current_rate, draw.dtype)
        keep = ops.cast(draw >= rate, skips[0].dtype)
        return [s * ops.reshape(keep, (-1,) + (1,) * (len(s.shape) - 1)) for s in skips]

    def compute_output_shape(self, input_shape):
        return list(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "decays": self.decays}


def residual_block(x, filters: int, groups: int, name: str, norm=GroupNorm):
    """Myronenko's residual block: GN-ReLU-Conv x2 plus a 1x1x1 projection of the input."""
    shortcut = layers.Conv3D(filters, 1, name=f"{name}_shortcut")(x)
    y = x
    for i in (1, 2):
        y = norm(groups, name=f"{name}_gn{i}")(y)
        y = layers.ReLU(name=f"{name}_relu{i}")(y)
        y = layers.Conv3D(filters, 3, padding="same", name=f"{name}_conv{i}")(y)
    return layers.Add(name=f"{name}_add")([y, shortcut])


@keras.saving.register_keras_serializable("een")
class Rematerialised(layers.Layer):
    """A functional segment of the network whose inner maps are recomputed in the backward pass.

    Training keeps the maps a layer's gradient needs; a 3D level at full H x W holds several of
    them (GN, ReLU and convolution outputs of its residual block, its strided or upsampled input).
    Here the segment runs under keras.remat (tf.recompute_grad, jax.checkpoint, torch checkpoint):
    only its inputs and output stay, the inside is computed again when the gradient reaches it
    (model.remat_levels). The segment holds the same layers, names and weights as without.
    The remat function takes the tensors positionally: tf.custom_gradient refuses keywords (such
    as a sub-model's `training`) inside a compiled step.
    """

    def __init__(self, segment: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.segment = segment

    def call(self, inputs):
        return keras.remat(lambda *tensors: self.segment(list(tensors)))(*inputs)

    def compute_output_spec(self, inputs):
        return self.segment.compute_output_spec(list(inputs))

    def get_config(self) -> dict:
        return {**super().get_config(), "segment": keras.saving.serialize_keras_object(self.segment)}

    @classmethod
    def from_config(cls, config: dict):
        segment = keras.saving.deserialize_keras_object(config.pop("segment"))
        return cls(segment, **config)


def rematerialised(build, inputs: list, name: str):
    """build(*inputs) as one Rematerialised layer named `name`; inner layers keep their names."""
    entries = [keras.Input(t.shape[1:], dtype=t.dtype, name=f"{name}_input{i}")
               for i, t in enumerate(inputs)]
    segment = keras.Model(entries, build(*entries), name=f"{name}_segment")
    return Rematerialised(segment, name=name)(inputs)


def shrink_depth(x, filters: int, factor: int, mode: str, name: str, conv=fast_layers.Conv3D):
    """Divide the depth by `factor` (H and W unchanged): strided 3x3x3 conv, or max-pool + conv.

    conv: the strided convolution's class, fast_layers.Conv3D or keras's (the same function).
    """
    if mode == "maxpool":
        x = layers.MaxPooling3D((1, 1, factor), name=f"{name}_pool")(x)
        return layers.Conv3D(filters, 3, padding="same", name=f"{name}_conv")(x)
    return conv(filters, 3, strides=(1, 1, factor), padding="same", name=f"{name}_conv")(x)


def depth_encoder(inputs, config: Config, kernels: Kernels = FAST) -> tuple:
    """(H, W, D, C) -> (compressed image (H, W, 3), [3D skips at depths D, D/f1, D/(f1 f2)])."""
    m = config.model
    norm = kernels.norm
    height, width, _ = config.data.crop_size
    f = m.encoder_filters
    x = layers.Conv3D(f[0], 3, padding="same", name="enc_stem")(inputs)
    x = layers.SpatialDropout3D(m.encoder_dropout, name="enc_dropout")(x)
    def first_block(t):  # level 1 starts after the dropout, whose mask a recomputation would redraw
        return residual_block(t, f[0], m.groupnorm_groups, "enc1", norm)

    skips = [rematerialised(first_block, [x], "enc1") if 1 in m.remat_levels else first_block(x)]
    x = skips[0]
    for level, (filters, factor) in enumerate(zip(f[1:], m.depth_factors), start=2):
        def level_block(t, filters=filters, factor=factor, name=f"enc{level}"):
            t = shrink_depth(t, filters, factor, m.downsampling, f"{name}_down",
                             kernels.strided_conv)
            return residual_block(t, filters, m.groupnorm_groups, name, norm)

        x = (rematerialised(level_block, [x], f"enc{level}") if level in m.remat_levels
             else level_block(x))
        skips.append(x)
    x = layers.Conv3D(1, 1, activation=m.compression_activation, name="enc_to_image")(x)
    image = layers.Reshape((height, width, 3), name=COMPRESSED_IMAGE)(x)
    return image, skips[:-1]


def backbone_weights(config: Config):
    """keras.applications `weights`: "imagenet", None, or a local file (checked here)."""
    weights = config.model.backbone_weights
    if weights in (None, "none", "None", "imagenet"):
        return None if weights in ("none", "None") else weights
    if not Path(weights).is_file():
        raise ConfigError(f"model.backbone_weights: {weights} is not a file (use imagenet, "
                          f"null, or a local weights file)")
    return str(weights)


def backbone(config: Config) -> keras.Model:
    """The 2D encoder as a model (H, W, 3) -> its skip maps, H/2 ... H/32 (bottleneck last).

    One output per map the family has (four for ConvNeXt, which has no H/2 map, else five);
    backbone_maps puts None in the missing places. Input: 0-255 RGB as keras.applications
    expects; a family whose preprocessing is a separate preprocess_input gets it as the layer
    "<backbone>_preprocess" in front of the network.
    """
    m = config.model
    if m.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: {m.backbone} is not one of {', '.join(BACKBONES)}")
    entry = BACKBONES[m.backbone]
    height, width, _ = config.data.crop_size
    inputs = keras.Input((height, width, 3), name=f"{m.backbone.lower()}_input")
    x = inputs
    if entry.preprocess:
        scale, offset = entry.preprocess
        x = layers.Rescaling(scale, offset, name=f"{m.backbone.lower()}_preprocess")(inputs)
    network = entry.constructor(include_top=False, weights=backbone_weights(config), input_tensor=x)
    if m.norm_2d == "group":
        network = with_group_norm(network, m.groupnorm_groups)
    network.trainable = m.backbone_trainable
    outputs = [skip_map(network, ref) for ref in entry.skips if ref is not None]
    return keras.Model(network.inputs, outputs, name=f"{m.backbone.lower()}_encoder")


def skip_map(network: keras.Model, ref: str):
    """The map a BACKBONES skip entry names: a layer's output, a layer's input, or the output."""
    if ref == NETWORK_OUTPUT:
        return network.outputs[0]
    name, _, port = ref.partition("/")
    layer = network.get_layer(name)
    return layer.input if port == "input" else layer.output


def backbone_maps(config: Config, image) -> list:
    """The backbone on `image`: five maps H/2 ... H/32, None where its family has none."""
    maps = iter(backbone(config)(image))
    return [None if ref is None else next(maps) for ref in BACKBONES[config.model.backbone].skips]


def with_group_norm(network: keras.Model, groups: int) -> keras.Model:
    """`network` with every BatchNormalization replaced by GroupNorm(groups), weights kept.

    With batch 1, batch statistics in training differ from the moving averages used at
    inference; group statistics are the same in both (model.norm_2d: group). GroupNorm takes
    BatchNorm's gamma and beta; the moving statistics are dropped.
    """
    def clone(layer):
        if isinstance(layer, layers.BatchNormalization):
            return GroupNorm(groups, epsilon=layer.epsilon, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=clone)
    for source, target in zip(network.layers, copy.layers):
        weights = source.get_weights()
        if isinstance(source, layers.BatchNormalization):
            weights = weights[:2]  # gamma, beta
        if weights:
            target.set_weights(weights)
    return copy


def upsample_2d(x, filters: int, config: Config, name: str, use_bias: bool = False):
    """Double H and W: a stride-2 transposed convolution (paper), or bilinear resize + conv.

    The two hold the same number of parameters; the resize avoids the transposed convolution's
    checkerboard (model.decoder_upsampling).
    """
    if config.model.decoder_upsampling == "resize":
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_resize")(x)
        return layers.Conv2D(filters, 3, padding="same", use_bias=use_bias, name=name)(x)
    return layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=use_bias,
                                  name=name)(x)


def decoder_2d(skips: list, config: Config):
    """Bottleneck (H/32) -> (H, W, 3): four up-steps concatenated with the skips, then one more."""
    m = config.model
    x = skips[-1]
    for level, (filters, skip) in enumerate(zip(m.decoder_filters, reversed(skips[:-1])), start=1):
        name = f"dec2d_up{level}"
        x = upsample_2d(x, filters, config, f"{name}_tconv")
        if m.norm_2d == "group":
            x = GroupNorm(m.groupnorm_groups, name=f"{name}_gn")(x)
        else:
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
        x = layers.SpatialDropout2D(m.decoder_dropout, name=f"{name}_dropout")(x)
        x = layers.ReLU(name=f"{name}_relu")(x)
        if skip is not None:  # None: a backbone without this scale (ConvNeXt at H/2)
            x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    return upsample_2d(x, 3, config, DECODED_IMAGE, use_bias=True)


def decoder_3d(image, skips: list | None, config: Config, norm=GroupNorm):
    """(H, W, 3) -> (H, W, D, K): depth grows by f3, f2, f1, adding the encoder's 3D skips.

    skips None: nothing is added (the "3D skips zeroed" ablation of analyze.py).
    """
    m = config.model
    height, width, _ = config.data.crop_size
    x = layers.Reshape((height, width, 3, 1), name="dec3d_volume")(image)
    skips = [None] * 3 if skips is None else skips
    levels = zip(reversed(m.encoder_filters[:3]), reversed(m.depth_factors), reversed(skips))
    for level, (filters, factor, skip) in enumerate(levels, start=1):
        def level_block(t, skip=None, filters=filters, factor=factor, name=f"dec3d_{level}"):
            t = layers.Conv3D(filters, 1, name=f"{name}_proj")(t)
            t = layers.UpSampling3D((1, 1, factor), name=f"{name}_up")(t)
            if skip is not None:
                t = layers.Add(name=f"{name}_skip")([t, skip])
            return residual_block(t, filters, m.groupnorm_groups, name, norm)

        inputs = [x] if skip is None else [x, skip]
        x = (rematerialised(level_block, inputs, f"dec3d_{level}")
             if 4 - level in m.remat_levels  # dec3d_3 is at full depth, level 1
             else level_block(*inputs))
    x = layers.Conv3D(m.encoder_filters[0], 3, padding="same", name="dec3d_head")(x)
    return layers.Conv3D(m.output_channels, 1, activation=m.output_activation, dtype="float32",
                         name=OUTPUT)(x)


def build_model(config: Config, kernels: Kernels = FAST, skips_3d: bool = True) -> keras.Model:
    """The whole network for `config`: (batch, H, W, D, C) -> (batch, H, W, D, K).

    kernels: FAST (fast_layers) or STOCK (plain Keras layers: how the authors' code runs, the
    benchmarks' baseline), the same weights and function (Kernels). skips_3d False builds the
    same layers without the 3D skip additions (an ablation; the weights load by layer name).
    """
    m = config.model
    inputs = keras.Input((*config.data.crop_size, m.channels), name="volume")
    image, skips = depth_encoder(inputs, config, kernels)
    if m.skip_dropout > 0:
        chosen = [level - 1 for level in sorted(m.skip_dropout_levels)]
        dropout = SkipDropout(m.skip_dropout, seed=config.train.seed,
                              decays=m.skip_dropout_decay_epochs > 0, name="skip_dropout")
        dropped = dict(zip(chosen, dropout([skips[i] for i in chosen])))
        skips = [dropped.get(i, skip) for i, skip in enumerate(skips)]
    if m.backbone_input_scale != 1:
        image = layers.Rescaling(m.backbone_input_scale, name="backbone_input_scale")(image)
    decoded = decoder_2d(backbone_maps(config, image), config)
    outputs = decoder_3d(decoded, skips if skips_3d else None, config, kernels.norm)
    return keras.Model(inputs, outputs, name=f"een_{config.name}")


def feature_model(model: keras.Model) -> keras.Model:
    """The same network returning the maps of the paper's Figs. 3/4 by name.

    Outputs a dict: compressed_image (H, W, 3) as fed to the backbone, decoded_image (H, W, 3) as
    handed to the 3D decoder, and segmentation (H, W, D, K).
    """
    names = (COMPRESSED_IMAGE, DECODED_IMAGE, OUTPUT)
    return keras.Model(model.inputs, {n: model.get_layer(n).output for n in names},
                       name=f"{model.name}_features")
