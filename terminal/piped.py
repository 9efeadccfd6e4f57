"""Piped input for the chat client: each stdin line sent, and confirmed by its echo.

client.py runs this when stdin or stdout is not a terminal (a script, a
test, `echo hi | python client.py --name ci`). Each line is data: it is
sent as text unless it is a known command (`/join #ops`, `/msg bob hi`,
`/quit`: terminal/commands.py), and `//x` sends `/x`, so `/var/lib/db is 91% full`
goes out as written. Every line is kept until its echo (terminal/lines.py resends
after a rate limit, a NOT_SENT or a rejoin), and joins queue with them, so
`/join #ops` then `deployed` posts to #ops; at the end of input the client
waits for the last echoes and leaves. It exits 0 when every line went (its
echo came, or its command ran), 1 when any was refused for good (client.py).
A closed stdout (`| head -1`) silences the output only: every line is still
sent.

One queue feeds this module's main thread: lines and EOF from the stdin
thread (`read_lines`), and DOWN when a call ends, from the receive thread.
At the end, `Chat.flush` waits for the lines still pending (bounded) and
`Chat.close` names those that did not go.
"""

import os
import queue
import sys
import threading

from terminal.commands import Commands

EOF = object()  # from read_lines: the input has ended
DOWN = object()  # a call ended: look at it, rejoin


def run_pipe(chat) -> None:
    """Send each stdin line in order until /quit or EOF, then wait for the echoes."""
    inputs: queue.Queue = queue.Queue()
    chat.on_down = lambda: inputs.put(DOWN)
    chat.start()
    commands = Commands(chat)
    reader = threading.Thread(
        target=read_lines, args=(sys.stdin.fileno(), inputs), name="stdin", daemon=True
    )
    reader.start()
    while (item := inputs.get()) is not EOF:
        if item is DOWN:
            chat.recover()
        elif not commands.enter(item, interactive=False):
            break  # /quit
    chat.flush()


def read_lines(fd: int, lines: queue.Queue) -> None:
    """The stdin thread: each line into `lines`, then EOF.

    Reads the file descriptor with os.read, not sys.stdin: a daemon thread
    still blocked inside sys.stdin's buffer when the program exits would
    make the interpreter abort on its lock.
    """
    pending = b""
    while chunk := os.read(fd, 65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            lines.put(raw.decode(errors="replace"))
    if pending:
        lines.put(pending.decode(errors="replace"))
    lines.put(EOF)
