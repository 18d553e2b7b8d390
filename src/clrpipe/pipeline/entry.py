"""The `clrpipe` console script: the pipeline's command, or one line saying how to get it.

`pip install clrpipe` (the library alone) installs the script too, but not the command's
dependencies (click, Hydra, MLflow, DVC, ...: the `pipeline` extra); without them the script
prints one line naming the missing module and the install command, and exits 1, instead of an
import traceback. Nothing but the standard library is imported before the command."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> None:
    try:
        from clrpipe.pipeline.cli import main as command
    except ModuleNotFoundError as err:
        if not err.name or err.name.split(".")[0] == "clrpipe":
            raise
        print(f"error: the clrpipe command needs the pipeline extra (no module named "
              f"'{err.name}'): pip install 'clrpipe[pipeline]'", file=sys.stderr)
        sys.exit(1)
    command()
