"""PayPal's webhook signing certificate: where it may come from, and when it is trusted.

A PayPal delivery names the certificate that verifies it (``PAYPAL-CERT-URL``).
The sender chooses that URL, so it is the attack surface: a forger would point
it at a certificate of their own. Three independent checks stop that.

1. **Where**: only ``https://`` on exactly one of ``CERT_HOSTS`` (PayPal's live
   and sandbox API hosts), on the default port, with no user info, query or
   fragment, and a path of the form ``/v1/notifications/certs/<id>``. Host
   names are compared whole, so ``api.paypal.com.evil.com``,
   ``evil.com#@api.paypal.com`` and ``api.paypal.com:8443`` all fail. The
   fetch follows no redirects.
2. **Who**: the certificate chain must verify, at the delivery's
   transmission time, up to a root in the trust store (by default certifi's
   Mozilla roots; tests inject their own CA), under the Web PKI rules of
   ``cryptography.x509.verification`` (validity, key usage, serverAuth, chain
   depth, key sizes).
3. **For whom**: the leaf must name a host under ``.paypal.com`` in its
   subjectAltName (the Web PKI ignores the subject CN): a valid certificate
   for any other domain, however well chained, is refused.

Revocation is not checked: ``cryptography`` has no CRL or OCSP client, and
PayPal's own SDKs do not check it either. The chain is cached per URL
(bounded, with a TTL) but verified again for every delivery.
"""

from __future__ import annotations

import asyncio
import functools
import re
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import httpx
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from ingress.webhooks.errors import WebhookVerificationError
from ledger import limits
from ledger.envelope import utc_now

CERT_HOSTS = frozenset(
    {"api.paypal.com", "api-m.paypal.com", "api.sandbox.paypal.com", "api-m.sandbox.paypal.com"}
)
_CERT_PATH = re.compile(r"^/v1/notifications/certs/[A-Za-z0-9_-]{1,128}$")
PAYPAL_DOMAIN_SUFFIX = ".paypal.com"
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----", re.DOTALL)

# Fetch a certificate URL and return the response body; raises WebhookVerificationError.
Fetch = Callable[[str], Awaitable[bytes]]


def check_cert_url(url: str) -> str:
    """The URL, normalized, when PayPal's certificate may be fetched from it; else the error."""
    if len(url) > limits.PAYPAL_CERT_URL_CHARS_MAX or not url.isascii():
        raise WebhookVerificationError("bad-cert-url: too long or not ASCII")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise WebhookVerificationError("bad-cert-url: unparseable") from None
    if parts.scheme != "https":
        raise WebhookVerificationError("bad-cert-url: not https")
    # netloc is everything between "//" and the path: comparing it whole
    # rejects user info and ports without trusting the parser's split of them.
    host = parts.netloc.lower()
    if host not in CERT_HOSTS:
        raise WebhookVerificationError("bad-cert-url: not a PayPal certificate host")
    if parts.query or parts.fragment or "#" in url or "?" in url:
        raise WebhookVerificationError("bad-cert-url: query or fragment")
    if not _CERT_PATH.match(parts.path):
        raise WebhookVerificationError("bad-cert-url: not a certificate path")
    return f"https://{host}{parts.path}"


async def fetch_https(url: str) -> bytes:
    """GET ``url`` within the time and size limits; no redirects, TLS verified."""
    timeout = httpx.Timeout(limits.PAYPAL_CERT_FETCH_TIMEOUT_S)
    try:
        async with (
            asyncio.timeout(limits.PAYPAL_CERT_FETCH_TIMEOUT_S),
            httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client,
            client.stream("GET", url) as response,
        ):
            status = response.status_code
            if status >= 500 or status == 429:
                # PayPal's trouble, not the delivery's: answer 503 so it is redelivered.
                raise WebhookVerificationError(f"cert-unavailable: HTTP {status}", retryable=True)
            if status != 200:
                # No such certificate (or a redirect, which is never followed):
                # the delivery names a certificate PayPal does not serve.
                raise WebhookVerificationError(f"cert-not-found: HTTP {status}")
            received = bytearray()
            async for chunk in response.aiter_bytes():
                received.extend(chunk)
                if len(received) > limits.PAYPAL_CERT_BYTES_MAX:
                    raise WebhookVerificationError("bad-cert: response too large")
            return bytes(received)
    except (httpx.HTTPError, TimeoutError, OSError) as error:
        raise WebhookVerificationError(
            f"cert-unavailable: {type(error).__name__}", retryable=True
        ) from None


@functools.cache
def default_trust_store() -> Store:
    """certifi's Mozilla roots, loaded on first use (not at import: it parses ~150 certificates).

    A root that ``cryptography`` only parses with a deprecation warning (a
    legacy root with a non-positive serial number) is left out: no current
    CA issues under it, and a future ``cryptography`` will refuse it anyway.
    """
    roots = []
    for block in _PEM_BLOCK.findall(Path(certifi.where()).read_bytes()):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            try:
                roots.append(x509.load_pem_x509_certificate(block))
            except (CryptographyDeprecationWarning, ValueError):
                continue
    return Store(roots)


def parse_chain(data: bytes) -> tuple[x509.Certificate, ...]:
    """PEM certificates, leaf first, within the chain-length limit."""
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise WebhookVerificationError("bad-cert: not PEM certificates") from None
    if not chain or len(chain) > limits.PAYPAL_CERT_CHAIN_CERTS_MAX:
        raise WebhookVerificationError("bad-cert: empty or too long a chain")
    return tuple(chain)


def paypal_names(certificate: x509.Certificate) -> list[str]:
    """The subjectAltName DNS names of ``certificate`` under ``.paypal.com``, wildcards excluded."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    names = san.value.get_values_for_type(x509.DNSName)
    return [
        name.lower()
        for name in names
        if name.lower().endswith(PAYPAL_DOMAIN_SUFFIX) and "*" not in name
    ]


def verified_leaf(
    chain: Sequence[x509.Certificate], trust_store: Store, at: datetime
) -> x509.Certificate:
    """The leaf of ``chain`` when it chains to ``trust_store`` at ``at`` and names a PayPal host."""
    leaf, intermediates = chain[0], list(chain[1:])
    names = paypal_names(leaf)
    if not names:
        raise WebhookVerificationError("cert-not-paypal: no .paypal.com subjectAltName")
    detail = ""
    for name in names:
        try:
            verifier = (
                PolicyBuilder()
                .store(trust_store)
                .time(at)
                .build_server_verifier(x509.DNSName(name))
            )
            verifier.verify(leaf, intermediates)
        except (VerificationError, ValueError) as error:
            detail = str(error)[:200]
            continue
        return leaf
    raise WebhookVerificationError(f"cert-untrusted: {detail}")


class PayPalCertificates:
    """Fetches, caches and verifies PayPal's signing certificates.

    ``fetch`` and ``trust_store`` are injectable: tests serve their own chain
    from their own CA. The cache holds parsed chains per URL, never a
    verdict, so a chain is checked against the trust store and the
    transmission time of every delivery that uses it.
    """

    def __init__(
        self,
        *,
        fetch: Fetch = fetch_https,
        trust_store: Store | None = None,
        clock: Callable[[], datetime] = utc_now,
        ttl_s: float = limits.PAYPAL_CERT_CACHE_TTL_S,
        entries_max: int = limits.PAYPAL_CERT_CACHE_ENTRIES_MAX,
    ) -> None:
        self._fetch = fetch
        self._trust_store = trust_store
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_s)
        self._entries_max = entries_max
        self._cache: OrderedDict[str, tuple[datetime, tuple[x509.Certificate, ...]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def leaf(self, url: str, *, at: datetime) -> x509.Certificate:
        """The verified leaf certificate published at ``url``, valid at ``at``."""
        canonical = check_cert_url(url)
        chain = await self._chain(canonical)
        trust_store = self._trust_store
        if trust_store is None:
            trust_store = default_trust_store()
        return verified_leaf(chain, trust_store, at)

    async def _chain(self, url: str) -> tuple[x509.Certificate, ...]:
        now = self._clock()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(url)
            return cached[1]
        chain = parse_chain(await self._fetch(url))
        self._cache[url] = (now + self._ttl, chain)
        self._cache.move_to_end(url)
        while len(self._cache) > self._entries_max:
            self._cache.popitem(last=False)
        return chain
