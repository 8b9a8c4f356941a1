"""Buyer integration secrets (auth credentials, signing keys) sealed for config events.

AES-256-GCM under a platform config key chosen by id (``LX_PLATFORM_CONFIG_KEYS``,
"id:base64key" comma-separated, the first seals). The key id is bound as associated
data, so a ciphertext cannot be passed off under another key. Rotation: add a new key
first in the list (admin then seals new secrets with it; old ones still open), re-seal
every stored secret (``reseal``), then drop the old key.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lx_schemas.integration import SealedSecret

_NONCE_BYTES = 12
# Development-only config key; production refuses it (PlatformSettings).
DEV_CONFIG_KEY = base64.b64encode(b"lx-development-config-key-32byte").decode()
DEV_CONFIG_KEYS = f"devcfg1:{DEV_CONFIG_KEY}"


class SecretsError(ValueError):
    """A sealed secret names a key this process does not have, or was tampered with."""


class ConfigKeys:
    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise ValueError(f"current config key {current!r} is not among the keys")
        for kid, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"config key {kid!r} must be 32 bytes")
        self._keys = keys
        self.current = current

    @classmethod
    def parse(cls, spec: str) -> ConfigKeys:
        """From ``"id:base64key,id2:base64key2"``; the first one seals."""
        pairs = [p.strip().split(":", 1) for p in spec.split(",") if p.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError("config keys must read 'id:base64key[,id:base64key...]'")
        keys = {kid.strip(): base64.b64decode(b64) for kid, b64 in pairs}
        return cls(keys, pairs[0][0].strip())

    def seal(self, plaintext: str) -> SealedSecret:
        nonce = os.urandom(_NONCE_BYTES)
        ct = AESGCM(self._keys[self.current]).encrypt(
            nonce, plaintext.encode(), self.current.encode()
        )
        return SealedSecret(
            key_id=self.current,
            nonce=base64.b64encode(nonce).decode(),
            ciphertext=base64.b64encode(ct).decode(),
        )

    def open(self, sealed: SealedSecret) -> str:
        key = self._keys.get(sealed.key_id)
        if key is None:
            raise SecretsError(f"no config key {sealed.key_id!r} (rotated out?)")
        try:
            plaintext = AESGCM(key).decrypt(
                base64.b64decode(sealed.nonce),
                base64.b64decode(sealed.ciphertext),
                sealed.key_id.encode(),
            )
        except Exception as exc:  # InvalidTag, bad base64
            raise SecretsError(f"sealed secret does not open under {sealed.key_id!r}") from exc
        return plaintext.decode()

    def reseal(self, sealed: SealedSecret) -> SealedSecret:
        """The same secret under the current key (rotation); unchanged if already there."""
        if sealed.key_id == self.current:
            return sealed
        return self.seal(self.open(sealed))
