"""``python -m streams.worker``: run the payment stream processors until SIGTERM or SIGINT.

Settings come from the environment (``PAYLEDGER_*``), as for every process.
"""

from __future__ import annotations

import logging

import faust

from ledger.config import load_settings
from streams.app import create_app


def main() -> None:
    app = create_app(load_settings())
    worker = faust.Worker(app, loglevel="INFO", quiet=True)
    # The SDK logs every request and response at INFO; the processor logs
    # each provider call once itself.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
