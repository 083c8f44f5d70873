"""One typed settings object for every payledger process.

Values come from the environment (prefix ``PAYLEDGER_``), then from a ``.env``
file in the working directory, then from the defaults below, which describe
the embedded single-node stack that ``make run`` starts. Invalid values fail at
start-up, never later; secrets are ``SecretStr`` and never appear in ``repr``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger import limits
from ledger.limits import WEBHOOK_TIMESTAMP_TOLERANCE_S_MAX

Port = Annotated[int, Field(ge=1, le=65535)]
# The checkout this module lives in (``ledger/`` is one level below it).
_REPO_ROOT = Path(__file__).resolve().parent.parent
# An empty HMAC key would verify anything signed with an empty key: refuse it.
WebhookSecret = Annotated[SecretStr, Field(min_length=8)]


class SignerBackend(StrEnum):
    """Where the private half of a signing key lives."""

    FILE = "file"
    PKCS11 = "pkcs11"


class Settings(BaseSettings):
    """payledger configuration. See the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="PAYLEDGER_",
        env_file=".env",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    # Where local state (Kafka log, Postgres cluster, keys, registry, token) lives.
    state_dir: Path = Path(".state")
    # Where downloads and builds are cached (Kafka jars, Go binaries).
    cache_dir: Path = Path(".cache")

    # Kafka.
    kafka_version: str = "4.3.1"
    kafka_host: str = "127.0.0.1"
    kafka_port: Port = 19092
    kafka_controller_port: Port = 19093
    kafka_bootstrap_servers: str | None = None
    kafka_heap_mb: Annotated[int, Field(ge=128, le=16384)] = 768
    topic_prefix: Annotated[str, Field(pattern=r"^[a-z0-9._-]{0,40}$")] = "payledger."
    topic_partitions: Annotated[int, Field(ge=1, le=1024)] = 6
    topic_replication_factor: Annotated[int, Field(ge=1, le=7)] = 1
    topic_min_insync_replicas: Annotated[int, Field(ge=1, le=7)] = 1
    # How often the stream worker commits its transactions: what a domain event
    # waits, at most, before read_committed consumers see it. Shorter costs
    # more commits per second; Faust's own default is 2.8 s.
    streams_commit_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.25

    # Postgres.
    postgres_host: str = "127.0.0.1"
    postgres_port: Port = 15432
    postgres_db: str = "payledger"
    postgres_user: str = "payledger"
    postgres_password: SecretStr = SecretStr("payledger-dev")
    postgres_dsn: SecretStr | None = None
    # The schema of the read models (`payledger projections migrate`) that the
    # ingress's query API reads: a lower-case identifier, never public or pg_*.
    projections_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "projections"

    # Anchoring: the Merkle log over the ledger topics and its checkpoints.
    # The Postgres schema of the log (leaves, tree nodes, positions, checkpoints).
    anchoring_schema: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "anchoring"
    # The log's name: the first line of every checkpoint and the name of its
    # signature lines (a C2SP origin: no spaces or plus signs).
    anchoring_origin: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/:-]{1,255}$")] = (
        "payledger.local/ledger"
    )
    # A checkpoint is made once this many leaves were appended since the last
    # one, or once this many seconds passed since it, whichever comes first;
    # never when the log did not grow.
    anchoring_checkpoint_every_events: Annotated[int, Field(ge=1, le=1_000_000)] = 1_000
    anchoring_checkpoint_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    # Most records appended in one Postgres transaction.
    anchoring_batch_records: Annotated[int, Field(ge=1, le=10_000)] = 500
    # Publish each checkpoint and its leaf bundle to IPFS (ipfs_api_url, or the
    # local Kubo). Off by default: the worker then needs no Kubo. Timestamps
    # are on when ots_direct_enabled is set or ots_calendar_urls is not empty.
    anchoring_ipfs_enabled: bool = False

    # HTTP ingress (also serves the built-in schema registry's read API).
    http_host: str = "127.0.0.1"
    http_port: Port = 18080

    # Merchant API.
    # How long a request waits for the broker's acknowledgement before it is
    # answered 503 with Retry-After (never 202 for an unacknowledged write).
    publish_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # How long an Idempotency-Key is remembered; at least 24 hours.
    idempotency_ttl_s: Annotated[int, Field(ge=86_400, le=30 * 86_400)] = 86_400
    # Largest request body, counted as it arrives; larger ones are answered 413.
    request_body_bytes_max: Annotated[int, Field(ge=1024, le=limits.REQUEST_BODY_BYTES_CEILING)] = (
        65_536
    )
    # Largest amount one create, capture or refund may carry, in minor units.
    # 99,999,999 is Stripe's eight-digit maximum ($999,999.99), the lowest of
    # the three providers, so an accepted amount is never refused for its size.
    amount_minor_max: Annotated[int, Field(ge=1, le=limits.AMOUNT_MINOR_CEILING)] = 99_999_999
    # Per-merchant token bucket, per ingress process: the refill rate in
    # requests per second and the bucket size. A merchant's own values win.
    rate_limit_per_s: Annotated[float, Field(gt=0, le=limits.RATE_LIMIT_PER_S_CEILING)] = 25.0
    rate_limit_burst: Annotated[int, Field(ge=1, le=limits.RATE_LIMIT_BURST_CEILING)] = 50

    # Provider webhooks. Each provider takes a list of secrets: during a
    # rotation both the old and the new one verify, so no delivery is refused.
    stripe_webhook_secrets: list[WebhookSecret] = Field(default_factory=list)
    # Stripe signs a timestamp; deliveries further than this from now, in
    # either direction, are refused as replays or forgeries.
    stripe_webhook_tolerance_s: Annotated[
        int, Field(ge=1, le=WEBHOOK_TIMESTAMP_TOLERANCE_S_MAX)
    ] = 300
    # The ids of our webhook registrations at PayPal; PayPal signs the id in.
    paypal_webhook_ids: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,50}$")]] = Field(
        default_factory=list
    )
    paypal_webhook_tolerance_s: Annotated[
        int, Field(ge=1, le=WEBHOOK_TIMESTAMP_TOLERANCE_S_MAX)
    ] = 300
    coinbase_webhook_secrets: list[WebhookSecret] = Field(default_factory=list)

    # Outbound provider calls. The defaults point at the local mocks that
    # `payledger infra up --with-mocks` starts (stripe-mock, Prism with PayPal's
    # OpenAPI files behind a small OAuth gateway, a Coinbase Commerce fake);
    # production sets the three base URLs and the credentials.
    # Whole-call deadline: connecting, OAuth, sending and reading included.
    provider_timeout_s: Annotated[float, Field(gt=0, le=limits.PROVIDER_TIMEOUT_S_MAX)] = 10.0
    provider_connect_timeout_s: Annotated[
        float, Field(gt=0, le=limits.PROVIDER_CONNECT_TIMEOUT_S_MAX)
    ] = 3.0
    # Host the local mocks listen on.
    mocks_host: str = "127.0.0.1"

    # Stripe: https://api.stripe.com in production; unset, the local stripe-mock.
    stripe_api_base_url: str | None = None
    # stripe-mock accepts any key that looks like a test-mode secret key.
    stripe_api_key: SecretStr = SecretStr("sk_test_payledger")
    stripe_mock_version: Annotated[str, Field(pattern=r"^v[0-9]+\.[0-9]+\.[0-9]+$")] = "v0.203.0"
    stripe_mock_port: Port = 12111
    stripe_mock_https_port: Port = 12112

    # PayPal: https://api-m.paypal.com in production; unset, the local gateway
    # (OAuth token endpoint + the two Prism mocks behind one base URL).
    paypal_api_base_url: str | None = None
    paypal_client_id: Annotated[str, Field(min_length=1, max_length=128)] = "payledger-dev-client"
    paypal_client_secret: SecretStr = SecretStr("payledger-dev-paypal-secret")
    # PayPal's official OpenAPI files; unset, ../shared/specs/paypal beside the repo.
    paypal_specs_dir: Path | None = None
    prism_version: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")] = "5.14.2"
    paypal_mock_port: Port = 14010  # the gateway: what paypal_api_base_url points at
    paypal_mock_orders_port: Port = 14011  # Prism serving checkout_orders_v2.json
    paypal_mock_payments_port: Port = 14012  # Prism serving payments_payment_v2.json
    # Lifetime of the gateway's access tokens (PayPal's own are about 9 hours).
    paypal_mock_token_ttl_s: Annotated[int, Field(ge=1, le=86_400)] = 32_400

    # Coinbase Commerce: https://api.commerce.coinbase.com in production;
    # unset, the local fake.
    coinbase_api_base_url: str | None = None
    coinbase_api_key: SecretStr = SecretStr("payledger-dev-coinbase-key")
    # The X-CC-Version the adapter sends: the API version its shapes follow.
    coinbase_api_version: Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")] = (
        "2018-03-22"
    )
    coinbase_mock_port: Port = 14020

    # IPFS: checkpoints and leaf bundles go to a Kubo node's HTTP RPC. Unset,
    # the local Kubo (built with `go install` at kubo_version, run offline with
    # its repo under the state dir); set, any Kubo RPC base URL.
    ipfs_api_url: (
        Annotated[str, Field(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*[^\s?#/])?$")] | None
    ) = None
    # Deadline of one RPC call (one block put, one pin, one read).
    ipfs_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    kubo_version: Annotated[str, Field(pattern=r"^v[0-9]+\.[0-9]+\.[0-9]+$")] = "v0.43.0"
    kubo_api_host: str = "127.0.0.1"
    kubo_api_port: Port = 15001

    # Bitcoin timestamps (OpenTimestamps). Direct mode commits each digest in
    # an OP_RETURN output of a transaction the anchoring worker signs and
    # mines on a btcd node in regtest (built with `go install`). The calendar
    # client submits digests to public OpenTimestamps calendars: none by
    # default, as they need the internet.
    btcd_version: Annotated[str, Field(pattern=r"^v[0-9]+\.[0-9]+\.[0-9]+$")] = "v0.26.2"
    btcd_host: str = "127.0.0.1"
    btcd_rpc_port: Port = 18334
    btcd_rpc_user: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "payledger"
    btcd_rpc_password: Annotated[SecretStr, Field(min_length=8)] = SecretStr("payledger-dev-btcd")
    btcd_rpc_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    # Fee of one stamping transaction (about 235 bytes); btcd relays from 1 sat/byte.
    btcd_stamp_fee_sat: Annotated[int, Field(ge=1_000, le=1_000_000)] = 5_000
    ots_direct_enabled: bool = False
    ots_calendar_urls: list[
        Annotated[
            str, Field(pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._/-]*)?$")
        ]
    ] = Field(default_factory=list)
    # How many calendars must accept a digest for the submission to count.
    ots_calendar_quorum: Annotated[int, Field(ge=1, le=16)] = 1
    ots_calendar_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # How often pending calendar proofs are asked for their Bitcoin attestation;
    # calendars commit to Bitcoin every few hours.
    ots_upgrade_interval_s: Annotated[int, Field(ge=1, le=7 * 86_400)] = 3_600

    # Schema registry: the built-in file-backed one unless an external URL is given.
    schema_registry_url: str | None = None

    # Signing keys.
    signer_backend: SignerBackend = SignerBackend.FILE
    producer_name: Annotated[str, Field(min_length=1, max_length=64)] = "payledger"
    signing_key_lifetime_s: Annotated[int, Field(ge=60, le=31 * 24 * 3600)] = 7 * 24 * 3600
    pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    pkcs11_token_label: str = "payledger"
    pkcs11_user_pin: SecretStr = SecretStr("1234")
    pkcs11_so_pin: SecretStr = SecretStr("12345678")
    # Where the master key that wraps customer data keys lives. Unset, it
    # follows signer_backend (an HSM deployment gets an HSM master key without
    # a second switch); set, it is independent, e.g. signing in the HSM while
    # a test node keeps a file master key. Changing it once data keys exist
    # makes them unreadable: each row records the master key id it needs.
    master_key_backend: SignerBackend | None = None

    @field_validator("state_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("projections_schema", "anchoring_schema")
    @classmethod
    def _not_a_system_schema(cls, value: str) -> str:
        if value.startswith("pg_") or value in ("public", "information_schema"):
            raise ValueError("must not be public, information_schema or start with pg_")
        return value

    @field_validator("paypal_specs_dir")
    @classmethod
    def _absolute_or_unset(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("stripe_api_base_url", "paypal_api_base_url", "coinbase_api_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # A typo here would send payment calls somewhere unexpected: refuse
        # anything that is not a plain http(s) base URL, and drop a trailing
        # slash so paths join one way.
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
            raise ValueError("must be an http:// or https:// base URL without query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _ots_consistent(self) -> Settings:
        if self.ots_calendar_urls and self.ots_calendar_quorum > len(self.ots_calendar_urls):
            raise ValueError("ots_calendar_quorum cannot exceed the number of ots_calendar_urls")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError("topic_min_insync_replicas cannot exceed topic_replication_factor")
        if self.kafka_port == self.kafka_controller_port:
            raise ValueError("kafka_port and kafka_controller_port must differ")
        mock_ports = [
            self.stripe_mock_port,
            self.stripe_mock_https_port,
            self.paypal_mock_port,
            self.paypal_mock_orders_port,
            self.paypal_mock_payments_port,
            self.coinbase_mock_port,
        ]
        if len(set(mock_ports)) != len(mock_ports):
            raise ValueError("the provider mock ports must all differ")
        if self.provider_connect_timeout_s > self.provider_timeout_s:
            raise ValueError("provider_connect_timeout_s cannot exceed provider_timeout_s")
        return self

    # Derived values. They are methods, not fields, so they can never disagree
    # with the fields they come from.

    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"{self.kafka_host}:{self.kafka_port}"

    def dsn(self) -> str:
        if self.postgres_dsn is not None:
            return self.postgres_dsn.get_secret_value()
        password = self.postgres_password.get_secret_value()
        return (
            f"postgresql://{self.postgres_user}:{password}@{self.postgres_host}:"
            f"{self.postgres_port}/{self.postgres_db}"
        )

    def effective_master_key_backend(self) -> SignerBackend:
        return self.master_key_backend or self.signer_backend

    def registry_url(self) -> str:
        return self.schema_registry_url or f"http://{self.http_host}:{self.http_port}"

    def stripe_base_url(self) -> str:
        return self.stripe_api_base_url or f"http://{self.mocks_host}:{self.stripe_mock_port}"

    def paypal_base_url(self) -> str:
        return self.paypal_api_base_url or f"http://{self.mocks_host}:{self.paypal_mock_port}"

    def coinbase_base_url(self) -> str:
        return self.coinbase_api_base_url or f"http://{self.mocks_host}:{self.coinbase_mock_port}"

    def paypal_specs_path(self) -> Path:
        # The specs live in the shared folder beside the repo, not in it: they
        # are PayPal's files, kept verbatim under PayPal's licence.
        return self.paypal_specs_dir or _REPO_ROOT.parent / "shared" / "specs" / "paypal"

    @property
    def keys_dir(self) -> Path:
        return self.state_dir / "keys"

    @property
    def registry_dir(self) -> Path:
        return self.state_dir / "registry"

    @property
    def softhsm_dir(self) -> Path:
        return self.state_dir / "softhsm"

    @property
    def softhsm_conf(self) -> Path:
        return self.softhsm_dir / "softhsm2.conf"


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, at the edge of a process; fails fast on bad input."""
    return Settings(**overrides)  # type: ignore[arg-type]
