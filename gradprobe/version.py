"""The installed gradprobe version (one place; ``gradprobe.__version__`` re-exports it)."""

__version__ = "0.1.0"
