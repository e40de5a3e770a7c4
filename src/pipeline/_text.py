"""Text the library builds from values it does not control: exceptions and milliseconds.

A user's exception may have a `__str__` that raises, and a float of milliseconds prints as
`1.5e+06` under `:g`; every message that quotes either goes through here.
"""

from __future__ import annotations


def exception_text(exc: BaseException) -> str:
    """`"ExcType: message"` (or just `"ExcType"`), even when the exception's `__str__` raises."""
    name = type(exc).__name__
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001  # a broken __str__ must not turn a failure into a crash
        return f"{name}: <str() of the exception raised>"
    return f"{name}: {message}" if message else name


def format_ms(ms: float) -> str:
    """Milliseconds as a plain number: `1500000`, `2.5`, never `1.5e+06`."""
    if ms == int(ms):
        return str(int(ms))
    text = f"{ms:f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else repr(ms)
