"""Ed25519 keys held in a PKCS#11 token (SoftHSM2 in development, any HSM in production).

The private key never leaves the token: it is generated there as
non-extractable and sensitive, and every signature is made by the token
(``CKM_EDDSA``). One session is opened per ``Pkcs11Token`` and kept; PKCS#11
sessions are not safe to share between threads, so signing takes a lock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from ledger.errors import ConfigurationError, KeyError_
from ledger.signing import key_id_for

_ED25519_OID = "1.3.101.112"


def _raw_point(ec_point: bytes) -> bytes:
    # Tokens report CKA_EC_POINT for Edwards keys as a DER OCTET STRING
    # (04 20 || 32 bytes); some report the raw 32 bytes. Accept both.
    if len(ec_point) == 34 and ec_point[:2] == b"\x04\x20":
        return ec_point[2:]
    if len(ec_point) == 32:
        return ec_point
    raise KeyError_(f"unexpected EC_POINT encoding of {len(ec_point)} bytes")


def open_session(module: Path, token_label: str, user_pin: str) -> Any:
    """A read-write user session on the token labelled ``token_label``."""
    if not module.exists():
        raise ConfigurationError(f"PKCS#11 module not found: {module}")
    try:
        token = pkcs11.lib(os.fspath(module)).get_token(token_label=token_label)
        try:
            return token.open(user_pin=user_pin, rw=True)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # PKCS#11 login state belongs to the application, not the session:
            # another opener in this process already logged in, and every new
            # session shares that login.
            return token.open(rw=True)
    except (pkcs11.PKCS11Error, pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as error:
        raise ConfigurationError(
            f"cannot open PKCS#11 token {token_label!r} with {module}: {error!r}"
        ) from error


class Pkcs11Token:
    """An open user session on one token; a context manager that closes it."""

    def __init__(self, module: Path, token_label: str, user_pin: str) -> None:
        self._session: Any = open_session(module, token_label, user_pin)
        self.lock = threading.Lock()

    def __enter__(self) -> Pkcs11Token:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            self._session.close()

    def generate_ed25519(self, label: str) -> Pkcs11Signer:
        """Create a persistent, non-extractable Ed25519 key pair on the token."""
        with self.lock:
            parameters = self._session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
                local=True,
            )
            public, private = parameters.generate_keypair(
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                store=True,
                label=label,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
            point = _raw_point(public[Attribute.EC_POINT])
        return Pkcs11Signer(self, private, public, point, label)

    def relabel(self, signer: Pkcs11Signer, label: str) -> Pkcs11Signer:
        """Give both halves of a key pair a new label (CKA_LABEL is modifiable)."""
        with self.lock:
            signer.private_key_object[Attribute.LABEL] = label
            signer.public_key_object[Attribute.LABEL] = label
        return Pkcs11Signer(
            self, signer.private_key_object, signer.public_key_object, signer.public_key, label
        )

    def find_ed25519(self, label: str) -> Pkcs11Signer | None:
        """The key pair with this label, or None when the token has none."""
        with self.lock:
            privates = list(
                self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
                )
            )
            publics = list(
                self._session.get_objects(
                    {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label}
                )
            )
            if not privates or not publics:
                return None
            if len(privates) > 1 or len(publics) > 1:
                raise KeyError_(f"more than one key pair labelled {label!r} on the token")
            point = _raw_point(publics[0][Attribute.EC_POINT])
        return Pkcs11Signer(self, privates[0], publics[0], point, label)

    def load_or_generate_ed25519(self, label: str) -> Pkcs11Signer:
        return self.find_ed25519(label) or self.generate_ed25519(label)


class Pkcs11Signer:
    """A ``Signer`` whose private key stays inside the token."""

    def __init__(
        self,
        token: Pkcs11Token,
        private_key_object: Any,
        public_key_object: Any,
        public_key: bytes,
        label: str,
    ) -> None:
        self._token = token
        self.private_key_object = private_key_object
        self.public_key_object = public_key_object
        self._public_key = public_key
        self._key_id = key_id_for(public_key)
        self.label = label

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        with self._token.lock:
            signature: bytes = self.private_key_object.sign(message, mechanism=Mechanism.EDDSA)
        return signature
