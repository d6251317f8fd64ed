"""`python -m atlas_pl.export JOB_DIR --out DIR [--client K] [--overwrite] [--no-check]`

Writes each client of a finished (or checkpointed) atlas_pl job as a standard PEFT LoRA adapter folder,
DIR/client_<K>/: adapter_config.json and adapter_model.safetensors (both halves of the client's split
model joined over all blocks, per-module ranks in rank_pattern / alpha_pattern), its task head (in the
adapter's modules_to_save where Hugging Face's classification head is the same function, else
head.safetensors + head.json), atlas_export.json and a README.md model card. A random-init test model's
base is written to DIR/base/. Each folder is loaded back through PEFT and checked against the job's
model before anything is published (--no-check skips that). Exit code 2 on bad input, nothing written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from atlas_pl.errors import user_errors

PROG = "atlas_pl.export"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m atlas_pl.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job_dir", type=Path, help="an atlas_pl job's output directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write (new or empty folder)")
    parser.add_argument("--client", default=None, help="export only this client (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it is not empty")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the PEFT reload check")
    return parser


def _quiet() -> None:
    """The export's own lines only: transformers' and peft's advice concerns training, not this."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(peft|transformers)\b.*")
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None, *, quiet: bool = False) -> int:
    """The command; `quiet` (the command line) also silences transformers / peft for the process."""
    args = _parser().parse_args(argv)
    with user_errors(PROG):
        from atlas_pl.export.job import plan_export

        plan = plan_export(args.job_dir, args.out, args.client, args.overwrite)
        if quiet:
            _quiet()
        from atlas_pl.export.writer import run_export

        exported = run_export(plan, check=args.check)
    for e in exported:
        checked = f", checked: max |logit diff| {e.max_diff:.1e}" if e.max_diff is not None else ""
        print(
            f"client {e.client} ({e.task or 'task unknown'}; head in {e.head_placement}{checked}) -> {e.path}"
        )
    print(f"{len(exported)} adapter(s) in {plan.out}; each README.md says how to load it")
    return 0


if __name__ == "__main__":
    sys.exit(main(quiet=True))
