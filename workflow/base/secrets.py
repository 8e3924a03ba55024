"""Secrets: read from the environment only, and never written anywhere.

Two kinds: a provider's API key (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``), and an
endpoint's credentials, a ``user:password@`` part or a query parameter such as
``?api_key=``. The configuration cannot hold the latter: it is recorded (rule params in
provenance records and Snakemake's metadata, an evaluation's footer, the response cache's
request), so ``evaluation.base_url`` names the endpoint without them and the whole URL,
credentials included, comes from ``OPENAI_BASE_URL`` / ``ANTHROPIC_BASE_URL``.

``redact`` removes every secret from a text: an error a server sent back (some echo the
request's credentials), a log record (workflow/provenance/logs.py filters every line a rule writes),
anything that could reach a file.
"""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

from workflow.base.errors import UserError

KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
URL_VARIABLES = {"openai": "OPENAI_BASE_URL", "anthropic": "ANTHROPIC_BASE_URL"}
REDACTED = "[redacted]"

# A query parameter whose name says it carries a credential (api_key, key, access_token,
# sig, password); the others (api-version) are part of the endpoint.
_CREDENTIAL_NAME = r"[^=&#\s]*(?:key|token|secret|pass|pwd|auth|sig|cred)[^=&#\s]*"
_CREDENTIAL_PARAM = re.compile(_CREDENTIAL_NAME, re.IGNORECASE)
# In any text: a URL's user:password@ part, and the value of a credential parameter.
_USERINFO = re.compile(r"(?<=://)[^/?#\s@]+@")
_CREDENTIAL_VALUE = re.compile(rf"([?&]{_CREDENTIAL_NAME}=)[^&#\s'\"<>(),;\[\]]+", re.IGNORECASE)


def from_environment(variable: str) -> str:
    """``variable``'s value without the whitespace around it: a line end (the carriage
    return of a .env file written on Windows) or a space pasted with a key is no part of
    any key or URL, and an HTTP client refuses a header that holds one."""
    return os.environ.get(variable, "").strip()


def api_key(provider: str) -> str:
    """The provider's API key from the environment ('' when it is not set)."""
    variable = KEY_VARIABLES[provider]
    key = from_environment(variable)
    bad = next((i for i, c in enumerate(key) if not "!" <= c <= "~"), None)
    if bad is not None:  # named by position only: the message must not show the key
        raise UserError(
            f"the environment variable {variable} holds a space, control or non-ASCII character (character {bad + 1} "
            f"of {len(key)}), which no API key has and an HTTP header cannot carry: export the key again, copied "
            "exactly (a key pasted from a document can pick up a space or typographic quotes)"
        )
    return key


def _query_parts(query: str) -> list[str]:
    return [part for part in query.split("&") if part]


def _is_credential(part: str) -> bool:
    return bool(_CREDENTIAL_PARAM.fullmatch(unquote(part.partition("=")[0])))


def credentials(url: str) -> list[str]:
    """What in ``url`` may be a credential, in words (for messages; never the values): a
    user:password@ part, and any query or fragment, whatever its parameters are called
    (``?code=``, ``;token=``: no list of names can know every server's)."""
    split = urlsplit(url)
    found = ["a user:password@ part"] if "@" in split.netloc else []
    found += ["a query (?...)"] if split.query else []
    found += ["a fragment (#...)"] if split.fragment else []
    return found


def public_url(url: str) -> str:
    """``url`` without what may be a credential (see ``credentials``): scheme, host, port and
    path, what names the endpoint in every record."""
    split = urlsplit(url)
    return urlunsplit(split._replace(netloc=split.netloc.rpartition("@")[2], query="", fragment=""))


def _same_endpoint(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_endpoint(provider: str, base_url: str | None, which: str = "") -> None:
    """``base_url`` (evaluation.base_url) holds no credential, and the provider's URL
    variable, where set, names the same endpoint: the credentials come from there."""
    variable = URL_VARIABLES.get(provider, " or ".join(URL_VARIABLES.values()))
    split = urlsplit(base_url) if base_url else None
    if split is not None and (split.scheme.lower() not in ("http", "https") or not split.hostname):
        raise UserError(  # not shown: without its scheme, a user:password@ part reads as a path
            f"evaluation.base_url{which} is not an http:// or https:// URL with a host (such as http://localhost:8080/v1); "
            f"write it so, without credentials, and export {variable} with the whole URL if the server needs them"
        )
    found = credentials(base_url) if base_url else []
    if found:
        raise UserError(
            f"evaluation.base_url{which} holds credentials ({', '.join(found)}), and the configuration "
            "is recorded (provenance records, Snakemake's metadata, the evaluation's footer, the response cache): set "
            f"evaluation.base_url to {public_url(base_url)!r} and export {variable} with the whole URL, credentials "
            "included; the provider takes them from there"
        )
    url = from_environment(URL_VARIABLES[provider]) if provider in URL_VARIABLES else ""
    if not url or (base_url and _same_endpoint(public_url(url), base_url)):
        return
    where = f"evaluation.base_url is {base_url!r}" if base_url else "evaluation.base_url is not set"
    raise UserError(
        f"the environment variable {variable} names the endpoint {public_url(url)!r} (credentials left out) but "
        f"{where}{which}: the results would not record where the evaluations came from. Set evaluation.base_url to "
        f"{public_url(url)!r} (its credentials stay in {variable}), or unset {variable}"
    )


def endpoint(provider: str, base_url: str | None) -> str | None:
    """The URL to call: the environment's, credentials included, when it names the
    configured endpoint (``check_endpoint``), else ``base_url``."""
    url = from_environment(URL_VARIABLES[provider])
    return url if url and base_url and _same_endpoint(public_url(url), base_url) else base_url


def _url_secrets(url: str) -> list[str]:
    """A URL's credentials as they may come back: written as in the URL, decoded, and as
    the HTTP basic authentication header made of a user:password@ part."""
    split = urlsplit(url)
    found = []
    if "@" in split.netloc:
        userinfo = split.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found += [userinfo, unquote(userinfo), password, unquote(password),
                  base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()]
    for part in _query_parts(split.query.replace(";", "&")):
        value = part.partition("=")[2]
        found += [value, unquote(value)]
    if split.fragment:
        found += [split.fragment, split.fragment.partition("=")[2]]
    return found


def redact(text: str) -> str:
    """``text`` without any API key or endpoint credential from the environment, and
    without the credentials of any URL in it."""
    found = [from_environment(variable) for variable in KEY_VARIABLES.values()]
    for variable in URL_VARIABLES.values():
        found += _url_secrets(from_environment(variable))
    for secret in sorted(set(found), key=len, reverse=True):  # a whole user:password before its password
        if len(secret) >= 4:  # a one-letter placeholder key would blank every such letter
            text = text.replace(secret, REDACTED)
    text = _USERINFO.sub(REDACTED + "@", text)
    return _CREDENTIAL_VALUE.sub(lambda match: match.group(1) + REDACTED, text)
