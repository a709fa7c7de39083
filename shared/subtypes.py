"""The subtype model's output vocabulary."""

CONTROL = "control"
SUBTYPES: tuple[str, ...] = ("CBFB_MYH11", "NPM1", "PML_RARA", "RUNX1_RUNX1T1")
PATIENT_CLASSES: tuple[str, ...] = (CONTROL,) + SUBTYPES
