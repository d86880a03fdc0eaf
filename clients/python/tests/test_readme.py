"""The README's quick starts run: each ```python block marked with a
``<!-- readme-test: NAME -->`` comment is extracted and exec()'d (the async
one runs its own asyncio.run). They start local stacks, so they need the
agentsec binary (AGENTSEC_BIN) and are skipped without it."""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Dict

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\s*\n```python\n(.*?)\n```", re.S)


def marked_blocks() -> Dict[str, str]:
    with open(README, encoding="utf-8") as f:
        return {name: code for name, code in BLOCK.findall(f.read())}


def test_the_readme_marks_both_quick_starts() -> None:
    blocks = marked_blocks()
    assert set(blocks) == {"sync", "async"}
    assert "create_security_stack(config)" in blocks["sync"]
    assert "await create_async_security_stack(config)" in blocks["async"]
    assert "asyncio.run(main())" in blocks["async"]


@pytest.mark.parametrize("name", ["sync", "async"])
def test_readme_quick_start_runs(name: str, binary: str) -> None:
    code = marked_blocks()[name]
    namespace: Dict[str, object] = {"__name__": "readme_" + name}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md[{name}]", "exec"), namespace)
    printed = out.getvalue()
    # It completed, and read back what it logged.
    assert "tool-call-complete" in printed, printed
    if name == "async":
        assert "tool.call allow 120" in printed, printed
    else:
        assert "budget.spend allow 120" in printed, printed
