"""The ``payledger`` command line. One place wires the pieces together.

Commands that need a Kafka client, Postgres or a web server import the service
package that owns that I/O inside the command, so ``ledger`` itself stays free
of those dependencies and ``payledger --help`` starts fast.
"""

from __future__ import annotations

import click

from ledger import __version__


@click.group()
@click.version_option(__version__, prog_name="payledger")
def main() -> None:
    """payledger: an event-sourced payment ledger on Kafka."""


def _register_groups() -> None:
    from anchoring.commands import anchoring_group
    from ingress.commands import gdpr
    from ingress.merchants import merchants
    from ledger.audit.commands import audit_group
    from ledger.commands import keys, run
    from ledger.infra.commands import infra
    from projections.commands import projections_group
    from streams.commands import topics

    main.add_command(run)
    main.add_command(keys)
    main.add_command(infra)
    main.add_command(topics)
    main.add_command(merchants)
    main.add_command(gdpr)
    main.add_command(projections_group)
    main.add_command(anchoring_group)
    main.add_command(audit_group)


_register_groups()


if __name__ == "__main__":
    main()
