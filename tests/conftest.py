# torch is imported once for the whole session. The gradprobe plugin no longer imports it at
# start-up, and pytester's in-process runs drop the modules first imported inside them: a second
# import of torch in one process crashes.
import torch  # noqa: F401

pytest_plugins = ["pytester"]
