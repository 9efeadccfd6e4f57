"""Runs docs/LAB.md's own commands against real processes, and reads what they print.

The lab marks what a test needs with HTML comments, invisible when the
page is rendered, each one right before a fenced block:

    <!-- lab: flood -->              commands; `# terminal N` lines say where each runs
    <!-- lab: flood terminal 3 -->   lines terminal N must show, in this order

So the test runs exactly what a learner copies and looks for exactly what
the text promises. In an expected line, `...` stands for what changes from
run to run (a time, an error's wording); the rest must appear in one output
line, which may have more around it (the server's log lines start with the
date and time, which the lab leaves out).

What the test changes, visibly and only this:
- the ports the lab uses, 8080, 8081, 8082 (chat) and 6379 (Redis), become
  free ports, in every command; the client's default address
  (localhost:8080) through CHAT_ADDRESS;
- `$(pgrep -f "PATTERN")` becomes the pid of the process this test started
  whose command contains PATTERN (never another process on the machine);
- `python` is the interpreter running the tests; colours are off (NO_COLOR);
  piped output is 80 columns wide (COLUMNS), as the lab's lines are.

A command runs in the background until it is ready (it printed its READY
line) if it is a long-running program, else to its end. Each terminal's
stdout and stderr are one stream, as on a real terminal; stdin is a pipe,
so `Terminal.type` stands for typing (client.py reads piped lines the same
way, and prints the same lines).
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT, free_port

LAB_MD = ROOT / "docs" / "LAB.md"
BLOCK = re.compile(
    r"<!-- lab: (?P<name>[\w-]+)(?: terminal (?P<terminal>\d+))? -->\s*\n"
    r"```[^\n]*\n(?P<body>.*?)\n```",
    re.S,
)
TERMINAL = re.compile(r"# terminal (\d+)")
PGREP = re.compile(r"\$\(pgrep -f \"([^\"]+)\"\)")
LAB_PORTS = ("8080", "8081", "8082", "6379")
LAB_PORT = re.compile(rf"\b({'|'.join(LAB_PORTS)})\b")
# What a long-running program prints once it is ready; a command that names
# none of these (or feeds a pipe into one) runs to its end.
READY = {
    "redis-server": "Ready to accept connections",
    "server.py": "chat server listening",
    "client.py": "joined the chat",
    "lazy_reader.py": "reading nothing",
}
READY_TIMEOUT_S = 10.0
RUN_TIMEOUT_S = 30.0  # a command that runs to its end
EXPECT_TIMEOUT_S = 10.0


def blocks(text: str) -> tuple[dict, dict]:
    """LAB.md -> ({name: [(terminal, command)]}, {name: {terminal: [expected lines]}})."""
    commands: dict[str, list[tuple[int, str]]] = {}
    expected: dict[str, dict[int, list[str]]] = {}
    for match in BLOCK.finditer(text):
        lines = [line.strip() for line in match["body"].splitlines() if line.strip()]
        if match["terminal"]:
            expected.setdefault(match["name"], {})[int(match["terminal"])] = lines
            continue
        terminal, steps = 0, commands.setdefault(match["name"], [])
        for line in lines:
            if found := TERMINAL.fullmatch(line):
                terminal = int(found[1])
            else:
                steps.append((terminal, line))
    return commands, expected


def pattern(expected: str) -> re.Pattern:
    """An expected line as a regex: literal, except `...` matches anything."""
    wild = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.compile(re.sub(r"(?:\.\*)+", ".*", wild))  # a row of dots: one wildcard


class Terminal:
    """What one of the learner's terminals shows: every line its commands printed."""

    def __init__(self, number: int):
        self.number = number
        self.procs: list[tuple[str, subprocess.Popen]] = []  # (command, process)
        self.lines: list[str] = []
        self._seen = 0  # lines already matched by `expect`: later checks look further on
        self._changed = threading.Condition()

    def start(self, command: str, env: dict) -> tuple[subprocess.Popen, threading.Event]:
        # exec: a lone program is bash's own process, so its pid is the one to signal.
        alone = "|" not in command and command.startswith(("python", "redis-server"))
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}" if alone else command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        self.procs.append((command, proc))
        drained = threading.Event()  # all of its output is in `lines`
        threading.Thread(target=self._collect, args=(proc, drained), daemon=True).start()
        return proc, drained

    def _collect(self, proc: subprocess.Popen, drained: threading.Event) -> None:
        for line in proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        drained.set()
        with self._changed:
            self._changed.notify_all()  # the process may have ended: wake its waiter

    def wait_for(self, found, timeout: float) -> bool:
        """Wait until `found()` holds; False at the deadline."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not found():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)  # each new line, and each end of output, notifies
            return True

    def expect(self, expected: list[str], timeout: float = EXPECT_TIMEOUT_S) -> None:
        """Each expected line appears, in this order, after what earlier checks matched."""
        for line in expected:
            wanted = pattern(line)

            def found(wanted=wanted) -> bool:
                for i in range(self._seen, len(self.lines)):
                    if wanted.search(self.lines[i]):
                        self._seen = i + 1
                        return True
                return False

            assert self.wait_for(found, timeout), (
                f"terminal {self.number} never showed {line!r} within {timeout} s:\n"
                + "\n".join(self.lines)
            )

    def type(self, text: str) -> None:
        """Type a line (and Enter) into the program running here."""
        proc = self.procs[-1][1]
        proc.stdin.write(text + "\n")
        proc.stdin.flush()

    def kill(self) -> None:
        for _, proc in self.procs:
            with contextlib.suppress(ProcessLookupError):  # its whole group may be gone
                os.killpg(proc.pid, signal.SIGCONT)  # a stopped process cannot die otherwise
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            for pipe in (proc.stdin, proc.stdout):
                pipe.close()


class Lab:
    """The lab's exercises, run for real; `run(name)`, then `check(name)`."""

    def __init__(self, text: str | None = None):
        self.commands, self.expected = blocks(text or LAB_MD.read_text())
        self.ports = {port: str(free_port()) for port in LAB_PORTS}
        self.terminals: dict[int, Terminal] = {}
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        unset = ("CHAT_", "REDIS_URL")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
        self.env.update(PATH=path, NO_COLOR="1", PYTHONUNBUFFERED="1", COLUMNS="80")
        self.env["CHAT_ADDRESS"] = f"localhost:{self.ports['8080']}"

    def terminal(self, number: int) -> Terminal:
        return self.terminals.setdefault(number, Terminal(number))

    def local(self, command: str) -> str:
        """The command with the test's ports and pids in place of the lab's."""
        command = LAB_PORT.sub(lambda m: self.ports[m[0]], command)
        return PGREP.sub(lambda m: str(self.pid_of(m[1])), command)

    def pid_of(self, text: str) -> int:
        """pgrep -f, among the processes this test started (and still running)."""
        running = [
            proc.pid
            for terminal in self.terminals.values()
            for command, proc in terminal.procs
            if text in command and proc.poll() is None
        ]
        assert len(running) == 1, f"pgrep -f {text!r}: {running}"
        return running[0]

    def run(self, name: str) -> None:
        """Run block `name`'s commands in order, each in its terminal."""
        assert name in self.commands, f"no <!-- lab: {name} --> block in LAB.md"
        for number, command in self.commands[name]:
            command = self.local(command)
            terminal = self.terminal(number)
            started = len(terminal.lines)  # before it starts: its first line may come at once
            proc, drained = terminal.start(command, self.env)
            ready = next((line for key, line in READY.items() if key in command), None)
            if ready is None or "|" in command:
                assert drained.wait(RUN_TIMEOUT_S), f"{command!r} still running: {terminal.lines}"
                proc.wait(RUN_TIMEOUT_S)
            else:  # until ready, or ended (a refused client: its error is what we check)
                assert terminal.wait_for(
                    lambda t=terminal, s=started, d=drained, r=ready: (
                        d.is_set() or any(r in line for line in t.lines[s:])
                    ),
                    READY_TIMEOUT_S,
                ), f"{command!r} was not ready within {READY_TIMEOUT_S} s: {terminal.lines}"

    def check(self, name: str, timeout: float = EXPECT_TIMEOUT_S) -> None:
        """Every terminal shows what block `name` expects of it."""
        assert name in self.expected, f"no <!-- lab: {name} terminal N --> block in LAB.md"
        for number, lines in self.expected[name].items():
            self.terminal(number).expect(lines, timeout)

    def close(self) -> None:
        for terminal in self.terminals.values():
            terminal.kill()
