"""The BraTS challenge container's entry point: a baked run segments every case of a folder.

    python container/entrypoint.py                                  # in the image: /input -> /output
    python container/entrypoint.py --run RUN --input IN --output OUT          # BraTS 2025 (Docker)
    python container/entrypoint.py infer --run RUN --data_path D --parameters_file P --output_path O
    python container/entrypoint.py stage --run RUN --out build/container      # make container's context

BraTS 2025 (Synapse): `docker run --network none --gpus all -v IN:/input:ro -v OUT:/output:rw
IMAGE`; IN holds one folder per case, BraTS-XXX-xxxxx-xxx/<id>-t1n|t1c|t2w|t2f.nii.gz, and the
container writes OUT/<id>.nii.gz. BraTS 2023 and 2024 (MLCube through MedPerf): the task `infer`
with --data_path (the cases, the same layout), --parameters_file (parameters.yaml: optional keys
tta, precision, ensemble) and --output_path (OUT/<id>.nii.gz).

Each case goes through systems.inference.predict_case, as predict.py predicts: every network of the
run, their sigmoid outputs averaged (per-region weights when the run holds ensemble_weights.json,
else the paper's plain average), flip TTA over the 8 mirrorings unless --no-tta, labels in the
case's edition coding from its id (BraTS 2023+ ET = 3; PED ET = 1), uint8 on the input's grid with
its affine and header. The input is only read; nothing but <id>.nii.gz is written to the output
(each file under a temporary name, then renamed); no network is used. The GPU is used when
TensorFlow sees one, else the CPU. A case that fails is one line `error: <id>: ...` on stderr and
the others are still written (exit status 1); a bad run, input or output folder ends the run in
one line (exit status 2).

stage: copies what the image needs (the project's packages, model.py, losses.py, requirements.txt,
this folder and the run's config, network descriptions, best weights and ensemble weights) into
one folder, the Docker build context of `make container RUN=runs/paper`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project (in the image: /opt/een)
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

from util.tensorflow_start import prepare_tensorflow  # noqa: E402

prepare_tensorflow()  # before anything imports TensorFlow: oneDNN on, its start-up lines off

from brats.cases import CaseError, find_cases  # noqa: E402
from brats.codings import PED_CODINGS, CodingError  # noqa: E402
from systems.inference import WEIGHTS_FILE, predict_case, read_weights  # noqa: E402
from systems.networks import load_network, network_files  # noqa: E402
from util.config import ConfigError  # noqa: E402
from util.outputs import OutputError, check_folder, exits_cleanly  # noqa: E402
from util.portal import case_codings  # noqa: E402
from util.runfolder import read_config  # noqa: E402

BAKED_RUN = Path(os.environ.get("EEN_RUN", "/opt/een/run"))  # the Dockerfile's EEN_RUN
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
ENSEMBLES = ("auto", "plain", "fitted")
PARAMETERS = {"tta": bool, "precision": str, "ensemble": str, "ped_coding": str}  # parameters.yaml
PROJECT = ("brats", "datasets", "scoring", "systems", "util", "model.py", "losses.py",
           "requirements.txt", "container")  # what the image holds of the project
RUN_FILES = ("config.yaml", WEIGHTS_FILE, "*/network.json", "*/best.weights.h5")


# ---- segmenting a folder of cases ---------------------------------------------------------------

def device() -> str:
    """What the networks run on: TensorFlow's first GPU, else the CPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"GPU ({gpus[0].name})" if gpus else f"CPU ({os.cpu_count()} cores)"


def load_ensemble(run: Path, precision: str, ensemble: str) -> tuple:
    """(config, networks, weights or None) of a run; `auto` takes the fitted weights when the
    run holds them."""
    config = read_config(run)
    specs = network_files(run, None, None)
    if ensemble == "auto":
        ensemble = "fitted" if (run / WEIGHTS_FILE).is_file() else "plain"
    weights = read_weights(run, [s[0] for s in specs]) if ensemble == "fitted" else None
    models = {}
    return config, [load_network(*spec, config, precision, models) for spec in specs], weights


def segment(run: Path, input_folder: Path, output: Path, tta: bool, precision: str,
            ensemble: str, ped_coding: str | None) -> int:
    """Write output/<id>.nii.gz for every case of input_folder; 1 when a case failed.
    ped_coding: the coding of BraTS-PED cases (their ids are the same in 2023 and 2024+)."""
    if not input_folder.is_dir():
        raise CaseError(f"{input_folder}: cannot read: no such folder")
    cases = find_cases(input_folder)
    if not cases:
        raise CaseError(f"{input_folder}: no BraTS cases found")
    codings = case_codings(cases, "auto", ped_coding)  # before anything is written
    check_folder(output)
    config, networks, weights = load_ensemble(run, precision, ensemble)
    tta = tta and config.model.family == "een"  # the baselines published no TTA
    options = argparse.Namespace(output=output, codings=codings, tta=tta,
                                 threshold=0.5, et_min_voxels=0, weights=weights,
                                 save_probabilities=False)
    print(f"{len(cases)} cases from {input_folder}; {run}: {', '.join(n.name for n in networks)} "
          f"({precision}, {'fitted' if weights else 'plain'} ensemble"
          f"{', flip TTA' if tta else ''}) on {device()}", flush=True)
    failed = []
    for index, files in enumerate(cases, 1):
        start = time.perf_counter()
        try:
            predict_case(files, networks, config, options)
        except OutputError:
            raise
        except Exception as error:  # one bad case must not cost the others
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            named = text if text.startswith(files.id) else f"{files.id}: {text}"
            print(f"error: {named}", file=sys.stderr, flush=True)
            failed.append(files.id)
            continue
        print(f"[{index}/{len(cases)}] {files.id}: {options.codings[files.id]} coding, "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    print(f"{len(cases) - len(failed)} cases written to {output}, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def read_parameters(path: Path) -> dict:
    """parameters.yaml of the MLCube task: a mapping of PARAMETERS' keys (an empty file: none)."""
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: not a mapping of parameters")
    for key, value in values.items():
        if key not in PARAMETERS or not isinstance(value, PARAMETERS[key]):
            raise ConfigError(f"{path}: unknown parameter {key}: {value!r} (known: "
                              + ", ".join(f"{k} ({t.__name__})" for k, t in PARAMETERS.items()) + ")")
    if values.get("precision", "float32") not in PRECISIONS:
        raise ConfigError(f"{path}: precision {values['precision']} is none of {', '.join(PRECISIONS)}")
    if values.get("ped_coding", PED_CODINGS[0]) not in PED_CODINGS:
        raise ConfigError(f"{path}: ped_coding {values['ped_coding']} is none of {', '.join(PED_CODINGS)}")
    if values.get("ensemble", "auto") not in ENSEMBLES:
        raise ConfigError(f"{path}: ensemble {values['ensemble']} is none of {', '.join(ENSEMBLES)}")
    return values


# ---- the Docker build context -------------------------------------------------------------------

def stage(run: Path, out: Path) -> int:
    """Copy the project's code and the run's prediction files into `out` (emptied first)."""
    config = read_config(run)
    specs = network_files(run, None, None)  # refuses a run without trained networks
    if out.exists():
        shutil.rmtree(out)
    for name in PROJECT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, out / name)
    for pattern in RUN_FILES:
        for path in run.glob(pattern):
            target = out / "run" / path.relative_to(run)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    size = sum(p.stat().st_size for p in (out / "run").rglob("*") if p.is_file()) / 1e6
    print(f"{out}: the build context for {config.name}: {len(specs)} networks "
          f"({', '.join(s[0] for s in specs)}), {size:.1f} MB of run files")
    return 0


# ---- command line -------------------------------------------------------------------------------

def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, default=BAKED_RUN,
                        help=f"run folder written by train.py (default {BAKED_RUN}, the baked one)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average over the 8 flips (default on; EEN runs only)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default float32")
    parser.add_argument("--ped-coding", dest="ped_coding", choices=PED_CODINGS,
                        help="coding of BraTS-PED cases: brats2024-ped (ET = 1; BraTS 2024 and 2025, "
                             "the default of the 2025 interface) or brats2023 (ET = 3); infer: "
                             "needed when the data hold PED cases, or parameters.yaml's ped_coding")
    parser.add_argument("--ensemble", choices=ENSEMBLES,
                        help="auto (default): fitted weights when the run holds them, else plain")


def parse(argv: list) -> argparse.Namespace:
    """The 2025 interface (no task name), or the tasks `infer` (MLCube) and `stage`."""
    description, epilog = __doc__.split("\n\n", 1)
    formatter = argparse.RawDescriptionHelpFormatter
    task = argv[0] if argv and argv[0] in ("infer", "stage") else None
    parser = argparse.ArgumentParser(prog=f"entrypoint.py {task or ''}".strip(), description=description,
                                     epilog=epilog, formatter_class=formatter)
    if task == "stage":
        parser.add_argument("--run", type=Path, required=True)
        parser.add_argument("--out", type=Path, required=True, help="the build context (emptied)")
    elif task == "infer":
        common(parser)
        parser.add_argument("--data_path", type=Path, required=True, help="the cases")
        parser.add_argument("--parameters_file", type=Path, required=True,
                            help="parameters.yaml (keys tta, precision, ensemble, ped_coding; may be empty)")
        parser.add_argument("--output_path", type=Path, required=True, help="for <id>.nii.gz")
    else:
        common(parser)
        parser.add_argument("--input", type=Path, default=Path("/input"), help="default /input")
        parser.add_argument("--output", type=Path, default=Path("/output"), help="default /output")
    args = parser.parse_args(argv[1:] if task else argv)
    args.task = task
    return args


@exits_cleanly(ConfigError, CaseError, CodingError)
def main(argv: list | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    if args.task == "stage":
        return stage(args.run, args.out)
    settings = {"tta": True, "precision": "float32", "ensemble": "auto",
                "ped_coding": None if args.task == "infer" else "brats2024-ped"}  # 2025: ET = 1
    if args.task == "infer":
        if not args.parameters_file.is_file():
            raise ConfigError(f"{args.parameters_file}: cannot read: no such file")
        settings.update(read_parameters(args.parameters_file))
        args.input, args.output = args.data_path, args.output_path
    settings.update({k: v for k in settings if (v := getattr(args, k)) is not None})
    return segment(args.run, args.input, args.output, **settings)


if __name__ == "__main__":
    sys.exit(main())
