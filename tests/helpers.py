"""Assertions shared by the test tiers (importable as `helpers`: pytest.ini puts tests/ on the path)."""

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
