"""Golden cases of the Slurm hostlist and tasks-per-node expanders (pure, no Slurm needed)."""

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.hostlist import expand_hostlist, expand_tasks_per_node


@pytest.mark.parametrize("text, names", [
    ("n1", ["n1"]),
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("n[01-03,7],gpu5", ["n01", "n02", "n03", "n7", "gpu5"]),
    ("node[08-11]", ["node08", "node09", "node10", "node11"]),      # padding from the lower bound
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("a[1-2]-b[3-4]", ["a1-b3", "a1-b4", "a2-b3", "a2-b4"]),         # product, leftmost slowest
    ("x[1,3],y[2],z", ["x1", "x3", "y2", "z"]),
    ("rack[1]-n[1-2].site", ["rack1-n1.site", "rack1-n2.site"]),
    ("n1,n1", ["n1", "n1"]),
    ("", []),
])
def test_expand_hostlist(text, names):
    assert expand_hostlist(text) == names


@pytest.mark.parametrize("text", ["n[1-3", "n1-3]", "n[3-1]", "n[1-9:2]", "n[a-b]", "n[[1]]"])
def test_bad_hostlists_are_one_line_errors(text):
    with pytest.raises(HpcyuanError, match="hostlist") as err:
        expand_hostlist(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, counts", [
    ("4", [4]),
    ("2(x3)", [2, 2, 2]),
    ("2(x3),1", [2, 2, 2, 1]),
    ("1,3(x2),2", [1, 3, 3, 2]),
])
def test_expand_tasks_per_node(text, counts):
    assert expand_tasks_per_node(text) == counts


def test_bad_tasks_per_node():
    with pytest.raises(HpcyuanError, match="tasks per node"):
        expand_tasks_per_node("2(3)")
