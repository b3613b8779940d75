"""codings.py: each edition's coding, recoding between them, the coding of a case's layout."""
import numpy as np
import pytest

from brats.codings import CODINGS, CodingError, layout_coding, recode, region_masks

BRATS2020 = np.array([0, 1, 2, 4], np.uint8)  # background, necrosis, edema, enhancing


@pytest.mark.parametrize("coding, written", [
    ("brats2020", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3]), ("brats2024-post", [0, 1, 2, 3]),
    ("brats2024-ped", [0, 2, 4, 1]), ("msd", [0, 2, 1, 3]),
])
def test_recode_keeps_every_region(coding, written):
    recoded = recode(BRATS2020, "brats2020", coding)
    assert recoded.tolist() == written
    for region, mask in region_masks(BRATS2020, "brats2020").items():
        np.testing.assert_array_equal(region_masks(recoded, coding)[region], mask)
    np.testing.assert_array_equal(recode(recoded, coding, "brats2020"), BRATS2020)


def test_resection_cavity_is_label_4_outside_every_region():
    post = np.array([0, 1, 2, 3, 4], np.uint8)
    assert CODINGS["brats2024-post"].names[4] == "RC"
    assert not any(masks[4] for masks in region_masks(post, "brats2024-post").values())
    assert recode(post, "brats2024-post", "brats2024-post").tolist() == [0, 1, 2, 3, 4]
    assert recode(post, "brats2024-post", "brats2020").tolist() == [0, 1, 2, 4, 0]
    with pytest.raises(CodingError, match=r"label values \{2, 4\} of the brats2020 coding have no "
                                          r"counterpart in the brats2024-men-rt coding \{0, 1\}"):
        recode(BRATS2020, "brats2020", "brats2024-men-rt")


def test_layout_coding_follows_the_edition():
    assert layout_coding("brats2021", "BraTS2021_00001") == "brats2020"
    assert layout_coding("brats2023", "BraTS-GLI-00001-000") == "brats2023"
    assert layout_coding("brats2023", "BraTS-MET-00001-000") == "brats2023"
    assert layout_coding("brats2023", "BraTS-PED-00001-000", "brats2024-ped") == "brats2024-ped"
    assert layout_coding("msd", "BRATS_001") == "msd"
