"""Text from run logs made safe for a terminal: control characters (escape sequences included) removed."""

from __future__ import annotations


def strip_control(text: str, keep: str = "\n\t") -> str:
    """``text`` without non-printable characters, except those in ``keep`` (newlines and tabs by default)."""
    return "".join(ch for ch in text if ch in keep or ch.isprintable())


def one_line(text: str) -> str:
    """``text`` on one line: line breaks become spaces, other control characters go (so that a name or message
    from a log cannot forge a line of a report, such as a verdict)."""
    return strip_control(" ".join(str(text).splitlines()), keep="\t")
