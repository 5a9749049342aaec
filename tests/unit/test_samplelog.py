"""The sample log check: last line per position wins; a gap, a wrong batch or a repeat is named."""

import json

import pytest
from helpers import one_line_error

from hpcyuan.data import GlobalSampler
from hpcyuan.data.samplelog import check_sample_log, effective_batches

SAMPLER = GlobalSampler(num_samples=100, global_batch_size=4, seed=7)


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def trained(step, layout="pp2xdp2", sampler=SAMPLER):
    pos = (step - 1) * sampler.global_batch_size
    return {"consumed_samples": pos, "step": step, "layout": layout, "indices": sampler.global_batch(pos).tolist()}


def test_a_resumed_run_is_judged_by_its_last_line_per_position(tmp_path):
    # steps 1-5 on pp2xdp2, killed; resumed from a checkpoint at step 3 on pp1xdp2 to step 8
    rows = [trained(s) for s in range(1, 6)] + [trained(s, "pp1xdp2") for s in range(4, 9)]
    path = write_log(tmp_path / "samples.jsonl", rows)
    assert [r["layout"] for r in effective_batches(path).values()] == ["pp2xdp2"] * 3 + ["pp1xdp2"] * 5
    summary = check_sample_log(path, SAMPLER)
    assert summary.startswith("32 samples in 8 batches") and "pp2xdp2 (steps 1-3), pp1xdp2 (steps 4-8)" in summary


def test_a_skipped_batch_is_listed(tmp_path):
    rows = [trained(1), trained(2), {"consumed_samples": 8, "skipped": "spike guard"}]
    rows.append({**trained(4), "step": 3})  # the step after the skip trains the next batch
    summary = check_sample_log(write_log(tmp_path / "s.jsonl", rows), SAMPLER)
    assert "at consumed_samples 8" in summary and summary.startswith("12 samples in 3 batches")


@pytest.mark.parametrize("rows,needle", [
    ([trained(1), trained(3)], "no batch at consumed_samples 4"),
    ([trained(1), {**trained(2), "indices": trained(1)["indices"]}], "step 2 (consumed_samples 4) is not the sampler's"),
])
def test_a_gap_or_a_repeated_batch_is_named(tmp_path, rows, needle):
    one_line_error(lambda: check_sample_log(write_log(tmp_path / "s.jsonl", rows), SAMPLER), needle)
