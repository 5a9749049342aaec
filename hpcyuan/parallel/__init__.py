"""Parallel training over the runtime's pp x dp grid (docs/parallel.md, docs/pipeline.md):

  flat.py      the stage's parameters as views into one flat buffer: shards, buckets
  dp.py        GradSync: bucketed gradient reduction over the dp group while backward runs
  zero.py      ZeroAdamW: ZeRO-0/1/2 AdamW with one-collective global-norm clipping
  schedule.py  GPipe / 1F1B as per-stage instruction lists, checked and simulated without ranks
  pipeline.py  build_stage, Pipeline: runs a stage's schedule with MPI point-to-point transfers
"""
