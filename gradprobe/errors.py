"""Errors a user's input can cause, importable without torch (the CLI's bad-input answers need them)."""

from __future__ import annotations


class NotRecurrentError(TypeError):
    """The model holds no recurrent layer gradprobe can probe."""
