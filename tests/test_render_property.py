"""The renderer against anything a server might send: it never raises, never lets an escape through.

Hypothesis makes up events: any text, any name, any id, any timestamp
(huge, negative, missing), any code. Whatever comes, `Renderer.show` prints
plain lines; the only escape sequences are the renderer's own colours, and
none at all when colour is off (not on a terminal).
"""

import contextlib
import io
import os
import re
import unicodedata
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

import chat_pb2 as pb
from terminal.render import DIM, MENTION, PALETTE, WARN, Renderer
from terminal.wrap import width

# The renderer's own styling, and nothing else, is allowed to be an escape.
OWN_STYLE = re.compile(
    "\x1b\\[(?:0|{})m".format("|".join(re.escape(code) for code in (*PALETTE, DIM, WARN, MENTION)))
)
INT64 = st.integers(-(2**63), 2**63 - 1)
CODES = st.integers(0, 7)  # every SystemCode, and some no client knows yet

chat_messages = st.builds(
    lambda text, name, ts, id_, replay, room, to, action: pb.ServerEvent(
        chat_message=pb.ChatMessageEvent(
            message=text, username=name, timestamp=ts, id=id_, replay=replay,
            room=room, to=to, action=action,
        )
    ),
    st.text(), st.text(), INT64, st.text(), st.booleans(), st.text(), st.text(), st.booleans(),
)  # fmt: skip
user_events = st.builds(
    lambda kind, name, ts, room: pb.ServerEvent(
        user_event=pb.UserEvent(type=kind, username=name, timestamp=ts, room=room)
    ),
    CODES, st.text(), INT64, st.text(),
)  # fmt: skip
typing_events = st.builds(
    lambda kind, name, ts: pb.ServerEvent(
        typing_event=pb.TypingEvent(type=kind, username=name, timestamp=ts)
    ),
    CODES, st.text(), INT64,
)  # fmt: skip
system_events = st.builds(
    lambda code, text, ts: pb.ServerEvent(
        system_event=pb.SystemEvent(code=code, message=text, timestamp=ts)
    ),
    CODES, st.text(), INT64,
)  # fmt: skip
events = st.one_of(chat_messages, user_events, typing_events, system_events)


def shown(renderer: Renderer, event: pb.ServerEvent) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        renderer.show(event)
    return out.getvalue()


def unstyled(text: str) -> str:
    """What is left of the output once the renderer's own colours are taken out."""
    return OWN_STYLE.sub("", text)


def is_inert(char: str) -> bool:
    """Cannot move the cursor or start an escape: no control or format characters."""
    return char == "\n" or unicodedata.category(char) not in ("Cc", "Cf", "Cs")


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=5), st.text(max_size=32), st.booleans(), st.booleans())
def test_rendering_any_events_never_raises_or_prints_an_escape(batch, me, colour, timestamps):
    """When any events arrive, each prints one header row, then indented rows, and only our
    own colours; every row fits the terminal."""
    renderer = Renderer(me or "me", colour=colour, timestamps=timestamps)
    for event in batch:
        with mock.patch.dict(os.environ, {"COLUMNS": "80"}):
            out = shown(renderer, event)
        assert not out or out.endswith("\n"), repr(out)
        plain = unstyled(out) if colour else out
        assert all(is_inert(char) for char in plain), repr(out)
        rows = plain.splitlines()
        assert all(row.startswith(" ") for row in rows[1:]), repr(out)
        assert all(width(row) < 80 for row in rows), repr(out)
    renderer.typing_line()  # the typing line too, with whatever names came
    assert all(is_inert(char) for char in renderer.typing_line())
