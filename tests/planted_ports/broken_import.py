"""A port module that raises while it is imported (``identify`` must exit 2 with one line)."""

raise RuntimeError("this port needs a GPU driver that is not installed")
