"""API keys: read from the environment (cleaned, or refused), and redacted from messages in every spelling.

Loading: a `.env` written on Windows leaves "\\r" (or "\\n", a tab, spaces) around a key; that whitespace is
stripped, and a variable holding only whitespace counts as unset. A key with any other character outside
printable ASCII (a control character, a space or a non-ASCII letter inside it) is refused with a one-line
error that names the variable, never the value: no HTTP header can carry it, and the HTTP library's error
would quote it in escaped form, which plain redaction misses.

Redaction: a message may quote a key raw, escaped by repr() (of str or bytes, as h11 quotes a header),
URL-encoded (either case of hex digits) or JSON-escaped, and the raw environment value or its stripped core.
`redact` replaces every such spelling, and any key=... query parameter, with ***.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

from fair.errors import FairError

MIN_SECRET = 4  # a 1-3 character "secret" would shred the message and hide nothing
_KEY_IN_QUERY = re.compile(r"([?&](?:key|api_key|apikey|access_token)=)[^&\s\"']+", re.IGNORECASE)


def read_key(env: str) -> str | None:
    """The API key in environment variable `env`, stripped; None when unset or blank; FairError when unusable."""
    key = os.environ.get(env, "").strip()
    if key and not all("!" <= c <= "~" for c in key):
        raise FairError(f"environment variable {env} holds an API key with a control character, space or "
                        f"non-ASCII character inside it; write the key again without it")
    return key or None


def spellings(secret: str) -> set[str]:
    """Every way a message may spell `secret` (see the module docstring)."""
    found = set()
    for s in {secret, secret.strip()}:
        found |= {s, repr(s)[1:-1], repr(s.encode("utf-8", "surrogatepass"))[2:-1], quote(s, safe=""), quote(s),
                  quote_plus(s), json.dumps(s)[1:-1], json.dumps(s, ensure_ascii=False)[1:-1]}
    return {s for s in found if len(s) >= MIN_SECRET}


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every spelling of every secret (and any key=... query parameter) replaced by ***."""
    forms = {form for secret in secrets if secret and len(secret.strip()) >= MIN_SECRET for form in spellings(secret)}
    if forms:  # longest first, so that a spelling is replaced whole rather than a shorter one inside it
        pattern = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        text = re.sub(pattern, "***", text, flags=re.IGNORECASE)  # %2f and %2F are the same URL
    return _KEY_IN_QUERY.sub(r"\1***", text)
