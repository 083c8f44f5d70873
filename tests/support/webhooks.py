"""Sign webhook deliveries the way each provider does, for tests and the vector builder.

* Stripe: ``Stripe-Signature: t=<t>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``,
  as stripe-python's ``WebhookSignature.generate_signature_header``.
* Coinbase Commerce: ``X-CC-Webhook-Signature: <hex HMAC-SHA256(secret, body)>``.
* PayPal: SHA256withRSA over ``f"{id}|{time}|{webhook_id}|{crc32(body)}"`` with
  the key of a certificate for ``messageverificationcerts.paypal.com``. The
  certificates come from a test PKI (root, intermediate, leaf) made here with
  ``cryptography``, shaped like a public Web PKI chain so that
  ``cryptography.x509.verification`` accepts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PAYPAL_CERT_HOST = "messageverificationcerts.paypal.com"
PAYPAL_CERT_URL = "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77"


def stripe_header(secret: str, timestamp: int, body: bytes, *, extra: tuple[str, ...] = ()) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return ",".join((f"t={timestamp}", f"v1={mac.hexdigest()}", *extra))


def coinbase_header(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def paypal_message(transmission_id: str, time: str, webhook_id: str, body: bytes) -> bytes:
    return f"{transmission_id}|{time}|{webhook_id}|{zlib.crc32(body) & 0xFFFFFFFF}".encode()


def paypal_headers(
    key: rsa.RSAPrivateKey,
    *,
    body: bytes,
    webhook_id: str,
    transmission_id: str,
    time: str,
    cert_url: str = PAYPAL_CERT_URL,
    auth_algo: str = "SHA256withRSA",
    signed_body: bytes | None = None,
) -> dict[str, str]:
    """The five PAYPAL-* headers; ``signed_body`` signs a different body than is sent."""
    message = paypal_message(transmission_id, time, webhook_id, signed_body or body)
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    return {
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-TIME": time,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-AUTH-ALGO": auth_algo,
    }


@dataclass(frozen=True)
class Issued:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "payledger tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_root(common_name: str, *, not_before: datetime, not_after: datetime) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, certificate)


def make_intermediate(
    issuer: Issued, common_name: str, *, not_before: datetime, not_after: datetime
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    certificate = (
        _issued_by(issuer, _name(common_name), public, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(key, certificate)


def make_leaf(
    issuer: Issued,
    dns_name: str = PAYPAL_CERT_HOST,
    *,
    not_before: datetime,
    not_after: datetime,
    key: rsa.RSAPrivateKey | None = None,
) -> Issued:
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    certificate = (
        _issued_by(issuer, _name(dns_name), public, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return Issued(key, certificate)


def chain_pem(*issued: Issued) -> str:
    return "".join(item.pem() for item in issued)


def _issued_by(
    issuer: Issued,
    subject: x509.Name,
    public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    issuer_ski = issuer.certificate.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier
    ).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class PayPalPKI:
    """A trusted root and intermediate, and a PayPal leaf valid around ``now``."""

    root: Issued
    intermediate: Issued
    leaf: Issued

    @classmethod
    def make(cls, now: datetime) -> PayPalPKI:
        root = make_root(
            "Test Root CA",
            not_before=now - timedelta(days=3650),
            not_after=now + timedelta(days=3650),
        )
        intermediate = make_intermediate(
            root,
            "Test TLS CA",
            not_before=now - timedelta(days=1000),
            not_after=now + timedelta(days=1000),
        )
        leaf = make_leaf(
            intermediate, not_before=now - timedelta(days=30), not_after=now + timedelta(days=300)
        )
        return cls(root, intermediate, leaf)

    def chain(self) -> str:
        return chain_pem(self.leaf, self.intermediate)

    def leaf_key(self) -> rsa.RSAPrivateKey:
        assert isinstance(self.leaf.key, rsa.RSAPrivateKey)
        return self.leaf.key
