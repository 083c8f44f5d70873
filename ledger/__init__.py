"""payledger shared core: configuration, envelope, Avro codec, signing, keys, errors, limits, CLI.

This package imports no Kafka client, no Faust, no psycopg and no web framework;
the service packages (streams, projections, ingress, anchoring) import it.
"""

__version__ = "0.1.0"
