"""configs/full_multimodal.yaml: the whole volume, four modalities, padded and unpadded exactly."""
import math

import numpy as np

from systems import een
from brats.cases import MODALITIES, find_cases, load_case
from util.config import load_config
from datasets import volumes
from tests.conftest import FULL

CONFIG = "configs/full_multimodal.yaml"


def test_config_pads_the_brats_grid_to_multiples_of_32_and_depth_factors_of_162():
    config = load_config(CONFIG)
    assert config.data.crop_size == (256, 256, 162)
    assert config.model.channels == len(config.data.modalities) == 4
    assert 3 * math.prod(config.model.depth_factors) == 162
    assert all(s >= n for s, n in zip(config.data.crop_size, (240, 240, 155)))
    assert volumes.crop_offsets((240, 240, 155), config.data.crop_size) == (-8, -8, -4)


def test_preprocessing_pads_and_prediction_removes_the_padding_exactly(brats2020_dir):
    """Nothing is cut: every tumour voxel is kept, the images sit unchanged inside a zero frame,
    and full_grid gives back the original 240x240x155 grid voxel for voxel."""
    config = load_config(CONFIG)
    case = load_case(find_cases(brats2020_dir)[0])
    assert case.shape == (240, 240, 155)
    arrays, meta = volumes.preprocess_case(case, config.data.crop_size, config.data.crop_mode)
    assert meta["crop_offsets"] == [-8, -8, -4]
    assert meta["wt_voxels"] > 0 and meta["wt_voxels_lost"] == 0
    inside = (slice(8, 248), slice(8, 248), slice(4, 159))
    for modality in MODALITIES:
        image = arrays[modality]
        assert image.shape == (256, 256, 162)
        frame = image.copy()
        frame[inside] = 0
        assert not frame.any()  # the padding is zero, the background value after z-scoring
        brain = case.images[modality] != 0
        assert (image[inside] != 0).sum() == brain.sum()
    regions = arrays["regions"].astype(np.float32)
    np.testing.assert_array_equal(volumes.full_grid(regions, meta),
                                  volumes.label_regions(case.seg).astype(np.float32))


def test_full_size_network_and_its_forward_pass_on_cpu():
    """The paper's network with four input channels, built at 256x256x162: its parameters plus
    3 x 27 x 16 stem weights. Its compiled predict path on a 64x64x162x4 volume, the same layers
    and depth (parameters do not depend on the width); make test-full (conftest.FULL) passes the
    whole 256x256x162x4 volume (4.4 GB, 20-30 s on 2 cores)."""
    config = load_config(CONFIG)
    config.model.backbone_weights = None
    network = een.build_model(config)
    assert network.count_params() == 14_420_730 + 3 * 27 * 16
    assert network.get_layer(een.COMPRESSED_IMAGE).output.shape == (None, 256, 256, 3)
    assert isinstance(network.get_layer("enc1"), een.Rematerialised)
    if not FULL:
        config.data.crop_size = (64, 64, 162)
        smaller = een.build_model(config)
        assert smaller.count_params() == network.count_params()
        network = smaller
    shape = (1, *config.data.crop_size, 4)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    y = network.predict_on_batch(x)
    assert y.shape == (*shape[:-1], 3)
    assert np.isfinite(y).all() and 0 <= y.min() and y.max() <= 1 and y.std() > 0
