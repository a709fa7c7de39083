"""The repo's .dockerignore read as an allow-list: what the Docker build context lets in, and leaves out again."""

from __future__ import annotations

from dataclasses import dataclass

from tests.helpers.processes import REPO_ROOT


@dataclass(frozen=True)
class BuildContext:
    starts_with_everything_left_out: bool  # the first rule is `*`
    let_in: tuple[str, ...]  # the `!` rules, without their trailing slash
    left_out_again: tuple[str, ...]  # plain paths excluded after being let in (wildcard rules not included)


def build_context() -> BuildContext:
    rules = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return BuildContext(
        starts_with_everything_left_out=bool(rules) and rules[0] == "*",
        let_in=tuple(rule[1:].rstrip("/") for rule in rules if rule.startswith("!")),
        left_out_again=tuple(rule.rstrip("/") for rule in rules[1:] if not rule.startswith("!") and "*" not in rule))
