"""Reading an HL7 v2 ER7 message the way a plain LIS interface does: segments split on CR, fields on "|"."""

from __future__ import annotations


def segments(text: str, name: str) -> list[list[str]]:
    """The fields of every ``name`` segment (``fields[0]`` is the segment name, so ``fields[5]`` is OBX-5)."""
    return [fields for fields in (segment.split("|") for segment in text.split("\r")) if fields[0] == name]


def obx_by_code(text: str) -> dict[str, list[str]]:
    """Each OBX segment's fields by the code in its OBX-3 (the part before the first "^")."""
    return {fields[3].split("^")[0]: fields for fields in segments(text, "OBX")}
