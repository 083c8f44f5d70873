"""Local infrastructure of the embedded stack: Kafka (KRaft), Postgres and SoftHSM2.

Everything here runs real services from real distributions (Kafka jars from
Maven Central, Debian's Postgres and SoftHSM2), never fakes, and uses only the
standard library and click: no Kafka client, no database driver.

    stack.Stack            ``payledger infra up | down | status``: background daemons
    supervisor.Supervisor  ``make run``: the same parts as supervised child processes
    commands               the ``payledger infra`` click group
    kafka, postgres        one server part each: install, configure, start, probe
    softhsm                the PKCS#11 token (files, no process)
    part, catalog          what a server part offers; which parts make the stack
    procs, ports, apt      processes, ports and Debian packages
    kafka_probe            Kafka readiness over the wire protocol, without a client
    postgres_conf          Postgres binaries and configuration text

A state dir holds everything: ``kafka/``, ``postgres/``, ``softhsm/``, and
``logs/<part>.log`` (appended to across restarts), ``run/<part>.pid``.
"""
