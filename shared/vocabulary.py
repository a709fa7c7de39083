"""The cell-type vocabulary every component speaks.

The CNN emits one of the eight PBC cell types; a cell that is not confidently one
of them is labelled ``unclassified`` (AML blood is full of blasts, which are none
of the eight). The order of ``CELL_TYPES`` is the order of the CNN's outputs.
"""

CELL_TYPES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
UNCLASSIFIED = "unclassified"
CELL_LABELS: tuple[str, ...] = CELL_TYPES + (UNCLASSIFIED,)
