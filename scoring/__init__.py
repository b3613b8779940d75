"""How a label map is scored against the truth, by the rules of each BraTS edition.

    metrics.py     Dice, HD95, sensitivity, specificity of one binary mask
    lesionwise.py  the BraTS 2023-2024 lesion-wise rules (matched lesions, penalties)
    brats2025.py   the official BraTS 2025 package (brats-evaluation on panoptica), wrapped
    unlabelled.py  a case without labels (a real scan): voxels per region, a FLAIR yardstick

May import brats/ and util/.
"""
