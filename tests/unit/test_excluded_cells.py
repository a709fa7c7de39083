"""training.excluded_cells: a list of training cells to leave out (train_cells --exclude-cells)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")  # training.pbc_dataset (the Split) needs the training extra

from training.excluded_cells import exclude, read_list
from training.pbc_dataset import Split


def _split(paths: list[str], source: str) -> Split:
    images = np.arange(len(paths), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return Split(images, np.arange(len(paths)) % 3, paths, source)


@pytest.fixture()
def sources():
    root = "/data/shared/data"
    deepapl = [f"{root}/deepapl_discovery/images/Patient_0{p}/000{i}.jpg" for p in range(3) for i in range(3)]
    pbc = [f"{root}/pbc/{cls}/{cls[:2].upper()}_{i}.jpg" for cls in ("neutrophil", "lymphocyte") for i in range(4)]
    return {"pbc": (_split(pbc[:6], "pbc"), _split(pbc[6:7], "pbc"), _split(pbc[7:], "pbc")),
            "deepapl": (_split(deepapl[:5], "deepapl"), _split(deepapl[5:7], "deepapl"),
                        _split(deepapl[7:], "deepapl"))}


def test_listed_training_cells_are_left_out_and_recorded(tmp_path, sources):
    listed = tmp_path / "doubtful.txt"
    listed.write_text("# labels in doubt\n\npbc/neutrophil/NE_1.jpg  # looks like ig\n"
                      "deepapl_discovery/images/Patient_00/0002.jpg\n"
                      "images/Patient_01/0000.jpg\n"
                      "pbc/neutrophil/NE_1.jpg\n")
    kept, record = exclude(sources, listed)
    assert [p.rsplit("/", 1)[1] for p in kept["pbc"][0].paths] == ["NE_0.jpg", "NE_2.jpg", "NE_3.jpg",
                                                                   "LY_0.jpg", "LY_1.jpg"]
    assert len(kept["deepapl"][0]) == 3 and not any(p.endswith(("Patient_00/0002.jpg", "Patient_01/0000.jpg"))
                                                    for p in kept["deepapl"][0].paths)
    # images and labels stay with their paths
    train = sources["deepapl"][0]
    for image, label, path in zip(kept["deepapl"][0].images, kept["deepapl"][0].labels, kept["deepapl"][0].paths):
        row = train.paths.index(path)
        assert np.array_equal(image, train.images[row]) and label == train.labels[row]
    assert kept["pbc"][1] is sources["pbc"][1] and kept["deepapl"][2] is sources["deepapl"][2]
    assert record["cells"] == 3 and record["by_source"] == {"pbc": 1, "deepapl": 2}
    assert record["list"] == "doubtful.txt" and len(record["sha256"]) == 64


def test_a_validation_or_test_cell_cannot_be_left_out(tmp_path, sources):
    listed = tmp_path / "list.txt"
    listed.write_text("deepapl_discovery/images/Patient_02/0001.jpg\n")  # a DeepAPL test cell
    with pytest.raises(ValueError, match="deepapl test cells"):
        exclude(sources, listed)
    listed.write_text("pbc/lymphocyte/LY_2.jpg\n")  # PBC validation
    with pytest.raises(ValueError, match="pbc validation cells"):
        exclude(sources, listed)


def test_a_line_that_names_no_image_is_refused(tmp_path, sources):
    listed = tmp_path / "list.txt"
    listed.write_text("pbc/neutrophil/NE_1.jpg\npbc/neutrophil/NE_9.jpg\n")
    with pytest.raises(ValueError, match="no image of any split.*NE_9"):
        exclude(sources, listed)


def test_the_list_is_read_without_comments_blanks_or_repeats(tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("# header\n a/b.jpg \n\na\\c.jpg # windows\n/a/b.jpg\n")
    assert read_list(listed) == ["a/b.jpg", "a/c.jpg"]
