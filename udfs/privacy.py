"""Pseudonymous shoppers: a keyed HMAC-SHA256 of the user id, and the key it needs.

With ``privacy.pseudonymize`` on, the job replaces every user id by its pseudonym
where the id is first read (``EventEnvelope.java`` for the key, :func:`udfs.events.decode_event`
for the event), so state, outputs, late events, dead letters and logs only ever see
the pseudonym. The storefront calls :func:`pseudonym` (or ``streamrec pseudonym ID``)
with the same key to find a shopper's lists.

The rule, which ``Pseudonyms.java`` implements too (``tests/integration/test_envelope.py`` checks
both agree): the pseudonym of an id is the lowercase hex of
``HMAC-SHA256(key, UTF-8 of str(canonical_id(id)))``, so ``42`` and ``"42"`` get one
pseudonym. The key is the bytes of the key file, or the UTF-8 bytes of the key
variable, with trailing ASCII whitespace (space, tab, CR, LF) removed, at least
:data:`MIN_KEY_BYTES` long. It is never a config value, never pickled and never
printed: a :class:`PseudonymKey` shows only its source and a key id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

from udfs.config import ConfigError, PrivacyConfig
from udfs.events import canonical_id

# 256 bits: as long as the HMAC-SHA256 output, so the key is never the weak part.
MIN_KEY_BYTES = 32
_TRAILING_WHITESPACE = b" \t\r\n"
# The key id is an HMAC of this fixed message: it names a key in logs without revealing it.
_KEY_ID_MESSAGE = b"streamrec key id"


def pseudonym(user_id: Any, key: bytes) -> str:
    """The shopper's pseudonym under ``key``: what the job writes for them as ``user_id`` and Kafka key.

    ``user_id`` as the storefront knows it (int or str); it is made canonical first
    (:func:`udfs.events.canonical_id`), so an id the job would dead-letter raises
    :class:`udfs.events.InvalidId` here.
    """
    canonical = str(canonical_id(user_id, "user_id"))
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """12 hex digits that tell keys apart (for logs and rotation), and reveal nothing about the key."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:12]


class PseudonymKey:
    """The key, read from its source; its repr and logs show the source and key id only.

    Pickling is refused: the job's functions travel pickled in the job graph, and the
    key must not travel with them; each worker reads it at ``open()``.
    """

    __slots__ = ("_key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(f"{source}: the pseudonym key has {len(key)} bytes, at least {MIN_KEY_BYTES} needed "
                              "(e.g. `openssl rand -hex 32`)")
        self._key = key
        self.source = source

    @property
    def key_id(self) -> str:
        return key_id(self._key)

    def pseudonym(self, user_id: Any) -> str:
        return pseudonym(user_id, self._key)

    def __repr__(self) -> str:
        return f"PseudonymKey(source={self.source!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a PseudonymKey is never pickled: read it where it is used (load_key)")


def strip_key(raw: bytes) -> bytes:
    """The key in a file or variable: its bytes without trailing ASCII whitespace (a final newline)."""
    return raw.rstrip(_TRAILING_WHITESPACE)


def load_key(privacy: PrivacyConfig, environ: Mapping[str, str] | None = None) -> PseudonymKey:
    """The key from ``privacy.key_file`` or ``privacy.key_env``; errors name the source, never the key."""
    env = os.environ if environ is None else environ
    if privacy.key_file:
        source = f"privacy.key_file ({privacy.key_file})"
        try:
            raw = Path(privacy.key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the pseudonym key: {exc.strerror}") from None
    elif privacy.key_env:
        source = f"privacy.key_env (${privacy.key_env})"
        if privacy.key_env not in env:
            raise ConfigError(f"{source}: environment variable {privacy.key_env!r} is not set")
        raw = env[privacy.key_env].encode("utf-8")
    else:
        raise ConfigError("privacy.key_file or privacy.key_env must say where the pseudonym key is")
    return PseudonymKey(strip_key(raw), source)


def redact_reason(reason: str) -> str:
    """A dead-letter reason without its detail: the code and field (``out_of_range:user_id``).

    The detail may quote the rejected id (an integer outside int64, say), which is the raw id.
    """
    return reason.split(": ", 1)[0]
