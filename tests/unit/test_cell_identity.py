"""The per-cell cache key: a new network file, labelling rule or APL head never reads another's answers."""

from gateway import cell_identity


def test_cell_cache_key_changes_with_the_head():
    models = {"cell": {"sha256": "a" * 64}}
    assert cell_identity.cell_cache_model_of(models) == "a" * 64
    with_head = cell_identity.cell_cache_model_of({**models, "apl_cell_head": {"sha256": "b" * 64}})
    assert with_head != "a" * 64 and "b" * 64 in with_head


def test_cell_cache_key_changes_with_the_labelling_rules():
    models = {"cell": {"sha256": "a" * 64}}
    with_rules = cell_identity.cell_cache_model_of({"cell": {"sha256": "a" * 64, "rules_sha256": "c" * 64}})
    assert with_rules != "a" * 64 and "c" * 64 in with_rules
    other_rules = cell_identity.cell_cache_model_of({"cell": {"sha256": "a" * 64, "rules_sha256": "d" * 64}})
    assert other_rules != with_rules
    both = cell_identity.cell_cache_model_of({"cell": {"sha256": "a" * 64, "rules_sha256": "c" * 64},
                                              "apl_cell_head": {"sha256": "b" * 64}})
    assert len({both, with_rules, cell_identity.cell_cache_model_of(models)}) == 3 and "b" * 64 in both
