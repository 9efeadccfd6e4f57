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

Guessing: every failed check takes a token from the caller's network's
bucket (an IPv4 /24, an IPv6 /64: access/caps.py, `network_of`), so only
failures count: FAILURE_BURST at once, then FAILURES_PER_MINUTE. Past that
the network is refused at once with RESOURCE_EXHAUSTED, right credentials
or not, without a check. The buckets
are this process's (`Buckets`) unless launch.py hands the guard shared ones
(`count_guesses_in`): with Redis, cluster/guesses.py counts them for every
process and every server on it. Anything with `try_take(key) -> seconds` and
`give_back(key)` will do (`GuessCounter`).

Cost: a password check is a scrypt hash, so a header found right is
remembered for a while (as a keyed hash, never the password), and hashes
running at once are capped (access/credentials.py).

The users file (access/users.py) is re-read when it changes (its mtime, size or
inode, looked at on each check), so `python server.py add-user` takes
effect on the next call without a restart or a signal.

NOTE: secrets never leave this module: no log line, no error detail and no
exception carries a token, a password or a name that failed to sign in (a
password typed into the name field is a classic leak).
"""

import hmac
import logging
import math
import stat
import threading
from pathlib import Path
from typing import Protocol

import grpc

import metrics
from access.caps import peer_address, peer_network, rewrapped
from access.credentials import (
    Busy,
    CheckedHeaders,
    HashSlots,
    authorization,
    basic_pair,
    credentials,
)  # fmt: skip
from access.users import NOBODY_HASH, UsersFileError, read_users, verify_password
from ratelimit import Buckets

log = logging.getLogger("server")

OPEN_METHODS = frozenset({"/chat.ChatService/HealthCheck"})
OPEN_SERVICES = (  # every method of these services is open
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
FAILURE_BURST = 5  # failed sign-ins a network may make at once ...
FAILURES_PER_MINUTE = 5  # ... then this many a minute; beyond, refused without a check
FAILURES_RATE = FAILURES_PER_MINUTE / 60  # per second, as buckets count


class GuessCounter(Protocol):
    """Failed sign-ins by network: ratelimit.Buckets, or cluster/guesses.py's in Redis."""

    def try_take(self, key: str) -> float: ...  # 0.0 if allowed, else the seconds to wait

    def give_back(self, key: str) -> None: ...


# -- the checks --------------------------------------------------------------------


class SharedToken:
    """`--token`: `authorization: Bearer <token>`, compared in constant time."""

    refusal = "missing or wrong token: use client.py --token (or CHAT_TOKEN)"

    def __init__(self, token: str):
        self._expected = token.encode()

    def verify(self, header: str, may_guess=lambda: True) -> bool:
        given = credentials(header, "bearer")
        return hmac.compare_digest((given or "").encode(), self._expected) and given is not None

    def may_join(self, header: str, name: str) -> bool:
        return True  # the token says "one of us", not who


class Accounts:
    """`--users PATH`: HTTP Basic against the users file, re-read when it changes."""

    refusal = "missing or wrong name or password: use client.py --password (or CHAT_PASSWORD)"

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()  # guards _seen and _users (any pool thread re-reads)
        self._seen = None  # (mtime_ns, size, inode, mode) of the file as last read
        self._users: dict[str, str] = {}
        self._checked = CheckedHeaders()  # headers found right lately: no hash again
        self._hashing = HashSlots()  # scrypt runs at once, capped
        problem = self._reload()
        if problem:
            raise UsersFileError(problem)

    def verify(self, header: str, may_guess=lambda: True) -> bool:
        """Is the name and password in `header` right?

        Raises Busy if no hash slot came in time; `may_guess()`, asked just
        before a hash, raises to refuse it (the network used up its guesses
        while this call waited for its slot).
        """
        self._reload()
        if self._checked.known(header):
            return True
        pair = basic_pair(header)
        if pair is None:
            return False
        with self._hashing:
            if self._checked.known(header):  # found right while we waited for the slot
                return True
            may_guess()
            name, password = pair
            with self._lock:
                stored = self._users.get(name)
            matches = verify_password(password, stored or NOBODY_HASH)
        if matches and stored is not None:
            self._checked.remember(header)
            return True
        return False

    def may_join(self, header: str, name: str) -> bool:
        """The joined name is the one `verify` accepted for this call."""
        pair = basic_pair(header)
        return pair is not None and pair[0] == name

    def _reload(self) -> str | None:
        """Re-read the file if it changed; keep the last good copy if it cannot be read.

        Returns what is wrong with the file, or None.
        """
        with self._lock:
            try:
                info = self._path.stat()
                seen = (info.st_mtime_ns, info.st_size, info.st_ino, info.st_mode)
                if seen == self._seen:
                    return None
                if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                    return self._refuse(
                        f"refusing the users file {self._path}: group or others may write it "
                        f"(mode {stat.filemode(info.st_mode)}); chmod go-w {self._path}"
                    )
                self._users, self._seen = read_users(self._path), seen
                self._checked.forget_all()  # a password may have changed
                log.info("users file %s: %d accounts", self._path, len(self._users))
            except (OSError, UnicodeDecodeError):
                return self._refuse(
                    f"cannot read the users file {self._path}: add one with add-user"
                )
        return None

    def _refuse(self, problem: str) -> str:
        """Under `_lock`: the file cannot be used; said once, then looked at on each check."""
        if self._seen is not None:  # it was good until now
            log.warning("%s: keeping the accounts read before", problem)
        self._seen = None  # look again on the next check
        return problem


# -- the interceptor -----------------------------------------------------------------


class Anyone(grpc.ServerInterceptor):
    """No authentication: every call goes through, any free name may be joined."""

    def intercept_service(self, continuation, handler_call_details):
        return continuation(handler_call_details)

    def may_join(self, context, name: str) -> bool:
        return True

    def count_guesses_in(self, failures) -> None:
        pass  # nothing is guessed


class Guard(grpc.ServerInterceptor):
    """Refuse a guarded call whose credentials `check` does not accept."""

    def __init__(self, check, failures: GuessCounter | None = None):
        self._check = check  # a SharedToken or Accounts
        # Failed sign-ins by network; this process's own until count_guesses_in.
        self._failures = failures or Buckets(FAILURES_RATE, FAILURE_BURST)

    def count_guesses_in(self, failures: GuessCounter) -> None:
        """launch.py, before serving: count failed sign-ins there (shared through Redis)."""
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
        """Refuse the call (abort) unless its credentials are right and its network may try.

        Only failures count: a network is first asked whether it may still
        try (and asked again just before a password hash, which may have
        waited its turn), and a failure takes one of its tokens.
        """
        network = peer_network(context)
        self._may_try(network, context)
        header = authorization(context.invocation_metadata())
        try:
            right = self._check.verify(header, lambda: self._may_try(network, context))
        except Busy:
            log.warning("refused a call from %s: busy checking passwords", peer_address(context))
            context.abort(grpc.StatusCode.UNAVAILABLE, "busy checking passwords: try again")
        if right:
            return
        self._failures.try_take(network)
        log.info("refused a call from %s: bad credentials", peer_address(context))
        metrics.refused("auth")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, self._check.refusal)

    def _may_try(self, network: str, context) -> None:
        """Abort the call if `network` used up its failed sign-ins for now."""
        wait_s = self._failures.try_take(network)
        if not wait_s:
            self._failures.give_back(network)  # only asked: a failure takes it later
            return
        log.debug("refused a call from %s: too many failed sign-ins", peer_address(context))
        metrics.refused("auth")
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"too many failed sign-ins from your network: retry in {math.ceil(wait_s)} s",
        )


def from_flags(token: str | None, users: Path | None):
    """The server's gatekeeper for `--token` / `--users` (at most one of them)."""
    if token and users:
        raise ValueError("use --token or --users, not both")
    if token:
        return Guard(SharedToken(token))
    if users:
        return Guard(Accounts(users))
    return Anyone()
