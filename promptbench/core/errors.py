"""The one-line error contract: a bad input is refused with one line naming what is wrong and how to fix it."""

from __future__ import annotations


class ConfigValueError(ValueError):
    """A bad value in the composed config (one line naming the key and value)."""

