"""The pp x dp grid maths (pure): rank order, stage layers, neighbours, errors naming every degree."""

import pytest

from hpcyuan.config import ParallelConfig
from hpcyuan.errors import HpcyuanError
from hpcyuan.runtime.topology import Topology, uniform_split


@pytest.mark.parametrize("pp, dp", [(1, 1), (1, 4), (4, 1), (2, 2), (2, 3), (3, 2)])
def test_coords_and_rank_of_are_inverse(pp, dp):
    topo = Topology(pp, dp, (1,) * pp)
    ranks = [topo.rank_of(s, d) for s in range(pp) for d in range(dp)]
    assert ranks == list(range(pp * dp))  # dp ranks of a stage are consecutive
    assert [topo.coords(r) for r in ranks] == [(s, d) for s in range(pp) for d in range(dp)]


def test_groups_and_neighbours_pp2_dp3():
    topo = Topology(2, 3, (2, 2))
    assert topo.dp_group_ranks(1) == [3, 4, 5]
    assert topo.pp_group_ranks(1) == [1, 4]
    assert (topo.prev_stage_rank(4), topo.next_stage_rank(4)) == (1, None)
    assert (topo.prev_stage_rank(2), topo.next_stage_rank(2)) == (None, 5)
    assert topo.is_first_stage(2) and topo.is_last_stage(3) and not topo.is_last_stage(0)


def test_stage_layers_follow_layers_per_stage():
    topo = Topology(3, 1, (2, 3, 1))
    assert [list(topo.stage_layers(s)) for s in range(3)] == [[0, 1], [2, 3, 4], [5]]
    assert topo.num_layers == 6


@pytest.mark.parametrize("layers, pp, counts", [
    (8, 4, (2, 2, 2, 2)), (9, 4, (2, 3, 2, 2)), (10, 4, (2, 3, 3, 2)), (7, 3, (2, 3, 2)),
    (4, 1, (4,)), (3, 3, (1, 1, 1)),
])
def test_uniform_split_gives_the_remainder_to_the_middle(layers, pp, counts):
    assert uniform_split(layers, pp) == counts and sum(counts) == layers


def test_for_world_uses_the_config_or_the_uniform_split():
    assert Topology.for_world(ParallelConfig(pp=2, dp=2), 5, 4).layers_per_stage == (3, 2)
    pinned = ParallelConfig(pp=2, dp=1, layers_per_stage=(1, 4))
    assert Topology.for_world(pinned, 5, 2).layers_per_stage == (1, 4)


def test_for_world_error_names_every_degree():
    with pytest.raises(HpcyuanError) as err:
        Topology.for_world(ParallelConfig(pp=2, dp=3), 4, 4)
    msg = str(err.value)
    assert "parallel.pp (2) x parallel.dp (3) = 6 ranks, but the job has 4 ranks (mpiexec -n / srun -n)" in msg
    assert "\n" not in msg


def test_for_world_rejects_a_pinned_split_of_the_wrong_model():
    with pytest.raises(HpcyuanError, match="sums to 5, but model.num_layers is 6"):
        Topology.for_world(ParallelConfig(pp=2, dp=1, layers_per_stage=(1, 4)), 6, 2)


def test_out_of_grid_is_an_error():
    topo = Topology(2, 2, (1, 1))
    with pytest.raises(ValueError, match="outside"):
        topo.coords(4)
    with pytest.raises(ValueError, match="outside"):
        topo.rank_of(0, 2)
    with pytest.raises(HpcyuanError):
        Topology(2, 2, (1,))
