import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.differential import (
    EXPERT_COLUMNS, FEATURE_NAMES, LEUKOCYTE_TYPES, PSEUDO_FRACTION, expert_counts, features, leukocyte_total,
    per_100_leukocytes,
)
from shared.vocabulary import CELL_LABELS, NON_LEUKOCYTE_TYPES

ROW = {  # patient AQK of expert_differentials.csv, with pb_lymph_atyp_neopl empty
    "pb_myeloblast": "23", "pb_promyelocyte": "1", "pb_myelocyte": "2", "pb_metamyelocyte": "3",
    "pb_neutrophil_band": "4", "pb_neutrophil_segmented": "7", "pb_eosinophil": "5", "pb_basophil": "6",
    "pb_monocyte": "14", "pb_lymph_typ": "30", "pb_lymph_atyp_react": "2", "pb_lymph_atyp_neopl": "",
    "pb_other": "1",
}


def test_expert_columns_map_to_the_vocabulary():
    counts = expert_counts(ROW)
    assert counts["blast"] == 23, "pb_myeloblast -> blast"
    assert counts["promyelocyte"] == 1, "pb_promyelocyte -> promyelocyte, no longer ig"
    assert counts["ig"] == 5, "pb_myelocyte + pb_metamyelocyte -> ig"
    assert counts["unclassified"] == 1, "pb_other -> unclassified, no longer with the myeloblasts"
    assert counts["neutrophil"] == 11
    assert counts["lymphocyte"] == 32
    assert (counts["eosinophil"], counts["basophil"], counts["monocyte"]) == (5, 6, 14)
    assert counts["erythroblast"] == counts["platelet"] == counts["smudge"] == 0
    assert set(counts) == set(CELL_LABELS)
    assert leukocyte_total(counts) == sum(float(v or 0) for v in ROW.values()) == 98


def test_expert_mapping_of_vocabulary_2():
    assert EXPERT_COLUMNS["blast"] == ("pb_myeloblast",)
    assert EXPERT_COLUMNS["promyelocyte"] == ("pb_promyelocyte",)
    assert set(EXPERT_COLUMNS["ig"]) == {"pb_myelocyte", "pb_metamyelocyte"}
    assert EXPERT_COLUMNS["unclassified"] == ("pb_other",)
    assert set(EXPERT_COLUMNS) == set(LEUKOCYTE_TYPES), "every expert column is a leukocyte category"
    columns = [c for cs in EXPERT_COLUMNS.values() for c in cs]
    assert len(columns) == len(set(columns)), "no expert column counted twice"
    assert "smudge" in NON_LEUKOCYTE_TYPES and "smudge" not in LEUKOCYTE_TYPES
    assert FEATURE_NAMES == tuple(f"log_frac_{t}" for t in LEUKOCYTE_TYPES) and len(FEATURE_NAMES) == 9


def test_smudge_cells_are_not_leukocytes():
    counts = {"blast": 40, "lymphocyte": 10, "smudge": 25}
    assert leukocyte_total(counts) == 50
    f = features(counts)
    assert f["log_frac_blast"] == pytest.approx(math.log(0.8 + PSEUDO_FRACTION))
    assert "log_frac_smudge" not in f
    assert per_100_leukocytes(counts)["smudge"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="no leukocytes"):
        features({"smudge": 10})


def test_features_are_log_fractions_of_leukocytes():
    f = features({"neutrophil": 30, "lymphocyte": 10, "unclassified": 60, "platelet": 500})
    assert list(f) == list(FEATURE_NAMES)
    fractions = {t: math.exp(f[f"log_frac_{t}"]) - PSEUDO_FRACTION for t in LEUKOCYTE_TYPES}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions["unclassified"] == pytest.approx(0.6), "platelets are not leukocytes"
    assert fractions["basophil"] == fractions["blast"] == pytest.approx(0.0, abs=1e-12)


def test_features_do_not_depend_on_how_many_cells_were_counted():
    small = features({"neutrophil": 3, "lymphocyte": 1, "unclassified": 6})
    large = features({"neutrophil": 300, "lymphocyte": 100, "unclassified": 600})
    assert small == pytest.approx(large)


def test_no_leukocytes_is_an_error():
    with pytest.raises(ValueError, match="no leukocytes"):
        features({"platelet": 10, "erythroblast": 3, "smudge": 4})


def test_non_leukocytes_per_100():
    assert per_100_leukocytes({"neutrophil": 50, "erythroblast": 5, "platelet": 20, "smudge": 3}) == {
        "erythroblast": 10.0, "platelet": 40.0, "smudge": 6.0}


@given(st.dictionaries(st.sampled_from(LEUKOCYTE_TYPES), st.integers(0, 10_000), min_size=1).filter(
    lambda d: sum(d.values()) > 0))
@settings(max_examples=200, deadline=None)
def test_features_are_finite_for_any_counts(counts):
    assert all(math.isfinite(v) for v in features(counts).values())
