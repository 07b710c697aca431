"""The component that runs inside the router worker (no network hop):

- the dynamic authorizer of the ``user`` role (``messenger.internal.authorize``);
- session accounting from the meta API (Prometheus: sessions joined/active per role);
- closing the open sessions of a device whose tokens were revoked (logout, refresh reuse);
- closing the client sessions, paced, when the shard drains (``router/drain.py``).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.wamp import ApplicationSession
from autobahn.wamp.types import RegisterOptions
from twisted.internet import defer
from twisted.logger import Logger

from common import gcwatch
from common.metrics import SESSIONS_ACTIVE, SESSIONS_JOINED, SESSIONS_LEFT
from realms import uris
from router import drain
from router.authorizer import authorize_user

log = Logger(namespace="messenger.router")
CLOSE_REASON = "messenger.close.signed_out"


class RouterComponent(ApplicationSession):
    def onJoin(self, details: Any) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._join())

    async def _join(self) -> None:
        gcwatch.install()
        # session id -> (authid, authrole, device_id)
        self.sessions: dict[int, tuple[str | None, str | None, str | None]] = {}
        self.drainer = drain.Drainer(drain.STATE, self._client_sessions, self.sessions.__contains__, self._drain_kill)
        await self.register(self.authorize, uris.INTERNAL_AUTHORIZE, options=RegisterOptions(invoke="roundrobin"))
        await self.subscribe(self.on_session_join, "wamp.session.on_join")
        await self.subscribe(self.on_session_leave, "wamp.session.on_leave")
        await self.subscribe(self.on_device_revoked, uris.EVENT_DEVICE_REVOKED)
        drain.STATE.attach(self.drainer)  # begins at once if a drain was asked for before we joined
        log.info("router component ready")

    def onLeave(self, details: Any) -> None:
        drainer = getattr(self, "drainer", None)
        if drainer is not None:
            drain.STATE.detach(drainer)
        super().onLeave(details)

    def _client_sessions(self) -> list[int]:
        return [sid for sid, (_, role, _) in self.sessions.items() if role in drain.CLIENT_ROLES]

    def _drain_kill(self, sid: int) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = self.call(
            "wamp.session.kill", sid, reason=drain.CLOSE_REASON, message=drain.CLOSE_MESSAGE
        )
        return d

    def authorize(self, session: dict[str, Any], uri: str, action: str, options: Any = None) -> dict[str, bool]:
        if session.get("authrole") != uris.ROLE_USER:
            return {"allow": False, "cache": False}
        return authorize_user(session.get("authid"), uri, action, options)

    def on_session_join(self, info: dict[str, Any], *args: Any) -> None:
        sid = info.get("session")
        role = info.get("authrole")
        extra = info.get("authextra") or {}
        if sid is None:
            return
        self.sessions[sid] = (info.get("authid"), role, extra.get("device_id") if isinstance(extra, dict) else None)
        SESSIONS_JOINED.labels(authrole=str(role)).inc()
        SESSIONS_ACTIVE.labels(authrole=str(role)).inc()
        self.drainer.on_join(sid, role)

    def on_session_leave(self, session_id: Any, *args: Any) -> None:
        known = self.sessions.pop(session_id, None)
        self.drainer.on_leave(session_id)
        SESSIONS_LEFT.inc()
        if known is not None:
            SESSIONS_ACTIVE.labels(authrole=str(known[1])).dec()

    def on_device_revoked(self, user_id: str | None = None, device_id: str | None = None, **_: Any) -> None:
        victims = [
            sid
            for sid, (authid, role, dev) in self.sessions.items()
            if role == uris.ROLE_USER and authid == user_id and dev == device_id and dev is not None
        ]
        for sid in victims:
            d = self.call("wamp.session.kill", sid, reason=CLOSE_REASON, message="signed out")
            d.addErrback(lambda f, s=sid: log.debug("kill {sid}: {f}", sid=s, f=f.getErrorMessage()))


def metrics_resource(extra: dict[str, Any]) -> Any:
    """Web service ``resource`` factory for the router's private metrics transport."""
    from prometheus_client.twisted import MetricsResource

    return MetricsResource()
