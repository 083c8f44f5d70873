"""``python -m projections.worker [--schema NAME] [--batch-records N]``: run the applier.

The same as ``payledger projections apply``; settings come from the
environment (``PAYLEDGER_*``), as for every process. Exits 0 on SIGTERM or
SIGINT once the batch in flight is committed.
"""

from __future__ import annotations

from projections.commands import apply


def main() -> None:
    apply(prog_name="python -m projections.worker")


if __name__ == "__main__":
    main()
