"""Postgres read models: SQL migrations, appliers, rebuild."""
