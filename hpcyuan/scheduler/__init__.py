"""Batch jobs: render slurm/train.sbatch for a run and a site profile, and submit it (docs/slurm.md)."""

from hpcyuan.scheduler.sbatch import node_range, render_script, submit_run, submit_script
from hpcyuan.scheduler.site import SiteProfile, load_site, site_from_dict

__all__ = ["SiteProfile", "load_site", "node_range", "render_script", "site_from_dict", "submit_run",
           "submit_script"]
