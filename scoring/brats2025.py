"""The BraTS 2025 official metrics, computed by the challenge's own package `brats-evaluation` on
panoptica (SPEC.md section 7); nothing is recomputed here.

    convention = CONVENTIONS["brats2025-gli"]
    row = case_row(prediction_path, truth_path, "BraTS-GLI-00001-000", convention)
    # {"pq_dsc_et": ..., "all_instance_f1_et": ..., "lesionwise_dsc_mean_et": ..., ...}

Each case is scored by `brats_evaluation.evaluate_single_exam` with the bundled config of its task
(26-connected components matched one to one, panoptic quality, lesion-wise and global DSC, HD95
and NSD per region of the config), and its row is the row that the package's own parser
(`brats-parse-metrics seg`, or `mets` for metastases) writes for it, with panoptica's panoptic
quality `pq_dsc_<region>` and segmentation quality `sq_dsc_<region>` (the mean DSC of matched
lesions; PQ = SQ x RQ, RQ being the parser's all_instance_f1) added before each region's columns. A case without a usable prediction gets the parser's row for a missing subject
(HD95 373, everything else 0). The label maps go in in the task's coding (codings.py).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "brats-evaluation 0.0.10 (panoptica 2.1.7)"
MISSING = "missing"


class OfficialError(Exception):
    """The official package could not score a case; str() is its one-line reason."""


@dataclass(frozen=True)
class Convention:
    """One bundled config of the package: its name there, the parser the challenge uses (seg, or
    mets with its volume and overlap thresholds), the edition and the task's label coding."""

    name: str
    edition: str
    config: str
    parser: str
    coding: str

    def describe(self) -> str:
        parser = ("brats-parse-metrics mets: lesions >= 20 voxels large, small ones found at DSC >= 0.1"
                  if self.parser == "mets" else "brats-parse-metrics seg")
        return (f"{self.name}: {self.edition}, official {PACKAGE}, config {self.config}, {parser}; "
                f"a region empty in both is NaN and left out of the statistics, StdDev as the "
                f"package's (sample, ddof 1)")


CONVENTIONS = {c.name: c for c in (
    Convention("brats2025-gli", "BraTS 2025 adult glioma, pre- and post-treatment (GLI)", "gli", "seg",
               "brats2024-post"),
    Convention("brats2025-ped", "BraTS 2025 paediatric tumours (PED)", "ped", "seg", "brats2024-ped"),
    Convention("brats2025-met", "BraTS 2025 brain metastases (MET)", "mets", "mets", "brats2024-post"),
    Convention("brats2025-men-rt", "BraTS 2025 meningioma radiotherapy (MEN-RT)", "MenRT", "seg",
               "brats2024-men-rt"),
    Convention("brats2025-men-pre", "BraTS 2025 pre-operative meningioma (MEN)", "MenPre", "seg",
               "brats2023"),
    Convention("brats2025-goat", "BraTS 2025 generalizability across tumours (GoAT)", "GoAT", "seg",
               "brats2023"),
)}
ADDED = ("pq_dsc", "sq_dsc")  # panoptica's own results, which the parser leaves out
METS_THRESHOLDS = {"vol_threshold": 20.0, "overlap_threshold": 0.1}  # the parser's defaults


@contextlib.contextmanager
def quiet():
    """Silence the package's banner, notes and warnings (it prints per call)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@functools.lru_cache(maxsize=None)
def evaluator(config: str):
    """The package's Panoptica_Evaluator for a bundled config, loaded once."""
    with quiet():
        from brats_evaluation import config_path
        from panoptica import Panoptica_Evaluator

        return Panoptica_Evaluator.load_from_config(str(config_path(config)))


def regions(convention: Convention) -> list:
    """The config's region groups, in its order (gli: snfh, et, netc, rc, tc, wt)."""
    return list(evaluator(convention.config).segmentation_class_groups_names)


def parsed(convention: Convention, summary: dict) -> list:
    """The rows (dicts of strings) that the package's parser writes for a summary JSON."""
    from brats_evaluation import metrics_parser

    with tempfile.TemporaryDirectory() as folder, quiet():
        json_path, csv_path = Path(folder) / "summary.json", Path(folder) / "parsed.csv"
        json_path.write_text(json.dumps(summary))
        if convention.parser == "mets":
            metrics_parser.parse_mets_results(str(json_path), output_csv_path=str(csv_path),
                                              **METS_THRESHOLDS)
        else:
            metrics_parser.parse_seg_results(str(json_path), str(csv_path))
        with open(csv_path, newline="") as handle:
            return list(csv.DictReader(handle))


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


@functools.lru_cache(maxsize=None)
def _layout(convention: Convention) -> tuple:
    """(columns, penalty row): the parser's columns for one subject, with pq_dsc and sq_dsc before
    each region's, and its row for a missing subject."""
    empty = {"subject_name": "template", **{region: {} for region in regions(convention)}}
    template, missing = parsed(convention, {"metrics": [empty], "missings": [MISSING]})[:2]
    columns = []
    for region in regions(convention):
        columns += [f"{added}_{region}" for added in ADDED]
        columns += [c for c in template if c.endswith(f"_{region}") and c != "subject_id"]
    penalty = {c: _number(missing[c]) if c in missing else 0.0 for c in columns}
    return columns, penalty


def columns(convention: Convention) -> list:
    return list(_layout(convention)[0])


def penalty_row(convention: Convention) -> dict:
    """The row of a case without a usable prediction, as the package's parser writes it."""
    return dict(_layout(convention)[1])


def case_row(prediction: Path, truth: Path, case_id: str, convention: Convention) -> dict:
    """One case scored by the package: {column: float} (NaN where the package gives none)."""
    from brats_evaluation import evaluate_single_exam

    with quiet():
        result = evaluate_single_exam(str(prediction), str(truth), case_id,
                                      evaluator(convention.config))
    if "error" in result:
        raise OfficialError(f"the official package failed: {str(result['error']).splitlines()[0]}")
    [row] = [r for r in parsed(convention, {"metrics": [result]}) if r["subject_id"] == case_id]
    scores = {c: _number(row[c]) for c in columns(convention) if c in row}
    for region in regions(convention):
        for added in ADDED:
            value = result[region].get(added)
            scores[f"{added}_{region}"] = math.nan if value is None else float(value)
    return {c: scores[c] for c in columns(convention)}
