"""Conformance runners, one module per backend.

Each public module declares ``REQUIRES = ("import_name", ...)`` (read without importing the module)
and a function ``runners() -> list[Runner]``. :func:`sai_conformance.available_runners` skips a
module whose requirements are not installed.
"""
