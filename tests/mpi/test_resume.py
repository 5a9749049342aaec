"""Stop and resume through HDF5 checkpoints, end to end with `hpcyuan launch ... train`.

    .venv/bin/python -m pytest tests/mpi/test_resume.py -s

Same layout (dp = 2; pp = 2 x dp = 2): 4 steps, stop, resume to 8 is bit-identical to 8 steps in one
go: every logged loss equal as a float, every tensor of the final checkpoint (weights, fp32 master,
Adam m and v) equal bit for bit. Another layout (saved by pp = 2 x dp = 2, resumed on one process,
pp = 1 x dp = 2 and pp = 4 x dp = 1, and back; tiny Yuan and tiny M32): the losses after the resume
stay within 1e-5 of the uninterrupted run (fp32; only the order of sums changes). Every run's
sample log must show each sample trained exactly once, in the sampler's order.
"""

import pytest
from training_runs import assert_bit_identical, check_samples, losses, train


@pytest.mark.timeout(600)
@pytest.mark.parametrize("pp,dp", [(1, 2), (2, 2)])
def test_same_layout_resume_is_bit_identical(shakespeare_512, tmp_path, pp, dp):
    train(tmp_path / "once", 8, pp, dp)
    train(tmp_path / "twice", 4, pp, dp)
    resumed = train(tmp_path / "twice", 8, pp, dp)
    assert "resumed from" in resumed.stdout and "(step 4, 32 samples)" in resumed.stdout
    assert losses(tmp_path / "once") == losses(tmp_path / "twice")  # exact float equality, steps 1-8
    tensors = assert_bit_identical(tmp_path / "once", tmp_path / "twice", 8)
    print(f"pp={pp} x dp={dp}: 8 losses and {tensors} tensors bit-identical after stop at step 4 and resume; "
          + check_samples(tmp_path / "twice", 8))


# (config, the layouts that train steps 1-4, 5-6 and 7-8): saved on pp2 x dp2, resumed elsewhere, and
# back; one chain also changes the ZeRO stage and the split of layers over stages.
ZERO2, SPLIT_3_1 = ("--set", "parallel.zero_stage=2"), ("--set", "parallel.layers_per_stage=[3, 1]")
LAYOUT_CHAINS = [
    ("tiny", [(2, 2), (1, 1), (2, 2)]),
    ("tiny", [(2, 2), (1, 2, *ZERO2), (2, 2, *SPLIT_3_1)]),
    ("tiny", [(2, 2), (4, 1), (2, 2)]),
    ("tiny-m32", [(2, 2), (1, 2), (4, 1)]),
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("config,chain", LAYOUT_CHAINS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(layout_name(*c) for c in v))
def test_resume_on_other_layouts(shakespeare_512, tmp_path, config, chain):
    train(tmp_path / "once", 8, 2, 2, config=config)
    for steps, (pp, dp, *extra) in zip((4, 6, 8), chain):
        run = train(tmp_path / "moved", steps, pp, dp, *extra, config=config)
        if steps > 4:
            assert "written by pp" in run.stdout, run.stdout
    a, b = losses(tmp_path / "once"), losses(tmp_path / "moved")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    diff = max(abs(a[s] - b[s]) for s in a)
    print(f"{config} {' -> '.join(layout_name(*c) for c in chain)}: max loss diff over 8 steps {diff:.2e}; "
          + check_samples(tmp_path / "moved", 8, config))
    assert all(a[s] == b[s] for s in range(1, 5)) and diff <= 1e-5


def layout_name(pp: int, dp: int, *extra: str) -> str:
    return f"pp{pp}xdp{dp}" + "".join(f"({e.split('.')[-1].replace(' ', '')})" for e in extra if e != "--set")


@pytest.mark.timeout(300)
def test_checkpoint_of_another_model_is_refused(shakespeare_512, tmp_path):
    train(tmp_path / "run", 2, 1, 2)
    run = train(tmp_path / "run", 4, 1, 1, "--set", "model.num_heads=2", expect=2)
    assert "holds another model" in run.stderr and "model.num_heads = 4 there, 2 here" in run.stderr
    assert "Traceback" not in run.stderr
