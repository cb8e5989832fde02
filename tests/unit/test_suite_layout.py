"""The test tree itself: what makes ``pytest`` over all three tiers collect what each tier collects alone.

The tier folders are not packages, so pytest's default import mode imports
each test module under its bare file name.  Two tiers holding a file of the
same name pass tier by tier, yet the whole run (the README's command,
``.ci/run``) stops at collection with "import file mismatch".  This check
fails first, naming the clash.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_every_test_module_name_is_unique_across_the_tiers() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        if path.name.startswith("test_") or path.name == "conftest.py":
            by_name[path.name].append(str(path.relative_to(TESTS)))
    # conftest.py files are per folder by design (pytest imports them as packages of their own dir)
    clashes = {name: where for name, where in by_name.items() if len(where) > 1 and name != "conftest.py"}
    assert clashes == {}, f"rename one of each: {clashes}"
    assert "test_suite_layout.py" in by_name  # the walk found the tree this file is in
