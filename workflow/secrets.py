"""API keys: read from the environment only, and never written anywhere.

``redact`` removes the value of every provider's key from a text: an error a server sent
back (some echo the request's credentials), a log record (workflow/logs.py filters every
line a rule writes), anything that could reach a file.
"""

from __future__ import annotations

import os

KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` without the value of any provider's API key in the environment."""
    for variable in KEY_VARIABLES.values():
        secret = os.environ.get(variable, "")
        if len(secret) >= 4:  # a one-letter placeholder key would blank every such letter
            text = text.replace(secret, REDACTED)
    return text
