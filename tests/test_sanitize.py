"""Text cleaning (docs/PROTOCOL.md: Messages), shared by server and client."""

import sys
import unicodedata

import pytest
from wire import join

import chat_pb2 as pb
from sanitize import clean_text


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("hello", "hello"),
        ("  padded  ", "padded"),
        ("a\nb\tc\r\nd", "a b c d"),
        ("\x1b[2Jcleared", "[2Jcleared"),
        ("bell\x07 del\x7f c1\x9b", "bell del c1"),
        ("evil\u202egnp.exe", "evilgnp.exe"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("line\u2028sep", "line sep"),
        ("日本語 ok ✓", "日本語 ok ✓"),
        ("\x00\x01\x02", ""),
    ],
)
def test_control_and_format_characters_never_survive(raw, clean):
    """When text holds control or invisible format characters, they are removed."""
    assert clean_text(raw) == clean


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("ok" + " " * 78 + "[alice] pay him", "ok [alice] pay him"),
        ("a\u00a0\u00a0b", "a b"),  # NBSP
        ("a\u3000\u2003\u205f b", "a b"),  # ideographic, em and math spaces
        ("a\u3164\u3164\u115f\u1160\uffa0b", "a b"),  # Hangul fillers
        ("a\u2800\u2800b", "a b"),  # blank Braille
        ("a \u034f \u034f \ufe0f b", "a b"),  # invisible marks on blanks
        ("a \u200b \u200b b", "a b"),  # zero-width between spaces: removed, then folded
        ("\u3000\u3000ok\u2800", "ok"),
        ("caf\u0065\u0301 ok", "caf\u0065\u0301 ok"),  # a mark on a letter stays
    ],
)
def test_blank_runs_collapse_to_one_space(raw, clean):
    """When text holds a run of blanks of any kind, it becomes one space."""
    assert clean_text(raw) == clean


@pytest.mark.parametrize("raw", ["\u3164", "\u2800\u3000\u00a0", " \u034f ", "\u115f\u1160"])
def test_message_of_only_blanks_is_empty(raw):
    """When text is only blank-looking characters, nothing is left of it."""
    assert clean_text(raw) == ""


def test_every_unicode_space_separator_is_folded():
    """When a character is a Unicode space (Zs), cleaning treats it as a blank."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Zs"]
    assert len(spaces) > 10
    for space in spaces:
        assert clean_text(f"a{space}{space}b") == "a b", f"U+{ord(space):04X}"


def test_message_of_only_blanks_is_refused_as_invalid(server):
    """When a message is only blank-looking letters, the sender gets INVALID_EVENT."""
    alice = join(server.address, "alice")
    alice.say("\u3164\u3164\u2800")
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    assert "empty" in notice.system_event.message
    alice.close()
