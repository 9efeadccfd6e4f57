"""Piped input for the chat client: each stdin line sent, and confirmed by its echo.

client.py runs this when stdin or stdout is not a terminal (a script, a
test, `echo hi | python client.py --name ci`). Every line is sent in order;
the next one waits until the server has sent the last one back to us (or
refused it), and a rate-limited line is resent, so none is lost. If the call
drops in between, `Chat.recover` rejoins first. At the end of input the
client leaves and exits 0.

The receive thread feeds `Chat.acks` (our echoes, refusals, and DOWN when a
call ends); only this module's main thread reads it.
"""

import queue
import sys
import threading
import time

import chat_pb2 as pb
from render import EOF, read_lines
from sanitize import clean_text

ECHO_TIMEOUT_S = 5.0  # wait this long for a line to come back to us
RATE_RETRY_S = 0.5  # wait this long before resending a rate-limited line
DOWN = object()  # in a main-thread queue: a call ended, look at it


def run_pipe(chat) -> None:
    """Send each stdin line in order, each confirmed by its echo; /quit or EOF ends."""
    lines: queue.Queue = queue.Queue()  # stdin: lines, then EOF; receive thread: DOWN
    chat.on_down = lambda: lines.put(DOWN)
    chat.connect()
    threading.Thread(target=read_lines, args=(sys.stdin.fileno(), lines), daemon=True).start()
    while (line := lines.get()) is not EOF:
        if line is DOWN:
            chat.recover()
        elif line.strip() == "/quit":
            return
        elif not chat.renderer.command(line.strip()) and clean_text(line):
            deliver(chat, line)


def deliver(chat, text: str) -> None:
    """Send one line and wait for it to come back; resend if rate limited or dropped."""
    want = clean_text(text)
    drain(chat.acks)  # late answers to earlier lines
    while chat.recover():  # the call dropped between lines: rejoined
        drain(chat.acks)  # its DOWN and the rejoin's replay answer nothing we sent
    chat.say(text)
    deadline = time.monotonic() + ECHO_TIMEOUT_S
    while (answer := next_answer(chat.acks, deadline)) != want:
        if answer is None:
            return chat.renderer.problem(f"no echo within {ECHO_TIMEOUT_S:.0f} s: {want}")
        if isinstance(answer, pb.SystemEvent):
            if answer.code != pb.RATE_LIMITED:
                return  # refused for good (empty, too long); the notice says why
            time.sleep(RATE_RETRY_S)  # not the notice's "retry in": text is for people
        elif answer is DOWN:
            if not chat.recover():
                continue  # a DOWN from an earlier call: this one is fine
            if want in drain(chat.acks):
                return  # sent before the drop: the rejoin replayed it to us
        else:
            continue  # an echo of something else
        chat.say(text)
        deadline = time.monotonic() + ECHO_TIMEOUT_S


def next_answer(answers: queue.Queue, deadline: float):
    try:
        return answers.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return None


def drain(answers: queue.Queue) -> list:
    return [answers.get_nowait() for _ in range(answers.qsize())]  # only main reads it
