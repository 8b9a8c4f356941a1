"""Envelope encryption of PII: a data key per lead, wrapped by a key-encryption key.

AES-256-GCM from ``cryptography``; every ciphertext names the key that opens it.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lx_schemas.events import SealedFields

DATA_KEY_BYTES = 32
_NONCE_BYTES = 12


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def seal_fields(data_key: bytes, key_id: uuid.UUID, fields: dict[str, Any]) -> SealedFields:
    """Encrypt ``fields`` as one JSON document; the key id is bound as associated data."""
    nonce = os.urandom(_NONCE_BYTES)
    plaintext = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, key_id.bytes)
    return SealedFields(
        key_id=key_id,
        nonce=_b64(nonce),
        ciphertext=_b64(ciphertext),
        field_names=tuple(sorted(fields)),
    )


def open_fields(data_key: bytes, sealed: SealedFields) -> dict[str, Any]:
    plaintext = AESGCM(data_key).decrypt(
        base64.b64decode(sealed.nonce), base64.b64decode(sealed.ciphertext), sealed.key_id.bytes
    )
    result: dict[str, Any] = json.loads(plaintext)
    return result


def seal_bytes(data_key: bytes, key_id: uuid.UUID, plaintext: bytes) -> bytes:
    """For stored blobs (delivery request/response logs): nonce + ciphertext."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, key_id.bytes)


def open_bytes(data_key: bytes, key_id: uuid.UUID, blob: bytes) -> bytes:
    return AESGCM(data_key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], key_id.bytes)


class KeyWrapper:
    """Wraps data keys with a key-encryption key (KEK) that has an id.

    Wrapped form: ``kek_id`` + ``:`` + base64(nonce + ciphertext). Rotation re-wraps
    data keys under a new KEK id; old ids stay readable while listed.
    """

    def __init__(self, keks: dict[str, bytes], current: str) -> None:
        if current not in keks:
            raise ValueError(f"current KEK {current!r} is not among the keys")
        for kid, key in keks.items():
            if len(key) != 32 or ":" in kid:
                raise ValueError(f"KEK {kid!r} must be 32 bytes with no ':' in its id")
        self._keks = keks
        self.current = current

    def wrap(self, data_key: bytes) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        ct = AESGCM(self._keks[self.current]).encrypt(nonce, data_key, self.current.encode())
        return f"{self.current}:{_b64(nonce + ct)}"

    def unwrap(self, wrapped: str) -> bytes:
        kid, _, blob = wrapped.partition(":")
        raw = base64.b64decode(blob)
        return AESGCM(self._keks[kid]).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], kid.encode())
