"""Site profiles' [partitions.<name>] tables (hpcyuan/scheduler/site.py), what the harvester weighs."""

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler import load_site, site_from_dict


def test_shipped_profiles_have_partitions():
    local = load_site("local")
    assert list(local.partitions) == ["low", "normal"]
    assert local.partitions["low"].preemptible and not local.partitions["normal"].preemptible
    assert local.partitions["low"].price < local.partitions["normal"].price
    example = load_site("example").partitions
    assert example["batch"].price == 1.0 and example["batch"].billing_weight == 1.0  # billing weight as the price


def test_profile_without_partitions_still_loads():
    assert site_from_dict({"name": "x", "partition": "batch"}).partitions == {}


@pytest.mark.parametrize("table, message", [
    ({"price_per_node_hour": 1.0, "billing_weight": 1.0}, "not both"),
    ({"speed": 0}, "speed = 0: must be > 0"),
    ({"max_nodes": 0}, "max_nodes = 0"),
    ({"time": "soon"}, "not a Slurm time"),
    ({"prize": 1.0}, "unknown field 'prize'"),
    ({"preemptible": "yes"}, "preemptible = 'yes': wrong type"),
    ({"max_nodes": True}, "wrong type"),
])
def test_bad_partition_fields_name_the_field(table, message):
    with pytest.raises(HpcyuanError, match=message):
        site_from_dict({"partitions": {"p": table}}, "site.toml")
