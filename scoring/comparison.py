"""The comparison's table of systems (compare.py): CSV, Markdown and chart from the rows.

    write_csv(rows, out / "compare.csv")
    text = markdown(rows, caption)                # Dice mean ± std, HD95 (mm), costs, published, note
    chart(rows, out / "compare.png", title)       # bars of Dice and HD95 per region and system

A row is compare.py's record of one system: {"system", "Dice_ET_mean", "Dice_ET_std", ...,
"parameters", "epochs" (per network), "seconds_per_step", ..., "published", "note"}.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from util.outputs import atomic

REGIONS = ("ET", "WT", "TC")
COLUMNS = ("system", *(f"{m}_{r}_{s}" for m in ("Dice", "HD95") for r in REGIONS
                       for s in ("mean", "std")),
           "parameters", "epochs", "seconds_per_step", "seconds_per_epoch", "train_seconds",
           "seconds_per_case", "peak_bytes", "budget_minutes", "scored_cases", "published", "note")


def cell(row: dict, column: str) -> str:
    """A row's value as the CSV writes it: epochs per network as 4+7+7+7."""
    value = row.get(column, "") if column == "note" else row[column]
    if column == "epochs":
        return "+".join(map(str, value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_csv(rows: list, path: Path) -> None:
    """compare.csv, through a temporary file."""
    with atomic(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([cell(row, c) for c in COLUMNS])


def spread(row: dict, metric: str, region: str, form: str) -> str:
    """`mean ± std` of one metric and region."""
    return f"{row[f'{metric}_{region}_mean']:{form}} ± {row[f'{metric}_{region}_std']:{form}}"


def markdown(rows: list, note: str) -> str:
    """The comparison as a Markdown table: Dice (mean ± std), HD95 in mm, costs, published."""
    head = (["system"] + [f"Dice {r}" for r in REGIONS] + [f"HD95 {r}" for r in REGIONS]
            + ["parameters", "epochs", "s/step", "s/epoch", "train s", "s/case", "peak GB",
               "published", "note"])
    lines = [note, "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = ([row["system"]] + [spread(row, "Dice", r, ".3f") for r in REGIONS]
                 + [spread(row, "HD95", r, ".1f") for r in REGIONS]
                 + [f"{row['parameters']:,}", cell(row, "epochs"), f"{row['seconds_per_step']:.3f}",
                    f"{row['seconds_per_epoch']:.1f}", f"{row['train_seconds']:.0f}",
                    f"{row['seconds_per_case']:.1f}", f"{row['peak_bytes'] / 2**30:.2f}",
                    row["published"], cell(row, "note")])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list, path: Path, title: str) -> None:
    """Bars of mean Dice and HD95 per region and system, with the std as error bars."""
    from util import figures

    plt = figures.plt
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(rows)
    for axis, metric, unit in ((axes[0], "Dice", ""), (axes[1], "HD95", " (mm)")):
        for i, row in enumerate(rows):
            x = np.arange(len(REGIONS)) + (i - (len(rows) - 1) / 2) * width
            axis.bar(x, [row[f"{metric}_{r}_mean"] for r in REGIONS], width,
                     yerr=[row[f"{metric}_{r}_std"] for r in REGIONS], capsize=2,
                     label=row["system"])
        axis.set_xticks(np.arange(len(REGIONS)), REGIONS)
        axis.set_ylabel(metric + unit)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    figure.suptitle(title)
    figures.save(figure, path)
