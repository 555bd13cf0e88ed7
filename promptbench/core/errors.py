"""The one-line error contract: a bad input is refused with one line naming what is wrong and how to fix it."""

from __future__ import annotations


class ConfigValueError(ValueError):
    """A bad value in the composed config (one line naming the key and value)."""


def error_line(err: BaseException) -> str:
    """``Type: first line of the message`` (no traceback); ``interrupted by SIGTERM`` for a signal."""
    if type(err).__name__ == "Interrupted":
        return f"interrupted by {err}"
    text = str(err).strip()
    line = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")
    cause = err.__cause__ or err.__context__
    if type(err).__name__ in ("ConfigCompositionException", "InstantiationException") and cause is not None:
        line += f" ({error_line(cause)})"  # Hydra's wrapper names the override; its cause says what is wrong
    return line

