"""HTTP ingress: the Starlette app that accepts payment commands and serves the built-in
schema registry's Confluent-compatible read API."""
