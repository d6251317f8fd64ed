"""Reading finished runs back: job discovery and loading (`reader`), statistics over seeds and the
markdown/CSV tables (`tables`), the figures (`figures`), and which evaluation set they show (`views`:
the global validation set or the clients' personal test sets). `python -m atlas_pl.report DIR` ties them
together; the analysis notebook and `benchmarks/bench_ablations.py` use the same pieces."""

from atlas_pl.reporting.reader import Job, ReportError, discover, load_job, load_jobs
from atlas_pl.reporting.tables import Group, Stat, aggregate
from atlas_pl.reporting.views import EVAL_SETS, view_record, with_eval_set

__all__ = [
    "EVAL_SETS",
    "Group",
    "Job",
    "ReportError",
    "Stat",
    "aggregate",
    "discover",
    "load_job",
    "load_jobs",
    "view_record",
    "with_eval_set",
]
