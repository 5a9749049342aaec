"""Slurm hostlist and tasks-per-node expressions, expanded by pure functions (no `scontrol`).

    >>> expand_hostlist("n[01-03,7],gpu5")
    ['n01', 'n02', 'n03', 'n7', 'gpu5']
    >>> expand_tasks_per_node("2(x3),1")
    [2, 2, 2, 1]

Tested in tests/unit/test_runtime_hostlist.py (`pytest tests/unit/test_runtime_hostlist.py`).
Supported: several bracket groups in one name (`a[1-2]-b[3-4]` is their product, in Slurm's
order), zero padding taken from the lower bound (`[08-10]` -> 08, 09, 10), commas inside and outside
brackets. Slurm's rarely used step syntax (`[1-9:2]`) is rejected with a clear error.
"""

from __future__ import annotations

import itertools
import re

from hpcyuan.errors import HpcyuanError

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
_REPEAT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def expand_hostlist(text: str) -> list[str]:
    """`n[01-03,7],gpu5` -> ['n01', 'n02', 'n03', 'n7', 'gpu5'] (order kept, duplicates kept)."""
    names: list[str] = []
    for item in _split_top_level(text.strip()):
        names.extend(_expand_name(item, text))
    return names


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM_TASKS_PER_NODE, e.g. `2(x3),1` -> [2, 2, 2, 1]: tasks on each node of the job."""
    counts: list[int] = []
    for item in text.strip().split(","):
        match = _REPEAT.match(item.strip())
        if not match:
            raise HpcyuanError(f"tasks per node '{text}': cannot read '{item}' (expected N or N(xM))")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are outside brackets: `a[1,2],b` -> ['a[1,2]', 'b']."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise HpcyuanError(f"hostlist '{text}': unbalanced or nested brackets")
        if ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise HpcyuanError(f"hostlist '{text}': unbalanced brackets")
    items.append(text[start:])
    return [item for item in items if item]


def _expand_name(item: str, whole: str) -> list[str]:
    """One name with any number of bracket groups: the product of the groups, leftmost slowest."""
    # re.split with a capture group alternates literal text and bracket contents:
    # "a[1-2]-b[3]" -> ["a", "1-2", "-b", "3", ""]
    parts = re.split(r"\[([^\]]*)\]", item)
    literals, groups = parts[0::2], [_expand_group(g, whole) for g in parts[1::2]]
    names = []
    for combo in itertools.product(*groups):
        pieces = [literals[0]]
        for value, literal in zip(combo, literals[1:]):
            pieces += [value, literal]
        names.append("".join(pieces))
    return names


def _expand_group(group: str, whole: str) -> list[str]:
    """Inside one bracket: `01-03,7` -> ['01', '02', '03', '7']."""
    values = []
    for rng in group.split(","):
        match = _RANGE.match(rng.strip())
        if not match:
            raise HpcyuanError(f"hostlist '{whole}': cannot read range '{rng}' (expected N or N-M)")
        lo_text, hi_text = match.group(1), match.group(2) or match.group(1)
        lo, hi = int(lo_text), int(hi_text)
        if hi < lo:
            raise HpcyuanError(f"hostlist '{whole}': range '{rng}' runs backwards")
        width = len(lo_text)  # Slurm pads every number to the width of the lower bound
        values.extend(str(n).zfill(width) for n in range(lo, hi + 1))
    return values
