"""Test helpers that run the real client: `python client.py`, piped or on a terminal.

Clients run as real subprocesses: piped ones with stdin/stdout pipes,
interactive ones on a pseudo-terminal driven by pexpect. Every wait is on
output, with a deadline. The fixtures `pipe_client` and `terminal` in
conftest.py start them and clean up.
"""

import fcntl
import os
import queue
import struct
import subprocess
import sys
import termios
import threading
import time

import pexpect
import pexpect.fdpexpect
import pytest
from conftest import ROOT
from wire import EVENT_TIMEOUT_S

CLIENT = str(ROOT / "client.py")
# Plain output to match against; no cursor-position queries a pty cannot answer.
CLIENT_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("CHAT_NAME", "CHAT_ADDRESS", "CHAT_ROOM")},
    **{"NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
}
pytestmark = pytest.mark.timeout(30)  # each test; the reconnect one gets more

ERROR_WITHIN_S = 5.0  # an error is reported this fast, never a hang
# With Redis, a SIGKILLed server's users count as online until its liveness
# key expires (~12 s; README, "Running more than one server"): the rejoin
# gets ALREADY_EXISTS and retries with backoff (waits up to 5 s) until then.
RECONNECT_WITHIN_S = 25.0


class PipeClient:
    """`python client.py` with stdin, stdout and stderr piped; lines read with deadlines."""

    def __init__(self, address: str, name: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, CLIENT, "--name", name, "--address", address, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CLIENT_ENV,
            cwd=ROOT,
        )
        self.seen: list[str] = []  # every stdout line read so far
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, text: str, timeout=EVENT_TIMEOUT_S) -> str:
        """The next stdout line containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout} s in {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended without {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=10.0) -> int:
        """Close stdin, wait for the exit, collect the rest of stdout."""
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Terminal(pexpect.fdpexpect.fdspawn):
    """`python client.py` on a pseudo-terminal, so it runs interactively.

    NOTE: started with subprocess, not pexpect.spawn: pexpect forks this
    process, and gRPC's fork handlers, with this process's gRPC threads
    running, can break the child before it execs. The child gets no
    controlling terminal, so ^C reaches it as a key, not as SIGINT.
    """

    def __init__(self, address: str, name: str | None, columns: int = 100):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        naming = ["--name", name] if name else []
        self.proc = subprocess.Popen(
            [sys.executable, CLIENT, *naming, "--address", address],
            stdin=slave, stdout=slave, stderr=slave, env=CLIENT_ENV, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        super().__init__(master, timeout=EVENT_TIMEOUT_S)

    def exit_code(self) -> int:
        """Wait for the end of output and of the process."""
        self.expect(pexpect.EOF)
        return self.proc.wait(EVENT_TIMEOUT_S)


def run_client(*args: str, stdin: str = "") -> tuple[subprocess.CompletedProcess, float]:
    """Run a piped client to its end; return the result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=CLIENT_ENV,
        cwd=ROOT,
        timeout=3 * ERROR_WITHIN_S,
    )
    return result, time.monotonic() - started


def assert_one_clean_error(result: subprocess.CompletedProcess, took_s: float, words: str):
    assert result.returncode != 0
    assert took_s < ERROR_WITHIN_S
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


def finishes_the_half_typed_line(alice) -> None:
    """After a rejoin, the line alice had half typed ("half") is still on her input
    line: she finishes it, it is sent, and she leaves cleanly."""
    alice.expect_exact("> half")
    alice.send(" done\r")
    alice.expect_exact("[you] half done")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    assert b"Traceback" not in alice.before
