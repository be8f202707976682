"""gradprobe: gradient-health diagnostics and linting for recurrent neural networks."""

from __future__ import annotations

__version__ = "0.1.0"
