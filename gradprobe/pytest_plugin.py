"""pytest plugin entry point (pytest11): fixtures and options arrive with the pytest-plugin issue."""
