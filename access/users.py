"""The users file of `--users`: one `name:hash` line per account, and `add-user`.

access/auth.py reads this file to check HTTP Basic credentials (and re-reads it
when it changes); `python server.py add-user NAME` writes it. A line is

    alice:scrypt$16384$8$1$<salt>$<hash>

the hash from the standard library's scrypt, with its cost parameters
(N, r, p) and a random salt (base64) in the line, so the cost can be
raised later without breaking the lines already written. The file holds no
password, but a stolen one can be attacked offline: keep it readable by
the server alone (add-user writes it with mode 0600).
"""

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path

import click

from sanitize import NAME_RULE, is_valid_name, name_skeleton

log = logging.getLogger("server")

DEFAULT_USERS_FILE = "users.txt"
# scrypt's cost: 2**14 rounds of 8-block mixing, ~16 MiB and ~50 ms a check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024  # above what N, r say; a line asking for more fails
SALT_BYTES, HASH_BYTES = 16, 32


class UsersFileError(Exception):
    """The users file cannot be read or written; the message names the file, never a secret."""


# -- passwords -------------------------------------------------------------------


def hash_password(password: str) -> str:
    """A new salt, then scrypt; the line keeps both, and the parameters."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encoded = (base64.b64encode(part).decode() for part in (salt, digest))
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded))


def verify_password(password: str, stored: str) -> bool:
    """Does `password` hash to `stored` (with the parameters and salt stored in it)?"""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, binascii.Error):  # malformed, or parameters scrypt refuses
        return False
    return hmac.compare_digest(got, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM_BYTES, dklen=HASH_BYTES
    )


# A hash to check unknown names against, so they take as long as known ones.
NOBODY_HASH = hash_password(secrets.token_hex(16))


# -- the users file ----------------------------------------------------------------


def read_users(path: Path) -> dict[str, str]:
    """`name:hash` lines -> {name: hash}; blank lines and `#` comments skipped."""
    users = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, stored = line.partition(":")
        if colon and is_valid_name(name) and stored.startswith("scrypt$"):
            users[name] = stored
        else:
            log.warning("%s line %d is not name:scrypt$...: skipped", path, number)
    return users


def add_user(path: Path, name: str, password: str) -> bool:
    """Write `name`'s line (replacing an old one) atomically; True if it was new."""
    users = read_users(path) if path.exists() else {}
    is_new = name not in users
    twin = next((u for u in users if u != name and name_skeleton(u) == name_skeleton(name)), None)
    if twin is not None:  # never online together: one of them could not sign in
        raise UsersFileError(f"{name} looks like {twin}, already in {path}: pick another name")
    users[name] = hash_password(password)
    text = "".join(f"{user}:{stored}\n" for user, stored in users.items())
    fd, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
            file.write(text)
        os.replace(temporary, path)  # readers see the old file or the new, never half
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UsersFileError(f"cannot write {path}: {error.strerror}") from None
    return is_new


# -- python server.py add-user NAME ---------------------------------------------------


@click.command("add-user")
@click.argument("name")
@click.option(
    "--users", "path", type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_USERS_FILE, show_default=True, help="The users file to write.",
)  # fmt: skip
def add_user_command(name, path):
    """Add NAME to the users file, or change its password.

    On a terminal the password is asked twice, hidden; piped in, the
    first line is the password.
    """
    if not is_valid_name(name):
        raise click.BadParameter(f"use {NAME_RULE}", param_hint="NAME")
    password = _read_password(name)
    if not password:
        raise click.ClickException("empty password: nothing written")
    try:
        is_new = add_user(path, name, password)
    except UsersFileError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{'added' if is_new else 'changed the password of'} {name} in {path}")


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        return click.prompt(f"Password for {name}", hide_input=True, confirmation_prompt=True)
    return sys.stdin.readline().rstrip("\r\n")
