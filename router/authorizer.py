"""Authorization rules for the ``user`` role (pure; no Twisted or WAMP imports).

Crossbar caches an authorizer's answer under (realm, authrole, uri, action) *without* the
authid and never evicts it. So only answers that are the same for every user session are
cached: calls to known procedures (allowed) and every publish/register (denied). The
subscribe answer depends on who asks (own topic only) and is never cached; unknown URIs
are not cached either, so a client cannot grow the cache without bound.
"""

from __future__ import annotations

from typing import Any

from realms import uris


def authorize_user(authid: str | None, uri: str, action: str, options: dict[str, Any] | None) -> dict[str, bool]:
    if action == "call":
        if uri in uris.USER_PROCEDURES:
            return {"allow": True, "disclose": True, "cache": True}
        return {"allow": False, "cache": False}
    if action == "subscribe":
        match = (options or {}).get("match") or "exact"
        allowed = bool(authid) and match == "exact" and uri == uris.user_topic(str(authid))
        return {"allow": allowed, "cache": False}
    # publish, register: a user session does neither
    return {"allow": False, "cache": uri.startswith(uris.REALM + ".") and len(uri) <= 128}
