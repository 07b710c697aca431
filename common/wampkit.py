"""The thin WAMP edge shared by every component.

- :func:`procedure` turns ``async def handler(caller, **kwargs)`` into a WAMP endpoint that
  checks argument names (keyword only, no missing, no extra), maps the error family to
  ``messenger.error.<code>`` in this one place, and records calls, errors and latency.
- :class:`BackendSession` joins the realm as a backend (anonymous on the private Unix
  socket, or ticket on a private TCP transport) and registers a component's procedures.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.wamp import ApplicationSession
from autobahn.wamp import message
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import CallDetails, RegisterOptions
from twisted.internet import defer
from twisted.logger import Logger

from common import gcwatch
from common.errors import InvalidArgument, MessengerError, Unauthenticated
from common.metrics import CALLS, ERRORS, LATENCY
from realms.uris import ERROR_PREFIX, ROLE_BACKEND, ROLE_USER

log = Logger(namespace="messenger.wamp")

INTERNAL_ERROR = ERROR_PREFIX + "internal"
# Autobahn invokes endpoints as txaio.as_future(fn, *args, **kwargs) -> maybeDeferred(f, ...): a
# client keyword argument named like one of those parameters raises TypeError inside autobahn's
# message loop, which drops the component's whole connection. Such calls are answered here.
RESERVED_KWARGS = frozenset({"self", "fun", "f"})
DETAILS_ARG = "_wamp_details"


@dataclass(frozen=True)
class Caller:
    session_id: int | None
    authid: str | None
    authrole: str | None

    @property
    def user_id(self) -> str:
        """The calling user's id; only user sessions have one."""
        if self.authrole != ROLE_USER or not self.authid:
            raise Unauthenticated("this procedure needs a logged-in user session")
        return self.authid


def to_application_error(err: MessengerError) -> ApplicationError:
    return ApplicationError(ERROR_PREFIX + err.code, err.message, **err.extra)


Handler = Callable[..., Awaitable[Any]]


def _signature(handler: Handler) -> tuple[frozenset[str], frozenset[str]]:
    params = list(inspect.signature(handler).parameters.values())[1:]  # skip caller
    required = frozenset(p.name for p in params if p.default is inspect.Parameter.empty)
    allowed = frozenset(p.name for p in params)
    return required, allowed


def check_arguments(
    uri: str, args: tuple[Any, ...], kwargs: dict[str, Any], required: frozenset[str], allowed: frozenset[str]
) -> None:
    if args:
        raise InvalidArgument(f"{uri} takes keyword arguments only ({len(args)} positional given)")
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise InvalidArgument(f"{uri}: unexpected argument(s): {', '.join(extra)}")
    missing = sorted(required - set(kwargs))
    if missing:
        raise InvalidArgument(f"{uri}: missing argument(s): {', '.join(missing)}")


def procedure(uri: str, handler: Handler, *, backend_only: bool = False) -> Callable[..., defer.Deferred[Any]]:
    required, allowed = _signature(handler)

    async def run(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        details: CallDetails | None = kwargs.pop(DETAILS_ARG, None)
        caller = Caller(
            session_id=getattr(details, "caller", None),
            authid=getattr(details, "caller_authid", None),
            authrole=getattr(details, "caller_authrole", None),
        )
        started = time.perf_counter()
        CALLS.labels(procedure=uri).inc()
        try:
            if backend_only and caller.authrole != ROLE_BACKEND:
                raise Unauthenticated(f"{uri} is for backend components only")
            check_arguments(uri, args, kwargs, required, allowed)
            result = await handler(caller, **kwargs)
            return {} if result is None else result
        except MessengerError as e:
            ERRORS.labels(procedure=uri, code=e.code).inc()
            raise to_application_error(e) from None
        except ApplicationError:
            ERRORS.labels(procedure=uri, code="application").inc()
            raise
        except Exception:
            ERRORS.labels(procedure=uri, code="internal").inc()
            log.failure("unexpected error in {uri}", uri=uri)
            raise ApplicationError(INTERNAL_ERROR, "internal error; the failure was logged") from None
        finally:
            LATENCY.labels(procedure=uri).observe(time.perf_counter() - started)

    def endpoint(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(run(args, kwargs))

    endpoint.__name__ = uri
    return endpoint


def register_options(invoke: str = "roundrobin") -> RegisterOptions:
    return RegisterOptions(invoke=invoke, details_arg=DETAILS_ARG)


class BackendSession(ApplicationSession):
    """Base of every component session.

    ``config.extra``:
    - ``backend_auth``: absent for anonymous (private Unix socket), or
      ``{"authid": "backend", "ticket_env": "MESSENGER_BACKEND_TICKET"}`` for ticket auth
      on a private TCP transport (the secret is read from the environment).
    """

    log = Logger()

    def onConnect(self) -> None:
        gcwatch.install()
        extra = self.config.extra or {}
        auth = extra.get("backend_auth")
        if auth:
            self.join(self.config.realm, authmethods=["ticket"], authid=auth.get("authid", "backend"))
        else:
            self.join(self.config.realm, authmethods=["anonymous"])

    def onMessage(self, msg: Any) -> None:
        if isinstance(msg, message.Invocation) and msg.kwargs and not RESERVED_KWARGS.isdisjoint(msg.kwargs):
            bad = ", ".join(sorted(RESERVED_KWARGS & set(msg.kwargs)))
            reply = message.Error(
                message.Invocation.MESSAGE_TYPE,
                msg.request,
                ERROR_PREFIX + "invalid_argument",
                args=[f"unexpected argument(s): {bad}"],
            )
            if self._transport is not None:
                self._transport.send(reply)
            return
        super().onMessage(msg)

    def onChallenge(self, challenge: Any) -> str:
        auth = (self.config.extra or {}).get("backend_auth") or {}
        if challenge.method != "ticket":
            raise ApplicationError("messenger.error.unauthenticated", f"unexpected challenge {challenge.method}")
        env = auth.get("ticket_env", "MESSENGER_BACKEND_TICKET")
        ticket = os.environ.get(env)
        if not ticket:
            raise ApplicationError("messenger.error.unauthenticated", f"environment variable {env} is not set")
        return ticket

    async def register_procedures(
        self, procedures: dict[str, Handler], *, backend_only: frozenset[str] = frozenset(), invoke: str = "roundrobin"
    ) -> None:
        for uri, handler in procedures.items():
            await self.register(
                procedure(uri, handler, backend_only=uri in backend_only), uri, options=register_options(invoke)
            )
