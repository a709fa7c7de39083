"""The software of unknown provenance (SOUP) the services ship with: docs/soup.md.

    python deploy/soup.py           # rewrite docs/soup.md from this environment (make soup)
    python deploy/soup.py --check   # exit 1 when docs/soup.md does not match it (the test suite runs this)

IEC 62304 asks a medical device's software to name every third-party item it contains, with its
version. The items are the runtime closure of the project's dependencies (pyproject.toml without the
test and train extras: what the images install), read from the installed distributions, which
`make setup` installs at the versions constraints.txt pins; plus the GPU image's onnxruntime-gpu and
the base images. Test and training tools are not shipped and not listed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "soup.md"
PROJECT = "aml-classifier"
# licences a shipped item may carry without a person's review: permissive ones and MPL-2.0 (file-level
# copyleft, met by shipping the unmodified files); anything else, or none declared, stops the test
ALLOWED_LICENCE_TOKENS = {"MIT", "MIT-CMU", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "PSF-2.0",
                          "ISC", "Zlib", "CC0-1.0", "MPL-2.0", "HPND"}
_CLASSIFIER_TO_SPDX = {"MIT License": "MIT", "BSD License": "BSD-3-Clause", "Apache Software License": "Apache-2.0",
                       "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0", "Python Software Foundation License":
                       "PSF-2.0", "ISC License (ISCL)": "ISC"}
_TEXT_TO_SPDX = {"mit": "MIT", "mit license": "MIT", "apache 2.0": "Apache-2.0", "apache-2.0": "Apache-2.0",
                 "3-clause bsd license": "BSD-3-Clause", "bsd-3-clause": "BSD-3-Clause", "mpl-2.0": "MPL-2.0"}


def licence_of(distribution: importlib.metadata.Distribution) -> str:
    """An SPDX expression: the declared License-Expression, else a short License field or the classifiers."""
    metadata = distribution.metadata
    if metadata.get("License-Expression"):
        return metadata["License-Expression"].strip()
    text = (metadata.get("License") or "").strip()
    if text and "\n" not in text and text.lower() in _TEXT_TO_SPDX:
        return _TEXT_TO_SPDX[text.lower()]
    from_classifiers = sorted({_CLASSIFIER_TO_SPDX.get(c.split("::")[-1].strip(), c.split("::")[-1].strip())
                               for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")})
    return " OR ".join(from_classifiers) if from_classifiers else (text.splitlines()[0] if text else "")


def licence_allowed(expression: str) -> bool:
    tokens = [t for t in re.split(r"[\s()]+", expression) if t and t not in {"AND", "OR", "WITH"}]
    return bool(tokens) and all(token in ALLOWED_LICENCE_TOKENS for token in tokens)


def runtime_closure() -> dict[str, set[str]]:
    """Every distribution the project needs at run time (extras followed), with the ones that require it."""
    required_by: dict[str, set[str]] = {}
    extras_seen: dict[str, set[str]] = {}
    stack: list[tuple[str, frozenset[str], str]] = [(PROJECT, frozenset(), "")]
    while stack:
        name, extras, parent = stack.pop()
        key = canonicalize_name(name)
        if parent:
            required_by.setdefault(key, set()).add(parent)
        if key in extras_seen and extras <= extras_seen[key]:
            continue
        extras_seen[key] = extras_seen.get(key, set()) | extras
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            environments = [{"extra": extra} for extra in extras_seen[key]] or [{"extra": ""}]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            stack.append((requirement.name, frozenset(requirement.extras), key))
    return required_by


def base_images() -> list[tuple[str, str]]:
    """(image, file) for every image pulled from a registry, once each; not the Dockerfile's own stages."""
    images: list[tuple[str, str]] = []
    manifests = sorted((REPO_ROOT / "deploy" / "k8s").rglob("*.yaml"))
    for path in [REPO_ROOT / "deploy" / "Dockerfile", REPO_ROOT / "docker-compose.yml", *manifests]:
        text = path.read_text()
        ours = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.MULTILINE))
        for image in re.findall(r"^(?:FROM|\s+image:)\s+(\S+)", text, flags=re.MULTILINE):
            entry = (image, path.relative_to(REPO_ROOT).as_posix())
            if image not in ours and not image.startswith("aml-classifier/") and entry not in images:
                images.append(entry)
    return images


def gpu_runtime_version() -> str:
    match = re.search(r"^ARG ONNXRUNTIME_GPU_VERSION=(\S+)$", (REPO_ROOT / "deploy" / "Dockerfile").read_text(),
                      flags=re.MULTILINE)
    if match is None:
        raise SystemExit("deploy/Dockerfile has no ARG ONNXRUNTIME_GPU_VERSION")
    return match.group(1)


def render() -> str:
    required_by = runtime_closure()
    rows = []
    for key in sorted(required_by):
        distribution = importlib.metadata.distribution(key)
        parents = sorted(p if p != canonicalize_name(PROJECT) else "this project" for p in required_by[key])
        rows.append(f"| [{distribution.metadata['Name']}](https://pypi.org/project/{key}/{distribution.version}/) "
                    f"| {distribution.version} | {licence_of(distribution) or 'not declared'} | {', '.join(parents)} |")
    images = "\n".join(f"| `{image}` | {where} |" for image, where in base_images())
    allowed = ", ".join(sorted(ALLOWED_LICENCE_TOKENS))
    return f"""# Software of unknown provenance (SOUP)

Generated by `make soup` (`python deploy/soup.py`) from the installed distributions; `make test` fails
when it no longer matches them (`tests/unit/test_soup.py`). The versions are the ones `constraints.txt`
pins and `make setup` and the images install. What it lists is what the services ship with: the
run-time closure of `pyproject.toml`'s dependencies (not the test or training extras). The test also
stops any item that declares no licence or one outside this list until a person has reviewed it:
{allowed}.

## Python packages in every image ({len(rows)})

| package | version | licence (SPDX) | required by |
|---|---|---|---|
{chr(10).join(rows)}

The GPU image replaces onnxruntime with
[onnxruntime-gpu](https://pypi.org/project/onnxruntime-gpu/{gpu_runtime_version()}/) {gpu_runtime_version()}
(MIT; `ONNXRUNTIME_GPU_VERSION` in deploy/Dockerfile), which loads NVIDIA's CUDA 13 and cuDNN 9 libraries
from its base image (NVIDIA's licence).

## Base images

Pinned by tag, not by digest (no registry is reachable from the project's machines to resolve one;
pin digests when the images are built for release).

| image | used in |
|---|---|
{images}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with docs/soup.md instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print("docs/soup.md does not match the installed packages: run make soup (after make setup)",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO_ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
