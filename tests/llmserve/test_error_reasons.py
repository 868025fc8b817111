"""The error reasons are documented: each member of Reason in protos/ERRORS.md (with the gRPC
code of the class that raises it by default, where one does) and in docs/operations.md, and
each is raised somewhere."""

from __future__ import annotations

import re

import pytest

from llmserve import errors
from llmserve.processes import REPO_ROOT
from llmserve.reasons import Reason

ROWS = {
    m.group(1): m.group(2)
    for m in re.finditer(
        r"^\| `([A-Z_]+)` \| ([A-Z_]+) \|", (REPO_ROOT / "protos" / "ERRORS.md").read_text(), re.M
    )
}
OPERATIONS = (REPO_ROOT / "docs" / "operations.md").read_text()
SOURCES = "\n".join(
    p.read_text()
    for d in ("llmserve", "gateway", "runtime_service", "builder_service")
    for p in (REPO_ROOT / d).rglob("*.py")
)


@pytest.mark.parametrize("reason", list(Reason), ids=str)
def test_reason_is_documented_and_raised(reason: Reason) -> None:
    assert reason in ROWS, f"{reason} is not in protos/ERRORS.md"
    assert f"`{reason}`" in OPERATIONS.split("## Error reasons", 1)[1]
    assert re.search(rf"Reason\.{reason}\b", SOURCES), f"nothing raises {reason}"


def test_documented_reasons_exist_and_generic_ones_match_their_class() -> None:
    assert set(ROWS) == set(Reason)
    for cls in errors.LLMServeError.__subclasses__():
        assert ROWS[cls.default_reason] == cls.code
