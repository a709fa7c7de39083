"""What a running cell service's Prometheus counters say."""

from __future__ import annotations

import re

import httpx


def cell_images_classified(cell_url: str) -> float:
    """``cell_images_total{result="classified"}`` of the service at ``cell_url`` (0 before its first image)."""
    text = httpx.get(f"{cell_url}/metrics", timeout=10).text
    match = re.search(r'^cell_images_total\{result="classified"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0
