"""Checkpoints under real faults, with real ranks (`hpcyuan launch -n 2 -- train`, dp = 2):

  * a rank SIGKILLed in the middle of a save: the next start loads the previous checkpoint and the
    run ends bit-identical to one that was never killed;
  * the newest checkpoint damaged (a flipped byte in a shard, a missing shard, a missing manifest):
    named in one line, skipped, and the previous one loaded; a flipped byte in a weight, which a
    resume does not read (it rebuilds the weights from the master), changes nothing there and is
    named by the deep verify;
  * the disk full during a save (a real 9 MiB tmpfs): one clear error, printed once, exit status 2,
    the previous checkpoint intact and no partial directory left;
  * a loss spike: the spike guard rewinds to the last checkpoint and skips that batch.

    .venv/bin/python -m pytest tests/mpi/test_checkpoint_faults.py -s
"""

import shutil
import subprocess

import h5py
import pytest
from training_runs import assert_bit_identical, check_samples, losses, train

from hpcyuan.checkpoint import verify

EVERY_2 = ("--set", "checkpoint.interval=2")


@pytest.mark.timeout(600)
def test_rank_killed_mid_save_resumes_from_the_previous_checkpoint(shakespeare_512, tmp_path):
    train(tmp_path / "once", 6, 1, 2, *EVERY_2)
    killed = train(tmp_path / "run", 6, 1, 2, *EVERY_2, expect=None, env={"HPCYUAN_FAULT": "kill-in-save:step=4:rank=1"})
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step_00000004.tmp" / "shard_00001.h5").is_file(), killed.stdout + killed.stderr
    assert not (ckpts / "step_00000004").exists() and (ckpts / "latest").resolve().name == "step_00000002"
    resumed = train(tmp_path / "run", 6, 1, 2, *EVERY_2)
    assert "resumed from" in resumed.stdout and "(step 2, 16 samples)" in resumed.stdout, resumed.stdout
    assert losses(tmp_path / "once") == losses(tmp_path / "run")
    tensors = assert_bit_identical(tmp_path / "once", tmp_path / "run", 6)
    assert not (ckpts / "step_00000004.tmp").exists()  # the next save of step 4 replaced it
    print(f"rank 1 killed while saving step 4 (exit {killed.returncode}); resumed from step 2: 6 losses and "
          f"{tensors} tensors bit-identical to the run never killed; " + check_samples(tmp_path / "run", 6))


def flip_a_data_byte(step_dir, kind: str = "master"):
    """Flip one bit of the first dataset of `kind` in shard 1 (a resume reads master, m and v; the
    weights it rebuilds from the master)."""
    shard = step_dir / "shard_00001.h5"
    with h5py.File(shard, "r") as f:
        name = next(n for n in f[kind].keys())
        d = f[kind][name][next(iter(f[kind][name].keys()))]
        offset = d.id.get_offset()
    with open(shard, "r+b") as fh:
        fh.seek(offset + 7)
        byte = fh.read(1)
        fh.seek(offset + 7)
        fh.write(bytes([byte[0] ^ 0x10]))


DAMAGE = {
    "flipped-byte": (flip_a_data_byte, "fail their crc32 (corrupted)"),
    "missing-shard": (lambda d: (d / "shard_00001.h5").unlink(), "shard_00001.h5"),
    "missing-manifest": (lambda d: (d / "manifest.json").unlink(), "partial: no manifest.json"),
}


@pytest.fixture(scope="module")
def two_checkpoints(shakespeare_512, tmp_path_factory):
    """A dp = 2 run with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    train(run_dir, 4, 1, 2, *EVERY_2)
    return run_dir


@pytest.mark.timeout(300)
def test_a_flipped_weight_byte_does_not_reach_training_and_deep_verify_names_it(two_checkpoints, tmp_path):
    # the resume does not read the weights (it rebuilds them from the checked master), so it goes on
    # from the newest checkpoint, exactly; `hpcyuan ckpt verify --deep` (and export) read them and say
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir, symlinks=True)
    step_dir = run_dir / "checkpoints" / "step_00000004"
    flip_a_data_byte(step_dir, "weight")
    assert verify(step_dir) == []  # the cheap checks: sizes and metadata crc32s
    problems = verify(step_dir, deep=True)
    assert len(problems) == 1 and "shard_00001.h5: /weight/" in problems[0] and "fail their crc32" in problems[0]
    resumed = train(run_dir, 6, 1, 2, *EVERY_2)
    assert "(step 4, 32 samples)" in resumed.stdout, resumed.stdout
    reference = tmp_path / "reference"
    train(reference, 6, 1, 2, *EVERY_2)
    assert losses(reference) == losses(run_dir)
    assert_bit_identical(reference, run_dir, 6)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_loaded(two_checkpoints, tmp_path, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(two_checkpoints, run_dir, symlinks=True)
    damage_it, named = DAMAGE[damage]
    damage_it(run_dir / "checkpoints" / "step_00000004")
    resumed = train(run_dir, 6, 1, 2, *EVERY_2)
    lines = [line for line in resumed.stdout.splitlines() if "step_00000004" in line]
    assert len(lines) == 1 and named in lines[0], resumed.stdout
    assert "(step 2, 16 samples)" in resumed.stdout
    print(f"{damage}: {lines[0]}")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.timeout(300)
def test_disk_full_during_a_save_is_one_clear_error_and_keeps_the_previous(shakespeare_512, tmp_path, small_disk):
    # one checkpoint of the tiny model takes ~6.2 MB: step 2 fits on 9 MiB, step 4 cannot
    run = train(tmp_path / "run", 6, 1, 2, *EVERY_2, "--set", f"checkpoint.dir={small_disk}", expect=2)
    errors = [line for line in run.stderr.splitlines() if "No space left on device" in line]
    assert len(errors) == 1 and "checkpoint of step 4 not saved, previous ones kept" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["latest", "step_00000002"]
    assert verify(small_disk / "step_00000002", deep=True) == []
    print(f"disk full: {errors[0]}")


@pytest.mark.timeout(300)
def test_spike_guard_rewinds_and_skips_the_batch(shakespeare_512, tmp_path):
    # the loss of the batch at consumed_samples 40 (step 6) is made 100x: back to step 4, batch skipped
    run = train(tmp_path / "run", 8, 2, 2, *EVERY_2, "--set", "train.spike_window=3",
                env={"HPCYUAN_FAULT": "loss-spike:samples=40"})
    assert "spike guard: loss" in run.stdout and "rewound to step 4" in run.stdout, run.stdout
    assert run.stdout.count("skipping the batch at consumed_samples 40") == 1
    assert sorted(losses(tmp_path / "run")) == list(range(1, 9))
    print("spike at step 6: rewound to step 4, batch 40 skipped; "
          + check_samples(tmp_path / "run", 8, skipped=(40,)))
