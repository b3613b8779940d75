"""How real are the synthetic cases? The prepared real patient beside synthetic.py's, per modality.

    python bench/realism.py --real prepared/TCGA-FG-6692 --cases 4 --figure docs/realism.png

Every image is z-scored as preprocess.py does (mean and standard deviation over its non-zero
voxels); the brain's intensity quantiles are printed side by side, real against the synthetic
cases' mean, and their histograms drawn in one figure (a row per modality).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import synthetic  # noqa: E402
from brats.cases import MODALITIES, find_cases, load_case  # noqa: E402
from datasets.volumes import brain_stats  # noqa: E402
from util.figures import save  # noqa: E402

QUANTILES = (1, 5, 25, 50, 75, 95, 99)
BINS = np.linspace(-4, 6, 101)


def brain_z(image: np.ndarray, what: str) -> np.ndarray:
    """The z-scores of the brain's (non-zero) voxels, as preprocess.py normalises them."""
    mean, std = brain_stats(image, what)
    return (image[image != 0].astype(np.float64) - mean) / std


def figure(real: dict, synthetic_z: dict, name: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODALITIES), figsize=(15, 3.4))
    centres = (BINS[1:] + BINS[:-1]) / 2
    for ax, modality in zip(axes, MODALITIES):
        for index, values in enumerate(synthetic_z[modality]):
            ax.plot(centres, np.histogram(values, BINS, density=True)[0], color="tab:blue",
                    alpha=0.5, lw=1, label="synthetic" if index == 0 else None)
        ax.plot(centres, np.histogram(real[modality], BINS, density=True)[0], color="tab:red",
                lw=2, label=name)
        ax.set_title(f"{modality}: brain z-scores", fontsize=10)
        ax.set_xlabel("z")
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, required=True, help="a case folder made by prepare.py")
    parser.add_argument("--cases", type=int, default=4, help="synthetic cases (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, help="PNG to write (e.g. docs/realism.png)")
    args = parser.parse_args(argv)
    case = load_case(find_cases(args.real)[0])
    real = {m: brain_z(case.stored[m], f"{case.id}: {m}") for m in MODALITIES}
    made = [synthetic.make_case(args.seed, i) for i in range(args.cases)]
    synthetic_z = {m: [brain_z(c.images[m], f"synthetic {i}: {m}") for i, c in enumerate(made)]
                   for m in MODALITIES}
    print(f"brain z-score quantiles (%): {case.id} vs the mean of {args.cases} synthetic cases")
    print(f"{'':16s}" + "".join(f"{q:>8d}" for q in QUANTILES) + f"{'voxels':>10s}")
    for modality in MODALITIES:
        mine = np.percentile(real[modality], QUANTILES)
        theirs = np.mean([np.percentile(v, QUANTILES) for v in synthetic_z[modality]], axis=0)
        count = np.mean([v.size for v in synthetic_z[modality]])
        print(f"{modality + ' real':16s}" + "".join(f"{v:8.2f}" for v in mine)
              + f"{real[modality].size:10d}")
        print(f"{modality + ' synthetic':16s}" + "".join(f"{v:8.2f}" for v in theirs)
              + f"{count:10.0f}")
    if args.figure:
        save(figure(real, synthetic_z, case.id), args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
