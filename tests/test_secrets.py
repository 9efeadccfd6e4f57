"""Secrets never printed: a Redis URL's credentials, whatever their form, in any line."""

import subprocess
import sys

import pytest
import redis
from clients import CLIENT_ENV
from conftest import ROOT, ServerProcess, free_port

from sanitize import shown_url, without_secrets

pytestmark = pytest.mark.timeout(60)
SECRET = "hunter2secret"


@pytest.mark.parametrize(
    "url,shown",
    [
        (f"redis://:{SECRET}@127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
        (f"redis://alice:{SECRET}@127.0.0.1:1/2", "redis://127.0.0.1:1/2"),
        (f"redis://127.0.0.1:1/0?password={SECRET}", "redis://127.0.0.1:1/0"),
        (f"redis://:{SECRET}@b@c@127.0.0.1:1/0", "redis://127.0.0.1:1/0"),  # "@" unencoded
        (f"rediss://u:{SECRET}@[::1]:6380", "rediss://[::1]:6380"),
        (f"unix:///tmp/redis.sock?db=3&password={SECRET}", "unix:///tmp/redis.sock?db=3"),
        (f"redis://:{SECRET}@host:notaport/0", "(a Redis URL that cannot be parsed)"),
    ],
)
def test_redis_url_is_shown_without_credentials(url, shown):
    """When a Redis URL is printed, only its scheme, host, port and db are."""
    assert shown_url(url) == shown
    assert SECRET not in without_secrets(f"cannot reach {url}: auth {SECRET} failed", url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:{{port}}/0",
        f"redis://127.0.0.1:{{port}}/0?password={SECRET}",
        f"redis://:{SECRET}@x@127.0.0.1:{{port}}/0",
    ],
)
def test_unreachable_redis_error_never_prints_its_password(url):
    """When Redis cannot be reached at start-up, the one error line has no credentials."""
    url = url.format(port=free_port())
    failed = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--redis-url", url],
        capture_output=True, text=True, timeout=30, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    output = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:" in output
    assert SECRET not in output and "@" not in output and "Traceback" not in output


def test_start_up_line_never_prints_the_redis_password(redis_proc):
    """When the server starts on a Redis with a password, its banner shows no credentials."""
    redis.Redis(port=redis_proc.port).config_set("requirepass", f"p@ss{SECRET}")
    for url in (
        f"redis://127.0.0.1:{redis_proc.port}/0?password=p%40ss{SECRET}",
        f"redis://:p@ss{SECRET}@127.0.0.1:{redis_proc.port}/0",  # "@" unencoded
    ):
        server = ServerProcess("--redis-url", url)
        try:
            assert f"in Redis at redis://127.0.0.1:{redis_proc.port}/0 " in server.banner
            assert SECRET not in server.banner and "p@ss" not in server.banner
        finally:
            server.signal()
            server.wait()
            output = server.proc.stdout.read() + server.proc.stderr.read()
            server.stop()
        assert SECRET not in output


def test_help_shows_no_secret_from_the_environment():
    """When REDIS_URL or CHAT_TOKEN hold secrets, --help shows neither."""
    env = {**CLIENT_ENV, "REDIS_URL": f"redis://:{SECRET}@h:1/0", "CHAT_TOKEN": SECRET}
    helped = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=30,
    )  # fmt: skip
    assert helped.returncode == 0 and "--redis-url" in helped.stdout
    assert SECRET not in helped.stdout + helped.stderr
