"""Who may talk to us: the credentials a call must carry, checked before any handler runs.

server.py puts one of these in front of the servicer, as a gRPC server
interceptor, and hands the same object to the servicer (session.py) for
the one check only a join can make:

- `Anyone` (the default, a sandbox to learn in): every call goes through,
  any free name may be joined. A null object, so the open path has no
  "is auth on?" branches.
- `Guard(SharedToken(...))` (`--token`): every guarded call must carry
  call metadata `authorization: Bearer <token>`, compared in constant
  time. The token says "one of us", not who.
- `Guard(Accounts(...))` (`--users PATH`): `authorization: Basic
  base64(name:password)`, checked against a file of `name:hash` lines;
  the joined name must then be the signed-in one (PERMISSION_DENIED).

    call --> [StreamsPerAddress] --> [Guard: open method? credentials?] --> handler
                                          | no: UNAUTHENTICATED, before any handler runs

Open methods: `HealthCheck`, `grpc.health.v1` and reflection (load
balancers and tools probe them). Everything else is guarded, so an rpc
added later is closed until someone opens it on purpose.

Guessing: every check takes a token from the caller's address's bucket
and a good one gives it back, so only failures count: FAILURE_BURST at
once, then FAILURES_PER_MINUTE. Past that the address is refused at once
with RESOURCE_EXHAUSTED, right credentials or not, without a check.

The users file (access/users.py) is re-read when it changes (its mtime, size or
inode, looked at on each check), so `python server.py add-user` takes
effect on the next call without a restart or a signal.

NOTE: secrets never leave this module: no log line, no error detail and no
exception carries a token, a password or a name that failed to sign in (a
password typed into the name field is a classic leak).
"""

import base64
import binascii
import hmac
import logging
import math
from pathlib import Path

import grpc

import metrics
from access.caps import peer_address, rewrapped
from access.users import NOBODY_HASH, UsersFileError, read_users, verify_password
from ratelimit import Buckets

log = logging.getLogger("server")

OPEN_METHODS = frozenset({"/chat.ChatService/HealthCheck"})
OPEN_SERVICES = (  # every method of these services is open
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
FAILURE_BURST = 5  # failed sign-ins an address may make at once ...
FAILURES_PER_MINUTE = 5  # ... then this many a minute; beyond, refused without a check

# -- the authorization header ------------------------------------------------------


def authorization(metadata) -> str:
    """The `authorization` value among a call's metadata, or ""."""
    return next((value for key, value in metadata or () if key == "authorization"), "")


def basic_pair(header: str) -> tuple[str, str] | None:
    """ "Basic base64(name:password)" -> (name, password), or None if it is not that."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (name, password) if colon else None


# -- the checks --------------------------------------------------------------------


class SharedToken:
    """`--token`: `authorization: Bearer <token>`, compared in constant time."""

    refusal = "missing or wrong token: use client.py --token (or CHAT_TOKEN)"

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def verify(self, header: str) -> bool:
        return hmac.compare_digest(header.encode(), self._expected)

    def may_join(self, header: str, name: str) -> bool:
        return True  # the token says "one of us", not who


class Accounts:
    """`--users PATH`: HTTP Basic against the users file, re-read when it changes."""

    refusal = "missing or wrong name or password: use client.py --password (or CHAT_PASSWORD)"

    def __init__(self, path: Path):
        self._path = path
        self._seen = None  # (mtime_ns, size, inode) of the file as last read
        self._users: dict[str, str] = {}
        if not self._reload():
            raise UsersFileError(f"cannot read the users file {path}: add one with add-user")

    def verify(self, header: str) -> bool:
        pair = basic_pair(header)
        if pair is None:
            return False
        self._reload()
        name, password = pair
        stored = self._users.get(name)
        matches = verify_password(password, stored or NOBODY_HASH)
        return matches and stored is not None

    def may_join(self, header: str, name: str) -> bool:
        """The joined name is the one `verify` accepted for this call."""
        pair = basic_pair(header)
        return pair is not None and pair[0] == name

    def _reload(self) -> bool:
        """Re-read the file if it changed; keep the last good copy if it cannot be read."""
        try:
            stat = self._path.stat()
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
            if seen != self._seen:
                self._users, self._seen = read_users(self._path), seen
                log.info("users file %s: %d accounts", self._path, len(self._users))
        except (OSError, UnicodeDecodeError):
            if self._seen is not None:
                log.warning("cannot re-read %s: keeping the accounts read before", self._path)
            self._seen = None  # try again on the next check
            return False
        return True


# -- the interceptor -----------------------------------------------------------------


class Anyone(grpc.ServerInterceptor):
    """No authentication: every call goes through, any free name may be joined."""

    def intercept_service(self, continuation, handler_call_details):
        return continuation(handler_call_details)

    def may_join(self, context, name: str) -> bool:
        return True


class Guard(grpc.ServerInterceptor):
    """Refuse a guarded call whose credentials `check` does not accept."""

    def __init__(self, check, failures: Buckets | None = None):
        self._check = check  # a SharedToken or Accounts
        if failures is None:  # by address
            failures = Buckets(FAILURES_PER_MINUTE / 60, FAILURE_BURST)
        self._failures = failures

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in OPEN_METHODS or method.startswith(OPEN_SERVICES):
            return handler
        return rewrapped(handler, self._admitted)

    def may_join(self, context, name: str) -> bool:
        """session.py: may this call join as `name`? (Its credentials were checked already.)"""
        return self._check.may_join(authorization(context.invocation_metadata()), name)

    def _admitted(self, behaviour):
        def run(request, context):
            self._admit(context)  # aborts the call if not
            return behaviour(request, context)

        return run

    def _admit(self, context) -> None:
        address = peer_address(context)
        wait_s = self._failures.try_take(address)
        if wait_s:
            log.debug("refused a call from %s: too many failed sign-ins", address)
            metrics.refused("auth")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed sign-ins from your address: retry in {math.ceil(wait_s)} s",
            )
        if self._check.verify(authorization(context.invocation_metadata())):
            self._failures.give_back(address)  # only failures count
            return
        log.info("refused a call from %s: bad credentials", address)
        metrics.refused("auth")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, self._check.refusal)


def from_flags(token: str | None, users: Path | None):
    """The server's gatekeeper for `--token` / `--users` (at most one of them)."""
    if token and users:
        raise ValueError("use --token or --users, not both")
    if token:
        return Guard(SharedToken(token))
    if users:
        return Guard(Accounts(users))
    return Anyone()
