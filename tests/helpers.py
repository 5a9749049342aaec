"""Assertions shared by the test tiers (importable as `helpers`: pytest.ini puts tests/ on the path)."""

import random

import pytest

from hpcyuan.errors import HpcyuanError


def one_line_error(fn, *needles) -> str:
    """fn() must raise HpcyuanError whose message is one line containing every needle."""
    with pytest.raises(HpcyuanError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def pseudo_text(seed: int, lines: int = 60) -> str:
    """Pseudo-words from a few syllables: varied enough to learn a few hundred pieces from 9 KB."""
    r = random.Random(seed)
    syllables = ["ka", "to", "ri", "mun", "sel", "va", "po", "dre", "lin", "xo", "qua", "ber", "ni", "st", "ou"]
    out = []
    for _ in range(lines):
        words = ("".join(r.choice(syllables) for _ in range(r.randint(1, 3))) for _ in range(r.randint(3, 10)))
        out.append(("    " if r.random() < 0.2 else "") + " ".join(words).capitalize() + r.choice(".,;!?"))
    return "\n".join(out) + "\n"
