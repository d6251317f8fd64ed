"""Reading finished runs back: job discovery and loading (`reader`), statistics over seeds and the
markdown/CSV tables (`tables`), and the figures (`figures`). `python -m atlas_pl.report DIR` ties them
together; the analysis notebook and `benchmarks/bench_ablations.py` use the same pieces."""

from atlas_pl.reporting.reader import Job, ReportError, discover, load_job, load_jobs
from atlas_pl.reporting.tables import Group, Stat, aggregate

__all__ = ["Group", "Job", "ReportError", "Stat", "aggregate", "discover", "load_job", "load_jobs"]
