"""One exception type for problems the user can fix (bad config, missing files)."""


class UserError(Exception):
    """An error caused by input the user controls; the message says what to do."""


def listed(items, limit: int = 10) -> str:
    """``items`` joined for a message, the first ``limit`` of them and how many more: an
    error about one of 50,000 probes stays one readable line."""
    items = [text if len(text := str(i)) <= 80 else f"{text[:80]}…" for i in items]
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (and {len(items) - limit:,} more)"


def shown(value, limit: int = 200) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (a 100,000-character prompt
    quoted whole would bury the error)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"
