"""What the benchmarks that run the real services share.

``bench_stack`` starts the embedded stack when it is not running (and stops it
at the end only then), makes a scratch state directory for this run's keys
and registry, and provisions this run's topics (prefix ``bench<run id>.``);
``child_env`` is the environment a worker process of the run gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger.config import Settings, load_settings
from ledger.infra.stack import Stack
from ledger.infra.supervisor import settings_env

ROOT = Path(__file__).resolve().parent.parent


class BenchError(Exception):
    """Something went wrong in the run; printed without a traceback."""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_stack(
    run_id: str,
    *,
    keep_stack: bool,
    scratch_prefix: str,
    scratch: Path | None = None,
    updates: dict[str, Any] | None = None,
) -> Iterator[tuple[Settings, Settings, Path]]:
    """(the stack's settings, this run's settings, its scratch dir), topics provisioned.

    ``scratch`` keeps the run's files in a directory of the caller's instead
    of a temporary one; ``updates`` are further settings of the run.
    """
    from streams.provision import provision_topics

    settings = load_settings()
    stack = Stack(settings)
    was_running = all(s.pid is not None for s in stack.status() if s.name in ("kafka", "postgres"))
    try:
        say("stack: up")
        stack.up(say)
        directory = (
            contextlib.nullcontext(os.fspath(scratch))
            if scratch is not None
            else tempfile.TemporaryDirectory(prefix=scratch_prefix)
        )
        with directory as path:
            # Keys and registry of this run only: the stack's own are never touched.
            run_settings = settings.model_copy(
                update={
                    "topic_prefix": f"bench{run_id}.",
                    "state_dir": Path(path) / "state",
                    **(updates or {}),
                }
            )
            provisioned = asyncio.run(provision_topics(run_settings))
            if not provisioned.ok:
                raise BenchError(f"topics differ from their specs: {provisioned.mismatches}")
            yield settings, run_settings, Path(path)
    finally:
        if not was_running and not keep_stack:
            say("stack: stopping it (this run started it)")
            stack.down(say)


def child_env(settings: Settings) -> dict[str, str]:
    """A worker process's environment: ours, the run's settings, the stack's, the repository."""
    return {
        **os.environ,
        **settings_env(settings),
        **Stack(settings).env(),
        "PYTHONPATH": os.pathsep.join(
            [os.fspath(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
