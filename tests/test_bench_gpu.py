"""bench/layers.py counts what a step computes; bench/gpu.py runs end to end in its dry mode, so
that it works the first time it meets a GPU."""
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "bench"))

import layers as layer_bench  # noqa: E402  (bench/layers.py)
from systems import een  # noqa: E402
from util.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_layer_table_counts_every_layer_once_and_convolution_flops_exactly():
    config = load_config(ROOT / "configs" / "paper.yaml")
    config.model.backbone_weights = None
    network = een.build_model(config)
    rows, examples = layer_bench.distinct_rows(network)
    assert sum(r.count for r in rows) == len(layer_bench.leaf_layers(network))
    stem = next(r for r in rows if r.name == "enc_stem")  # 3x3x3, 1 -> 16, 192x160x108 voxels
    assert stem.forward_flops == 2 * 27 * 1 * 16 * 192 * 160 * 108
    assert stem.train_flops == 3 * stem.forward_flops
    down = next(r for r in rows if r.name == "enc2_down_conv")  # 16 -> 32 at depth 108 / 3
    assert down.forward_flops == 2 * 27 * 16 * 32 * 192 * 160 * 36
    tconv = next(r for r in rows if r.name == "dec2d_up1_tconv")  # transposed: per input pixel
    kernel = examples[next(k for k, r in zip(examples, rows) if r is tconv)].kernel.shape
    assert tconv.forward_flops == 2 * 6 * 5 * kernel[0] * kernel[1] * kernel[2] * kernel[3]
    step = sum(r.train_flops * r.count for r in rows)
    assert 2.5e12 < step < 3.5e12  # the "about 3 TFLOP" a step, now counted
    blocks, _ = layer_bench.distinct_rows(network, backbone_block=True)
    assert sum(r.train_flops * r.count for r in blocks) == pytest.approx(step)
    keras.backend.clear_session()


def test_gpu_bench_dry_run_prints_every_kind_of_row(tmp_path):
    rows = "jax-bf16-layers,torch-bf16,jax-bf16-fit"  # each kind; the longest (layers) first
    done = subprocess.run([sys.executable, "bench/gpu.py", "--dry", "--rows", rows, "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = {r["row"]: r for r in json.loads((tmp_path / "gpu.json").read_text())}
    assert set(results) == set(rows.split(","))
    assert all(r["seconds"] > 0 and r["peak_gb"] > 0 for r in results.values())
    assert results["jax-bf16-fit"]["steps_per_s"] > 0
    assert results["torch-bf16"]["device"].endswith("(torch)")
    table = results["jax-bf16-layers"]["table"]
    assert len(table) == 11 and any("Conv3D" in line for line in table[1:])  # header + ten
    markdown = (tmp_path / "gpu.md").read_text()
    assert "| torch-bf16 | torch |" in markdown and "ten costliest" in markdown
