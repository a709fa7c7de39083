import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.differential import (
    FEATURE_NAMES, LEUKOCYTE_TYPES, PSEUDO_FRACTION, expert_counts, features, per_100_leukocytes,
)

ROW = {  # patient AQK of expert_differentials.csv, with pb_lymph_atyp_neopl empty
    "pb_myeloblast": "23", "pb_promyelocyte": "1", "pb_myelocyte": "2", "pb_metamyelocyte": "3",
    "pb_neutrophil_band": "4", "pb_neutrophil_segmented": "7", "pb_eosinophil": "5", "pb_basophil": "6",
    "pb_monocyte": "14", "pb_lymph_typ": "30", "pb_lymph_atyp_react": "2", "pb_lymph_atyp_neopl": "",
    "pb_other": "1",
}


def test_expert_columns_map_to_the_vocabulary():
    counts = expert_counts(ROW)
    assert counts["neutrophil"] == 11
    assert counts["ig"] == 6
    assert counts["lymphocyte"] == 32
    assert counts["unclassified"] == 24
    assert (counts["eosinophil"], counts["basophil"], counts["monocyte"]) == (5, 6, 14)
    assert counts["erythroblast"] == counts["platelet"] == 0


def test_features_are_log_fractions_of_leukocytes():
    f = features({"neutrophil": 30, "lymphocyte": 10, "unclassified": 60, "platelet": 500})
    assert list(f) == list(FEATURE_NAMES)
    fractions = {t: math.exp(f[f"log_frac_{t}"]) - PSEUDO_FRACTION for t in LEUKOCYTE_TYPES}
    assert sum(fractions.values()) == pytest.approx(1.0)
    assert fractions["unclassified"] == pytest.approx(0.6), "platelets are not leukocytes"
    assert fractions["basophil"] == pytest.approx(0.0, abs=1e-12)


def test_features_do_not_depend_on_how_many_cells_were_counted():
    small = features({"neutrophil": 3, "lymphocyte": 1, "unclassified": 6})
    large = features({"neutrophil": 300, "lymphocyte": 100, "unclassified": 600})
    assert small == pytest.approx(large)


def test_no_leukocytes_is_an_error():
    with pytest.raises(ValueError, match="no leukocytes"):
        features({"platelet": 10, "erythroblast": 3})


def test_non_leukocytes_per_100():
    assert per_100_leukocytes({"neutrophil": 50, "erythroblast": 5, "platelet": 20}) == {
        "erythroblast": 10.0, "platelet": 40.0}


@given(st.dictionaries(st.sampled_from(LEUKOCYTE_TYPES), st.integers(0, 10_000), min_size=1).filter(
    lambda d: sum(d.values()) > 0))
@settings(max_examples=200, deadline=None)
def test_features_are_finite_for_any_counts(counts):
    assert all(math.isfinite(v) for v in features(counts).values())
