"""The cell-type vocabulary every component speaks (vocabulary 2.0).

The CNN emits one of ``CELL_TYPES``, in this order (the order of its outputs); a cell it
cannot place is labelled ``unclassified``. Version 2.0 added the cells of leukaemic blood:
``blast`` (myeloblasts and other blasts without lineage, promonocytes), ``promyelocyte``
(split out of ``ig``, which keeps myelocytes and metamyelocytes) and ``smudge``
(smudge/basket cells).

Which labels are leukocytes (the differential's denominator) is decided here too: smudge
cells are counted and shown but, as labs report them, are not part of the differential;
erythroblasts and platelets are reported per 100 leukocytes.
"""

VOCABULARY_VERSION = "2.0"

CELL_TYPES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
    "blast",
    "promyelocyte",
    "smudge",
)
UNCLASSIFIED = "unclassified"
CELL_LABELS: tuple[str, ...] = CELL_TYPES + (UNCLASSIFIED,)

LEUKOCYTE_TYPES: tuple[str, ...] = (
    "blast", "promyelocyte", "ig", "neutrophil", "eosinophil", "basophil", "monocyte", "lymphocyte", UNCLASSIFIED,
)
"""The leukocyte differential's categories, in the order a lab reads them (immature to mature)."""
NON_LEUKOCYTE_TYPES: tuple[str, ...] = ("erythroblast", "platelet", "smudge")
"""Counted and reported per 100 leukocytes, not part of the differential."""

assert set(LEUKOCYTE_TYPES) | set(NON_LEUKOCYTE_TYPES) == set(CELL_LABELS)
assert not set(LEUKOCYTE_TYPES) & set(NON_LEUKOCYTE_TYPES)
