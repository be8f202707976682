"""Text from run logs made safe for a terminal: control characters (escape sequences included) removed."""

from __future__ import annotations


def strip_control(text: str, keep: str = "\n\t") -> str:
    """``text`` without non-printable characters, except those in ``keep`` (newlines and tabs by default)."""
    return "".join(ch for ch in text if ch in keep or ch.isprintable())
