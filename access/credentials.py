"""The `authorization` header, read as the RFCs say, and credentials checked at a bounded cost.

access/auth.py asks three things of this file:

- **What a header says.** `authorization: Basic base64(name:password)`
  (RFC 7617) or `Bearer <token>` (RFC 6750). The scheme is any case
  (`basic`, `BASIC`), spaces around and between its parts are allowed
  (`Basic  x`, a trailing space), and a password is UTF-8 (Latin-1 if its
  bytes are not UTF-8: older clients send it so).
- **Was this header checked already?** `CheckedHeaders` remembers, for
  CHECKED_TTL_S, the headers whose password was right, so a client that
  calls again (every `ListUsers`, every reconnect) does not pay a password
  hash each time. It keeps neither the header nor the password: only an
  HMAC of the header under a random key made at start-up and never shown,
  which reveals nothing about the password, even to someone reading memory.
- **How many hashes at once.** scrypt takes ~16 MiB and ~50 ms: `HashSlots`
  lets HASHES_AT_ONCE run at a time; a check that waits longer than
  HASH_WAIT_S for its turn is answered "busy" (the caller retries).
"""

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict

CHECKED_TTL_S = 60.0  # a header whose password was right skips the hash this long
CHECKED_MAX = 10_000  # headers remembered at most (the oldest go first)
HASHES_AT_ONCE = 2  # password hashes running at once (~16 MiB each)
HASH_WAIT_S = 5.0  # a check waiting longer than this for its turn is refused as busy

# RFC 7235: auth-scheme is a token; then 1*SP and the credentials; OWS around.
_HEADER = re.compile(r"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]+(.*?))?[ \t]*")


class Busy(Exception):
    """Every hashing slot stayed taken for HASH_WAIT_S: try again shortly."""


def authorization(metadata) -> str:
    """The `authorization` value among a call's metadata, or ""."""
    return next((value for key, value in metadata or () if key == "authorization"), "")


def credentials(header: str, scheme: str) -> str | None:
    """What follows `scheme` (any case) in `header`, or None if it is another scheme."""
    parts = _HEADER.fullmatch(header)
    if parts is None or parts[1].lower() != scheme.lower():
        return None
    return parts[2] or ""


def basic_pair(header: str) -> tuple[str, str] | None:
    """ "Basic base64(name:password)" -> (name, password), or None if it is not that."""
    encoded = credentials(header, "basic")
    try:
        raw = base64.b64decode(encoded or "", validate=True)
    except binascii.Error:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # every byte is a character: never fails
    name, colon, password = text.partition(":")
    return (name, password) if colon and encoded else None


class CheckedHeaders:
    """Headers whose credentials were right, kept CHECKED_TTL_S as an HMAC under a secret key."""

    def __init__(self, ttl_s: float = CHECKED_TTL_S, clock=time.monotonic):
        self._key = secrets.token_bytes(32)  # this process's only: the HMACs mean nothing outside
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()  # guards _until (any pool thread)
        self._until: OrderedDict[bytes, float] = OrderedDict()  # HMAC -> expiry, oldest first

    def known(self, header: str) -> bool:
        """Was `header` found right less than `ttl_s` ago (and not forgotten since)?"""
        mark, now = self._mark(header), self._clock()
        with self._lock:
            until = self._until.get(mark)
            if until is not None and until <= now:
                del self._until[mark]
            return until is not None and until > now

    def remember(self, header: str) -> None:
        mark = self._mark(header)
        with self._lock:
            self._until.pop(mark, None)
            self._until[mark] = self._clock() + self._ttl_s
            while len(self._until) > CHECKED_MAX:
                self._until.popitem(last=False)

    def forget_all(self) -> None:
        """The accounts changed: every header is checked again."""
        with self._lock:
            self._until.clear()

    def _mark(self, header: str) -> bytes:
        return hmac.new(self._key, header.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


class HashSlots:
    """At most `count` password hashes at once; `with slots:` waits up to HASH_WAIT_S."""

    def __init__(self, count: int = HASHES_AT_ONCE, wait_s: float = HASH_WAIT_S):
        self._slots = threading.BoundedSemaphore(count)
        self._wait_s = wait_s

    def __enter__(self):
        if not self._slots.acquire(timeout=self._wait_s):
            raise Busy()
        return self

    def __exit__(self, *exc) -> None:
        self._slots.release()
