"""Text cleaning (docs/PROTOCOL.md: Messages), shared by server and client."""

import pytest

from sanitize import clean_text


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("hello", "hello"),
        ("  padded  ", "padded"),
        ("a\nb\tc\r\nd", "a b c  d"),
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
