"""bench/inference.py runs end to end in its dry mode: an EEN, an nnU-Net and a SegResNet row,
the ratio to nnU-Net at equal TTA, seconds, peak memory and FLOPs per case."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_inference_bench_dry_run_prints_every_kind_of_row(tmp_path):
    rows = "een-f32,nnunet,segresnet"
    done = subprocess.run([sys.executable, "bench/inference.py", "--dry", "--rows", rows,
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads((tmp_path / "inference.json").read_text())
    assert list(results) == rows.split(",")
    for r in results.values():
        assert r["seconds"] > 0 and r["peak_gb"] > 0 and r["tflop"] > 0 and r["passes"] >= 1
    assert results["een-f32"]["passes"] == 4  # four networks, no flips
    markdown = (tmp_path / "inference.md").read_text()
    ratio = results["een-f32"]["seconds"] / results["nnunet"]["seconds"]
    assert f"| een-f32 | een | float32 | none | {results['een-f32']['seconds']:.1f} | {ratio:.2f} |" \
        in markdown
    assert "| nnunet | nnunet | float32 | none |" in markdown and "| segresnet |" in markdown
