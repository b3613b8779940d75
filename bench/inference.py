"""What one case costs to segment: the EEN ensemble beside nnU-Net v2 and MONAI's SegResNet.

    flock /tmp/een-heavy.lock python bench/inference.py --out bench/results   # 2 CPU cores
    python bench/inference.py --dry --out /tmp/inference-dry                  # narrow networks

One synthetic full-size case (240 x 240 x 155, four modalities, BraTS 2023 files), from its files
to its label file, each row in a process of its own pinned to --threads CPU cores (its peak memory
its own; a GPU when the row's library sees one):
    een-*       the `paper` ensemble of four networks (random weights: speed does not depend on
                them) through systems.inference.predict_case, as predict.py and the container run
                it: float32 and mixed bfloat16, without and with flip TTA (8 mirrorings). The first
                case compiles; the second is timed.
    nnunet-*    nnU-Net v2's own nnUNetPredictor (Gaussian sliding window, step 0.5) on one fold of
                a 3d_fullres PlainConvUNet of the plan nnU-Net makes for BraTS at 1 mm (patch
                128^3, 6 stages, 32-320 features; untrained weights), without and with mirroring
                (8 mirrorings); SimpleITK reading and writing included.
    segresnet   MONAI's SegResNet as its brats_mri_segmentation bundle infers: NormalizeIntensity
                (nonzero, channel-wise), SlidingWindowInferer roi 240 x 240 x 160, overlap 0.5,
                sigmoid > 0.5; nibabel reading and writing included.
FLOPs per case: 2 x multiply-adds of every convolution (the EEN: bench/layers.py's count of one
pass; torch: FlopCounterMode on one window) times passes (networks x mirrorings x windows).
Target: the EEN ensemble at or under half of nnU-Net's one-fold time at equal TTA (the ratios
printed). Results: a table on stdout, inference.md and inference.json under --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's packages and commands, for a script run as bench/NAME.py

from harness import run_row  # noqa: E402
from util.measure import peak_resident_bytes  # noqa: E402

# key: (system, precision, TTA)
ROWS = {
    "een-f32": ("een", "float32", False),
    "een-f32-tta": ("een", "float32", True),
    "een-bf16": ("een", "mixed_bfloat16", False),
    "een-bf16-tta": ("een", "mixed_bfloat16", True),
    "nnunet": ("nnunet", "float32", False),
    "nnunet-mirror": ("nnunet", "float32", True),
    "segresnet": ("segresnet", "float32", False),
}
# nnU-Net's BraTS patch and plan, the bundle's window; --dry: narrow networks on a 96x96x64 case
FULL = {"een_config": "configs/paper.yaml", "stages": 6, "features": 32, "filters": 16,
        "patch": 128, "roi": (240, 240, 160), "grid": None}
DRY = {"een_config": "configs/small.yaml", "stages": 4, "features": 4, "filters": 8,
       "patch": 96, "roi": (96, 96, 64), "grid": (96, 96, 64)}
MODALITIES = ("flair", "t1", "t1ce", "t2")


# ---- the case and the EEN run ------------------------------------------------------------------

def make_cases(root: Path, grid: tuple | None = None) -> None:
    """root/cases: two full-size synthetic BraTS 2023 cases (the first warms the EEN up); with
    `grid`, each image cut to that central box (--dry)."""
    import nibabel as nib
    import numpy as np

    import synthetic

    list(synthetic.write_dataset(root / "cases", 2, 0, "brats2023", validation=True,
                                 gt_dir=root / "truth", jobs=2))
    for path in sorted((root / "cases").rglob("*.nii.gz")) if grid else []:
        image = nib.load(path)
        box = tuple(slice((n - g) // 2, (n - g) // 2 + g) for n, g in zip(image.shape, grid))
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[box], image.affine), path)


def make_run(root: Path, config_path: str) -> None:
    """root/run: four networks of the config (random weights, a different seed each)."""
    import keras

    from model import build_model
    from util.config import load_config, save_config

    config = load_config(ROOT / config_path)
    config.model.backbone_weights = None
    run = root / "run"
    run.mkdir()
    save_config(config, run / "config.yaml")
    for seed, modality in enumerate(MODALITIES):
        keras.utils.set_random_seed(seed)
        (run / modality).mkdir()
        (run / modality / "network.json").write_text(json.dumps({"modalities": [modality]}))
        build_model(config).save_weights(run / modality / "best.weights.h5")
        keras.backend.clear_session()


def case_files(root: Path, index: int) -> tuple:
    from brats.cases import find_cases

    return find_cases(root / "cases")[index]


def peak_gb(torch_device=None) -> float:
    """The GPU's peak allocation when the row ran on one, else this process's max RSS."""
    if torch_device is not None and torch_device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return peak_resident_bytes() / 1e9


# ---- the rows (each in its own process) ----------------------------------------------------------

def een_row(args, precision: str, tta: bool) -> dict:
    """predict_case on the first case (compiles) and the second (timed)."""
    import layers as layer_bench
    from harness import device_name, peak_gb as keras_peak_gb
    from systems.inference import flips, predict_case
    from systems.networks import load_network, network_files
    from util.config import load_config

    run = args.root / "run"
    config = load_config(run / "config.yaml")
    models = {}
    networks = [load_network(*spec, config, precision, models)
                for spec in network_files(run, None, None)]
    options = argparse.Namespace(tta=tta, threshold=0.5, et_min_voxels=0, weights=None,
                                 save_probabilities=False, codings={},
                                 output=Path(tempfile.mkdtemp(dir=args.root)))
    times = []
    for index in (0, 1):
        start = time.perf_counter()
        predict_case(case_files(args.root, index), networks, config, options)
        times.append(time.perf_counter() - start)
    rows, _ = layer_bench.distinct_rows(next(iter(models.values())))
    one_pass = sum(r.forward_flops * r.count for r in rows)
    return {"seconds": times[1], "first_call": times[0], "peak_gb": keras_peak_gb(),
            "tflop": one_pass * len(networks) * len(flips(tta)) / 1e12, "device": device_name(),
            "passes": len(networks) * len(flips(tta))}


def torch_flops(network, shape: tuple) -> float:
    """FLOPs of one forward pass of `network` on a (1, C, ...) input, counted on the meta device."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(shape, device="meta"))
    return float(counter.get_total_flops())


def brats_plans(patch: int, stages: int, base: int) -> tuple:
    """(plans, dataset.json) of a BraTS-like nnU-Net v2 dataset: 4 channels at 1 mm, z-scored
    in the brain, 3d_fullres PlainConvUNet (patch^3, `stages` stages of two 3x3x3 convolutions,
    features `base` doubling up to 10 x base, instance norm, leaky ReLU), region-based WT, TC, ET."""
    features = [min(base * 2 ** i, 10 * base) for i in range(stages)]
    resampling = "resample_data_or_seg_to_shape"
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [patch] * 3, "median_image_size_in_voxels": [140, 171, 137],
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"] * 4,
        "use_mask_for_norm": [True] * 4, "batch_dice": False,
        "resampling_fn_data": resampling, "resampling_fn_seg": resampling,
        "resampling_fn_probabilities": resampling,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0,
                                      "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0,
                                     "force_separate_z": None},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages, "features_per_stage": features,
                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
    }
    plans = {"dataset_name": "Dataset137_BraTS2021", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
             "original_median_shape_after_transp": [140, 171, 137],
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2],
             "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": configuration},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {  # used by CT normalisation only
                 str(c): {"max": 1.0, "mean": 0.0, "median": 0.0, "min": 0.0,
                          "percentile_00_5": 0.0, "percentile_99_5": 1.0, "std": 1.0}
                 for c in range(4)}}
    dataset = {"channel_names": {"0": "T2F", "1": "T1N", "2": "T1C", "3": "T2W"},
               "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                          "enhancing tumor": 3},
               "regions_class_order": [1, 2, 3], "numTraining": 1, "file_ending": ".nii.gz"}
    return plans, dataset


def torch_device(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def nnunet_row(args, mirroring: bool) -> dict:
    """nnUNetPredictor.predict_single_npy_array on the second case, read and written by
    SimpleITKIO as nnUNetv2_predict does."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    device = torch_device(args.threads)
    sizes = DRY if args.dry else FULL
    patch = sizes["patch"]
    plans, dataset = brats_plans(patch, sizes["stages"], sizes["features"])
    manager = PlansManager(plans)
    chosen = manager.get_configuration("3d_fullres")
    heads = manager.get_label_manager(dataset).num_segmentation_heads
    network = get_network_from_plans(chosen.network_arch_class_name,
                                     chosen.network_arch_init_kwargs,
                                     chosen.network_arch_init_kwargs_req_import, 4, heads,
                                     deep_supervision=False)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=True, device=device, allow_tqdm=False)
    predictor.manual_initialization(network, manager, chosen, [network.state_dict()], dataset,
                                    "nnUNetTrainer", (0, 1, 2))
    files = case_files(args.root, 1)
    names = ("flair", "t1", "t1ce", "t2")
    start = time.perf_counter()
    io = SimpleITKIO()
    image, properties = io.read_images([str(files.images[m]) for m in names])
    labels = predictor.predict_single_npy_array(image, {"spacing": properties["spacing"]})
    io.write_seg(labels, str(args.root / f"nnunet_{mirroring}.nii.gz"), properties)
    seconds = time.perf_counter() - start
    brain = [slice(i.min(), i.max() + 1) for i in (image[0] != 0).nonzero()]  # nnU-Net's crop
    shape = [s.stop - s.start for s in brain]
    windows = 1
    for steps in compute_steps_for_sliding_window([max(n, patch) for n in shape], [patch] * 3, 0.5):
        windows *= len(steps)
    passes = windows * (8 if mirroring else 1)
    one = torch_flops(network, (1, 4, *[patch] * 3))
    return {"seconds": seconds, "first_call": seconds, "peak_gb": peak_gb(device),
            "tflop": one * passes / 1e12, "device": str(device), "passes": passes}


def segresnet_row(args) -> dict:
    """MONAI's bundle inference on the second case: nibabel in and out, labels nested."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.networks.nets import SegResNet
    from monai.transforms import NormalizeIntensity

    from brats.codings import regions_to_labels

    device = torch_device(args.threads)
    roi = (DRY if args.dry else FULL)["roi"]
    network = SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1),
                        init_filters=(DRY if args.dry else FULL)["filters"],
                        in_channels=4, out_channels=3, dropout_prob=0.2).to(device).eval()
    inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.5)
    files = case_files(args.root, 1)
    start = time.perf_counter()
    first = nib.load(files.images["flair"])
    image = np.stack([np.asanyarray(nib.load(files.images[m]).dataobj, np.float32)
                      for m in ("t1ce", "t1", "t2", "flair")])  # the bundle's channel order
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    with torch.no_grad():
        logits = inferer(torch.as_tensor(np.asarray(image))[None].to(device), network)
    regions = (torch.sigmoid(logits)[0] > 0.5).cpu().numpy()  # (3: TC, WT, ET, X, Y, Z)
    labels = regions_to_labels(np.stack([regions[1], regions[0], regions[2]], -1).astype(np.float32))
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), first.affine), args.root / "segresnet.nii.gz")
    seconds = time.perf_counter() - start
    windows = int(np.prod([1 + max(0, int(np.ceil((n - r) / (r * 0.5))))
                           for n, r in zip(first.shape, roi)]))
    one = torch_flops(network, (1, 4, *roi))
    return {"seconds": seconds, "first_call": seconds, "peak_gb": peak_gb(device),
            "tflop": one * windows / 1e12, "device": str(device), "passes": windows}


def worker(args) -> dict:
    cores = sorted(os.sched_getaffinity(0))[:args.threads]
    os.sched_setaffinity(0, cores)  # before any library starts its thread pool
    system, precision, tta = ROWS[args.row]
    if system == "een":
        return een_row(args, precision, tta)
    from peers.plumbing import without_tensorflow

    without_tensorflow()  # MONAI would import TensorFlow through tensorboard
    return nnunet_row(args, tta) if system == "nnunet" else segresnet_row(args)


# ---- the table ---------------------------------------------------------------------------------

def report(results: dict, header: str) -> list:
    lines = [header, "", "| row | system | precision | TTA | s/case | x nnU-Net (same TTA) | "
             "peak GB | TFLOP/case | passes | first case s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        system, precision, tta = ROWS[key]
        if "error" in r:
            lines.append(f"| {key} | {system} | {precision} | {tta} | failed: {r['error'][:80]} "
                         f"| | | | | |")
            continue
        reference = results.get("nnunet-mirror" if tta else "nnunet", {})
        ratio = f"{r['seconds'] / reference['seconds']:.2f}" if "seconds" in reference else ""
        lines.append(f"| {key} | {system} | {precision} | {'8 flips' if tta else 'none'} | "
                     f"{r['seconds']:.1f} | {ratio} | {r['peak_gb']:.2f} | {r['tflop']:.2f} | "
                     f"{r['passes']} | {r['first_call']:.1f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU cores per row (default 2)")
    parser.add_argument("--dry", action="store_true",
                        help="a quick check: the small EEN config, nnU-Net and SegResNet narrow")
    parser.add_argument("--row-timeout", type=float, default=3600, help="seconds per row")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    keys = args.rows.split(",")
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results, started = {}, time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sizes = DRY if args.dry else FULL
        make_cases(root, sizes["grid"])
        if any(ROWS[key][0] == "een" for key in keys):
            make_run(root, sizes["een_config"])
        for key in keys:
            arguments = ["--row", key, "--root", root, "--threads", args.threads]
            results[key] = run_row(__file__, arguments + (["--dry"] if args.dry else []),
                                   timeout=args.row_timeout)
            print(f"{key}: {json.dumps(results[key])}", flush=True)
    header = (f"bench/inference.py{' --dry' if args.dry else ''}: one "
              f"{'96x96x64' if args.dry else '240x240x155'} case, "
              f"{args.threads} CPU cores per row; {time.perf_counter() - started:.0f} s in all")
    lines = report(results, header)
    print("\n".join(lines))
    (args.out / "inference.md").write_text("\n".join(lines) + "\n")
    (args.out / "inference.json").write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
