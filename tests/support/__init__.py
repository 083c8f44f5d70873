"""Helpers shared by the test tiers: small fakes behind the real interfaces, and sample events."""
