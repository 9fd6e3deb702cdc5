"""The HTTP session the route and worker clients share, and how its errors read.

requests exceptions can hold the request and its Authorization header, so none is
ever chained to ours: callers raise outside their ``except`` blocks and quote only
``reason(e)``, which is redacted.
"""

from __future__ import annotations

import http.cookiejar

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dispatcher.vast.protocol import TEXT_LIMIT, redact


def make_session(pool_size: int) -> requests.Session:
    """One keep-alive session for all worker threads of a process; nothing in it
    changes per call (no cookies are kept, no environment is read)."""
    session = requests.Session()
    # Otherwise requests re-reads proxy variables and ~/.netrc on every call
    # (a third of our HTTP CPU); our TLS and timeouts are explicit anyway.
    session.trust_env = False
    # Cookies would be shared state mutated by every answer: keep none.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.headers["User-Agent"] = "vast-dispatcher"
    # Retries are ours to decide (route and worker semantics differ): none here.
    adapter = HTTPAdapter(pool_connections=max(pool_size, 1), pool_maxsize=pool_size,
                          pool_block=False, max_retries=Retry(total=0, read=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def reason(e: BaseException, secret: str | None) -> str:
    """A short, key-free account of a requests exception."""
    text = redact(str(e), secret)[:TEXT_LIMIT][:300]
    if isinstance(e, requests.exceptions.SSLError):
        return ("TLS failed (for Vast workers set VAST_CA_BUNDLE to Vast's root "
                f"certificate): {text}")
    return f"{type(e).__name__}: {text}"
