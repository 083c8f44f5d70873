"""Sealing customer personal data, so that deleting one key erases it everywhere.

Personal data (name, email, address) never reaches a topic in clear. It is
sealed with XChaCha20-Poly1305 under a per-customer *data key*; the event
carries only ``SealedData`` (customer ref, data key id, nonce, ciphertext).
Destroying the customer's data key ("crypto-shredding") makes every copy of
that ciphertext unreadable, in every topic, replica and backup, while every
signature, hash and Merkle proof over it still verifies: they cover the
ciphertext, which does not change.

Data keys are stored only *wrapped* by a master key (``MasterKey``): a file
key (``FileMasterKey``, the embedded default) or an AES-256 key generated in
a PKCS#11 token that never leaves it (``Pkcs11MasterKey``). The store of
wrapped keys is ``ingress.customer_keys``; this module is pure crypto.

Binding
-------
The associated data of a sealed record binds its ciphertext to a version
context, the algorithm, the customer ref and the data key id, so a
ciphertext moved to another customer (or relabelled with another key id)
fails to open even if the attacker could also swap keys around. A wrapped
data key is bound to its customer ref the same way, so a row copied to
another customer in the database fails to unwrap.

Customer references
-------------------
``customer_reference`` is SHA-256 over a context string, the merchant id, NUL
and the merchant's own reference, truncated to 128 bits. Not HMAC with a
secret: the reference must be recomputable forever, by us after any key loss
or rotation and by the merchant, so an erasure request that names the
merchant's reference always finds the customer ref. The price is that a ref
is a pseudonym, not anonymous: whoever can read the log and guesses a
low-entropy reference (an email address) can confirm the guess. Merchants
should send their own opaque customer id as the reference, never an email.
The merchant id in the input makes the same reference at two merchants
unlinkable, and the context string keeps the ref from matching a plain
SHA-256 of the reference published anywhere else.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import nacl.bindings
import nacl.exceptions
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from ledger import limits
from ledger.config import Settings, SignerBackend
from ledger.envelope import SealedData
from ledger.errors import ConfigurationError, EncodingError, KeyError_, LedgerError
from ledger.pkcs11 import open_session

ALGORITHM = "XChaCha20-Poly1305"
DATA_KEY_BYTES = 32
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
MASTER_KEY_FILE = "master.key"  # in settings.keys_dir
MASTER_KEY_LABEL = "payledger-master"  # CKA_LABEL of the token's master key
GCM_IV_BYTES = 12
GCM_TAG_BITS = 128

_SEAL_CONTEXT = b"payledger/sealed-data/v1"
_WRAP_CONTEXT = b"payledger/data-key-wrap/v1"
_REF_CONTEXT = b"payledger/customer-ref/v1"
_KEY_ID_CONTEXT = b"payledger/master-key-id/v1"
# First byte of every wrapped key blob: the framing version, so the format can
# change without guessing at old blobs.
_WRAP_V1 = b"\x01"
_CUSTOMER_REF = re.compile(r"^cus_[0-9a-f]{32}$")
_DATA_KEY_ID = re.compile(r"^dk_[0-9a-f]{32}$")
_MERCHANT_ID = re.compile(r"^[a-z0-9_]{3,64}$")  # as ingress/sql/001 checks it
_CREATION_LOCK = ".master-key.lock"


class SealingError(LedgerError):
    """Sealed data or a wrapped key that cannot be opened: tampered, moved or the wrong key.

    The only error ``open_sealed`` and ``MasterKey.unwrap`` raise; the message
    never says which check failed, so it cannot be used as an oracle.
    """


class CustomerErased(LedgerError):
    """The customer's data key was destroyed: their data is never sealed again.

    A forgotten customer keeps their customer ref (it is derived from the
    merchant's reference), so a fresh key under the same ref would silently
    link new personal data to the erased history. New data for that person
    needs a new merchant reference, hence a new customer ref.
    """

    def __init__(self, customer_ref: str) -> None:
        self.customer_ref = customer_ref
        super().__init__(f"customer {customer_ref} was erased; their data is not sealed again")


# Customer references and data keys ---------------------------------------------


def customer_reference(merchant_id: str, reference: str) -> str:
    """Our customer ref for a merchant's customer: ``cus_`` + 32 hex, no personal data in clear."""
    if not _MERCHANT_ID.match(merchant_id):
        raise EncodingError("merchant_id must be 3 to 64 of a-z, 0-9 and _")
    if not 0 < len(reference) <= limits.CUSTOMER_REFERENCE_CHARS_MAX:
        raise EncodingError(
            f"a customer reference is 1 to {limits.CUSTOMER_REFERENCE_CHARS_MAX} characters"
        )
    # merchant_id cannot contain NUL, so the first NUL separates the two
    # unambiguously whatever the reference holds.
    digest = hashlib.sha256(
        _REF_CONTEXT + b"\x00" + merchant_id.encode() + b"\x00" + reference.encode()
    )
    return "cus_" + digest.hexdigest()[:32]


def check_customer_ref(customer_ref: str) -> str:
    """``customer_ref`` itself when it is one ``customer_reference`` could return."""
    if not _CUSTOMER_REF.match(customer_ref):
        raise EncodingError("a customer ref is cus_ followed by 32 lowercase hex digits")
    return customer_ref


def new_data_key() -> tuple[str, bytes]:
    """A fresh data key and its id. The id is random, never derived from the key."""
    return "dk_" + os.urandom(16).hex(), os.urandom(DATA_KEY_BYTES)


def _associated_data(context: bytes, *fields: str) -> bytes:
    # Length-prefixed, so no two different field lists encode the same bytes.
    parts = [context]
    for value in fields:
        encoded = value.encode()
        parts.append(len(encoded).to_bytes(4, "big"))
        parts.append(encoded)
    return b"".join(parts)


# Sealing ------------------------------------------------------------------------


def seal(key: bytes, plaintext: bytes, customer_ref: str, *, data_key_id: str) -> SealedData:
    """Encrypt ``plaintext`` for one customer under their data key, with a random nonce."""
    check_customer_ref(customer_ref)
    if not _DATA_KEY_ID.match(data_key_id):
        raise EncodingError("a data key id is dk_ followed by 32 lowercase hex digits")
    if len(key) != DATA_KEY_BYTES:
        raise EncodingError(f"a data key is {DATA_KEY_BYTES} bytes")
    if len(plaintext) > limits.SEALED_PLAINTEXT_BYTES_MAX:
        raise EncodingError(
            f"sealed plaintext longer than {limits.SEALED_PLAINTEXT_BYTES_MAX} bytes"
        )
    # 192-bit random nonces: collisions are negligible for any number of
    # records under one key, so no counter has to be kept anywhere.
    nonce = os.urandom(NONCE_BYTES)
    ciphertext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext,
        _associated_data(_SEAL_CONTEXT, ALGORITHM, customer_ref, data_key_id),
        nonce,
        key,
    )
    return SealedData(
        customer_ref=customer_ref,
        data_key_id=data_key_id,
        algorithm=ALGORITHM,
        nonce=nonce,
        ciphertext=ciphertext,
    )


def open_sealed(key: bytes, sealed: SealedData) -> bytes:
    """The plaintext of ``sealed``, or ``SealingError`` whatever is wrong with it."""
    if (
        sealed.algorithm != ALGORITHM
        or len(sealed.nonce) != NONCE_BYTES
        or len(key) != DATA_KEY_BYTES
        or len(sealed.ciphertext) < TAG_BYTES
    ):
        raise SealingError("sealed data cannot be opened")
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed.ciphertext,
            _associated_data(
                _SEAL_CONTEXT, sealed.algorithm, sealed.customer_ref, sealed.data_key_id
            ),
            sealed.nonce,
            key,
        )
    except (nacl.exceptions.CryptoError, TypeError, ValueError) as error:
        raise SealingError("sealed data cannot be opened") from error
    return plaintext


# Master keys --------------------------------------------------------------------


class MasterKey(Protocol):
    """Wraps data keys for storage; the unwrapped master key is never handed out."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, data_key: bytes, customer_ref: str) -> bytes: ...

    def unwrap(self, blob: bytes, customer_ref: str) -> bytes:
        """The data key, or ``SealingError`` if the blob is not ours for this customer."""
        ...

    def close(self) -> None: ...


class FileMasterKey:
    """A 32-byte key in a file readable by its owner only; wraps with XChaCha20-Poly1305.

    Blob: ``01 || nonce (24) || ciphertext of the data key (32) || tag (16)``.
    """

    __slots__ = ("_key", "_key_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != DATA_KEY_BYTES:
            raise ConfigurationError(f"a master key is {DATA_KEY_BYTES} bytes")
        self._key = key
        # A fingerprint of the key itself: a replaced key file shows up as a
        # different id, which the store reports instead of failing to unwrap.
        self._key_id = "mk-file-" + hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"FileMasterKey({self._key_id})"

    @classmethod
    def load_or_create(cls, path: Path) -> FileMasterKey:
        """Load the key at ``path``; create it (0600) if there is none, exactly once.

        Two processes starting at once on a fresh node must not each make a
        key and overwrite the other's: data keys wrapped by the loser would
        be unreadable forever. The new key is written to a private temporary
        file and hard-linked into place, which fails if the path exists, so
        the first writer wins and everyone else loads its key.
        """
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                os.write(descriptor, os.urandom(DATA_KEY_BYTES))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process won; use its key
            except OSError as error:
                raise ConfigurationError(f"cannot create master key {path}: {error}") from error
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)
        return cls._load(path)

    @classmethod
    def _load(cls, path: Path) -> FileMasterKey:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            mode = os.fstat(descriptor).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigurationError(
                    f"master key {path} is accessible to group or others "
                    f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
                )
            key = os.read(descriptor, DATA_KEY_BYTES + 1)
        finally:
            os.close(descriptor)
        if len(key) != DATA_KEY_BYTES:
            raise ConfigurationError(f"master key {path} is not {DATA_KEY_BYTES} bytes")
        return cls(key)

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, data_key: bytes, customer_ref: str) -> bytes:
        if len(data_key) != DATA_KEY_BYTES:
            raise EncodingError(f"a data key is {DATA_KEY_BYTES} bytes")
        nonce = os.urandom(NONCE_BYTES)
        wrapped: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            data_key, _associated_data(_WRAP_CONTEXT, customer_ref), nonce, self._key
        )
        return _WRAP_V1 + nonce + wrapped

    def unwrap(self, blob: bytes, customer_ref: str) -> bytes:
        if len(blob) != 1 + NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES or blob[:1] != _WRAP_V1:
            raise SealingError("wrapped data key cannot be opened")
        nonce, wrapped = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        try:
            data_key: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                wrapped, _associated_data(_WRAP_CONTEXT, customer_ref), nonce, self._key
            )
        except (nacl.exceptions.CryptoError, TypeError, ValueError) as error:
            raise SealingError("wrapped data key cannot be opened") from error
        return data_key

    def close(self) -> None:
        pass


class Pkcs11MasterKey:
    """An AES-256 key made inside a PKCS#11 token; the token does every wrap and unwrap.

    The key is generated by the token as sensitive and non-extractable, so
    no one, including payledger, can read it out. Wrapping is AES-GCM
    (``CKM_AES_GCM``) with a random 96-bit IV and the customer ref in the
    additional authenticated data; SoftHSM2 2.6 through python-pkcs11 0.10
    supports it, so the AES key-wrap-with-padding fallback is not needed.
    Random IVs are safe for up to 2**32 wraps under one key (NIST SP
    800-38D), one per customer: far beyond any one deployment.

    Blob: ``01 || IV (12) || ciphertext of the data key (32) || tag (16)``.
    The key id is ``mk-pkcs11-`` + the hex of the key's random CKA_ID.

    Sessions: PKCS#11 login is per process, not per session. This opens its
    own session and logs in, or, when the process is already logged in (the
    KeyStore's token session), uses that login without logging in again, and
    then does not log the process out when it closes. The KeyStore's
    ``Pkcs11Token`` always logs in itself, so in one process open the
    KeyStore's token before the master key. (python-pkcs11 leaves the session
    of a refused login open: one handle per ``open`` in a logged-in process.)
    """

    def __init__(self, session: Any, key_object: Any, key_id: str) -> None:
        self._session = session
        self._key = key_object
        self._key_id = key_id
        # A PKCS#11 session must not be used by two threads at once.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Pkcs11MasterKey({self._key_id})"

    def __enter__(self) -> Pkcs11MasterKey:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def open(cls, settings: Settings, *, label: str = MASTER_KEY_LABEL) -> Pkcs11MasterKey:
        """Find the master key on the settings' token, generating it the first time."""
        os.environ.setdefault("SOFTHSM2_CONF", os.fspath(settings.softhsm_conf))
        session = open_session(
            settings.pkcs11_module,
            settings.pkcs11_token_label,
            settings.pkcs11_user_pin.get_secret_value(),
        )
        try:
            # The lock stops two local processes from each generating a key on
            # first use; with a shared network HSM, create the key once before
            # starting several nodes (``payledger gdpr master-key``).
            with _creation_lock(settings.keys_dir):
                key_object = _find_secret_key(session, label)
                if key_object is None:
                    key_object = _generate_master_key(session, label)
            return cls(session, key_object, _pkcs11_key_id(key_object))
        except BaseException:
            session.close()
            raise

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def key_object(self) -> Any:
        """The token's key object (its attributes are readable; its value is not)."""
        return self._key

    def wrap(self, data_key: bytes, customer_ref: str) -> bytes:
        if len(data_key) != DATA_KEY_BYTES:
            raise EncodingError(f"a data key is {DATA_KEY_BYTES} bytes")
        iv = os.urandom(GCM_IV_BYTES)
        parameters = GCMParams(iv, _associated_data(_WRAP_CONTEXT, customer_ref), GCM_TAG_BITS)
        try:
            with self._lock:
                wrapped: bytes = self._key.encrypt(
                    data_key, mechanism=Mechanism.AES_GCM, mechanism_param=parameters
                )
        except pkcs11.PKCS11Error as error:
            raise KeyError_(f"the token could not wrap a data key: {error!r}") from error
        return _WRAP_V1 + iv + wrapped

    def unwrap(self, blob: bytes, customer_ref: str) -> bytes:
        expected = 1 + GCM_IV_BYTES + DATA_KEY_BYTES + GCM_TAG_BITS // 8
        if len(blob) != expected or blob[:1] != _WRAP_V1:
            raise SealingError("wrapped data key cannot be opened")
        iv, wrapped = blob[1 : 1 + GCM_IV_BYTES], blob[1 + GCM_IV_BYTES :]
        parameters = GCMParams(iv, _associated_data(_WRAP_CONTEXT, customer_ref), GCM_TAG_BITS)
        try:
            with self._lock:
                data_key: bytes = self._key.decrypt(
                    wrapped, mechanism=Mechanism.AES_GCM, mechanism_param=parameters
                )
        except pkcs11.PKCS11Error as error:
            # SoftHSM2 reports a failed GCM tag check as a general error, so a
            # token fault and a forgery look alike here; both mean "cannot open".
            raise SealingError("wrapped data key cannot be opened") from error
        if len(data_key) != DATA_KEY_BYTES:
            raise SealingError("wrapped data key cannot be opened")
        return data_key

    def close(self) -> None:
        with self._lock:
            self._session.close()


def _find_secret_key(session: Any, label: str) -> Any:
    found = list(
        session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})
    )
    if not found:
        return None
    if len(found) > 1:
        raise KeyError_(f"more than one secret key labelled {label!r} on the token")
    key = found[0]
    # A key someone else made under our label must meet the same bar as ours.
    if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
        raise KeyError_(f"the token's key {label!r} is extractable or not sensitive; refusing it")
    return key


def _generate_master_key(session: Any, label: str) -> Any:
    return session.generate_key(
        KeyType.AES,
        256,
        label=label,
        id=os.urandom(16),
        store=True,
        template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.PRIVATE: True,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            # It encrypts data keys given to it; nothing else.
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        },
    )


def _pkcs11_key_id(key_object: Any) -> str:
    identifier = key_object[Attribute.ID]
    if not identifier:
        raise KeyError_("the token's master key has no CKA_ID")
    return "mk-pkcs11-" + bytes(identifier).hex()


@contextmanager
def _creation_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (directory / _CREATION_LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_master_key(settings: Settings) -> MasterKey:
    """The master key of ``settings.effective_master_key_backend()``; ``close()`` it when done."""
    if settings.effective_master_key_backend() is SignerBackend.PKCS11:
        return Pkcs11MasterKey.open(settings)
    return FileMasterKey.load_or_create(settings.keys_dir / MASTER_KEY_FILE)
