"""The harvester's policy (hpcyuan/scheduler/policy.py): given a site profile and what the probe
learnt (`sbatch --test-only` answers as Offers), the chosen partition and shape are the cheapest /
fastest / best within a budget, and every partition not taken has a reason."""

from pathlib import Path

import pytest

from hpcyuan.errors import HpcyuanError
from hpcyuan.scheduler.harvest import probe_offers
from hpcyuan.scheduler.policy import Offer, choose
from hpcyuan.scheduler.site import site_from_dict
from hpcyuan.scheduler.slurm_output import parse_sinfo, parse_test_only

NOW = 1_800_000_000.0
SITE = site_from_dict({"name": "t", "partitions": {
    "spot": {"price_per_node_hour": 0.5, "speed": 1.0, "max_nodes": 8, "preemptible": True, "time": "02:00:00",
             "time_min": "00:20:00"},
    "fast": {"price_per_node_hour": 3.0, "speed": 2.0, "max_nodes": 4, "time": "04:00:00"},
    "std": {"billing_weight": 1.0, "speed": 1.0, "max_nodes": 16, "time": "04:00:00"},
}})
USABLE = [1, 2, 4, 8, 16]


def offers(**nodes):
    return {p: Offer(p, n, NOW) if isinstance(n, int) else Offer(p, error=n) for p, n in nodes.items()}


def test_cheapest_takes_the_lowest_price_per_token():
    d = choose(SITE.partitions, offers(spot=8, fast=4, std=16), USABLE, "cheapest", NOW)
    s = d.shape
    assert (s.partition, s.nodes_min, s.nodes_max, s.time, s.time_min) == ("spot", 8, 8, "02:00:00", "00:20:00")
    d = choose(SITE.partitions, offers(spot=8, fast=4, std=16), USABLE, "cheapest", NOW, min_nodes=2)
    assert (d.shape.nodes_min, d.shape.nodes_max) == (2, 8)  # a range: -N 2-8
    assert set(d.skipped) == {"fast", "std"} and "cheapest" in d.skipped["fast"]


def test_fastest_takes_the_most_node_speed():
    # fast: 4 nodes x speed 2 = 8 < std 16 x 1
    assert choose(SITE.partitions, offers(spot=8, fast=4, std=16), USABLE, "fastest", NOW).shape.partition == "std"
    assert choose(SITE.partitions, offers(spot=2, fast=4, std=4), USABLE, "fastest", NOW).shape.partition == "fast"
    # a tie (spot 8 x 1 = fast 4 x 2): the cheaper per token
    assert choose(SITE.partitions, offers(spot=8, fast=4, std=4), USABLE, "fastest", NOW).shape.partition == "spot"


def test_budget_shrinks_the_node_count_to_fit():
    d = choose(SITE.partitions, offers(spot=8, fast=4, std=16), USABLE, "budget", NOW, budget=6.0)
    # spot 8 x 0.5 = 4/h (8 node-speed); fast 2 x 3 = 6/h (4); std 4 x 1 = 4/h (4, capped to a usable count)
    assert (d.shape.partition, d.shape.nodes_max, d.shape.cost_per_hour) == ("spot", 8, 4.0)
    d = choose(SITE.partitions, offers(spot="partition is down (sinfo)", fast=4, std=16), USABLE, "budget", NOW,
               budget=6.0)
    # fast: 6/h buys 2 nodes x speed 2 = 4; std: 6 nodes, 4 usable x 1 = 4: a tie, std is cheaper per token
    assert (d.shape.partition, d.shape.nodes_max) == ("std", 4)
    assert "budget: std ranks first" in d.skipped["fast"]
    with pytest.raises(HpcyuanError, match="budget"):
        choose(SITE.partitions, offers(spot=8), USABLE, "budget", NOW)


def test_down_refused_late_and_too_small_partitions_are_skipped_with_reasons():
    got = {"spot": Offer("spot", error="partition is down (sinfo)"),
           "fast": Offer("fast", 4, NOW + 3600),
           "std": Offer("std", 16, NOW)}
    d = choose(SITE.partitions, got, USABLE, "cheapest", NOW)
    assert d.shape.partition == "std" and d.shape.nodes_max == 16
    assert d.skipped == {"spot": "partition is down (sinfo)", "fast": "would start only in 3600 s, not now"}
    d = choose(SITE.partitions, offers(spot=1, fast="sbatch --test-only refused: x", std=1), USABLE, "cheapest",
               NOW, min_nodes=2)
    assert d.shape is None and "no usable count >= 2" in d.skipped["spot"] and "refused" in d.skipped["fast"]
    assert "no partition can start" in d.explain()
    assert "not probed" in choose(SITE.partitions, {}, USABLE, "cheapest", NOW).skipped["std"]


def test_usable_counts_round_the_offer_down():
    d = choose(SITE.partitions, offers(spot=7), [2, 4, 6], "cheapest", NOW, min_nodes=1)
    assert (d.shape.nodes_min, d.shape.nodes_max) == (2, 6)


def test_unknown_objective():
    with pytest.raises(HpcyuanError, match="objective"):
        choose(SITE.partitions, offers(spot=8), USABLE, "greenest", NOW)


class GoldenProbe:
    """probe_offers against captured real answers: low down, normal busy but with an idle node."""

    def __init__(self, sinfo: str):
        self.golden = Path(__file__).parent / "golden" / "slurm"
        self.sinfo_text = (self.golden / sinfo).read_text()
        self.asked = []

    def sinfo(self):
        return parse_sinfo(self.sinfo_text)

    def test_only(self, partition, nodes, walltime, time_min, exclusive):
        self.asked.append((partition, nodes))
        return parse_test_only(partition, (self.golden / "testonly_low_idle.txt").read_text(), 0)


def test_probe_offers_from_real_sinfo():
    site = site_from_dict({"partitions": {"low": {"price_per_node_hour": 1.0, "max_nodes": 4},
                                          "normal": {"price_per_node_hour": 3.0, "max_nodes": 4},
                                          "gone": {"price_per_node_hour": 0.1, "max_nodes": 4}}})
    probe = GoldenProbe("sinfo_low_down.txt")
    got = probe_offers(site, probe, [1, 2, 4])
    assert got["low"].error == "partition is down (sinfo)"
    assert "not on this cluster" in got["gone"].error
    assert got["normal"].error.startswith("0 idle node(s)") and probe.asked == []
    probe = GoldenProbe("sinfo_idle.txt")
    got = probe_offers(site, probe, [1, 2, 4])
    assert probe.asked == [("low", 4), ("normal", 4)] and got["low"].nodes == 4 and got["low"].start
    d = choose(site.partitions, got, [1, 2, 4], "cheapest", got["low"].start)
    assert d.shape.partition == "low" and "cheapest" in d.skipped["normal"]


def test_slot_sets_carry_the_shape_and_the_planned_split():
    from hpcyuan.config import load_config
    from hpcyuan.scheduler.harvest import slot_sets
    from hpcyuan.scheduler.policy import Shape

    shape = Shape("low", 2, 4, "00:10:00", "00:02:00", 1.0, 1.0, True)
    sets = slot_sets(load_config("tiny"), "tiny", ["train.steps=9"], shape)
    assert sets == ["train.steps=9", 'slurm.partition="low"', "slurm.nodes=4", "slurm.min_nodes=2",
                    'slurm.time="00:10:00"', 'slurm.time_min="00:02:00"', "slurm.max_requeues=0"]
    cfg = load_config("tiny", ["parallel.pp=2"])
    split = [s for s in slot_sets(cfg, "tiny", ["parallel.pp=2"], shape) if "layers_per_stage" in s]
    assert len(split) == 1 and sum(load_config("tiny", ["parallel.pp=2", split[0]]).parallel.layers_per_stage) == 4
