"""Subtype service: two-stage ensemble (AML vs control, then genetic subtype) from cell counts."""
