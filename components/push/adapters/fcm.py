"""FCM HTTP v1 sender on pyfcm.

pyfcm builds the request (``parse_payload``: ``{"message": {token, notification, data, android,
apns}, "validate_only": false}``), gets the OAuth2 access token through google-auth from the
service account file (JWT-bearer grant to the file's ``token_uri``) and posts with ``requests``.
Three things are adjusted, by subclassing, without touching pyfcm's internals beyond its
documented attributes:

- the endpoint: pyfcm posts to ``FCM_END_POINT_BASE + "/{project}/messages:send"``; the base is
  set per instance from config (``https://fcm.googleapis.com`` by default, a stand-in in tests);
- retries: pyfcm's own (urllib3 ``Retry`` on 502/503, and ``time.sleep(Retry-After)`` inside
  ``send_request``) would block a worker thread for as long as the provider asks; here one call
  is one POST (``max_retries=0``) and the answer is judged by :func:`domain.judge_fcm`, so
  retries happen in the push queue with backoff, never blocking;
- the answer: the raw status, body and ``Retry-After`` are kept (pyfcm maps them to exceptions
  that lose ``UNREGISTERED`` and ``Retry-After``).

Blocking HTTP runs on a bounded thread pool (``deferToThreadPool``), never on the reactor.
"""

from __future__ import annotations

from typing import Any

from pyfcm import FCMNotification
from requests.adapters import HTTPAdapter
from twisted.internet.threads import deferToThreadPool

from components.push.domain import Content, Outcome, PushToken, Verdict, fcm_arguments, judge_fcm

FCM_BASE_URL = "https://fcm.googleapis.com"


class _Fcm(FCMNotification):
    def __init__(self, service_account_file: str, project_id: str | None, base_url: str) -> None:
        super().__init__(
            service_account_file=service_account_file,
            project_id=project_id,
            adapter=HTTPAdapter(max_retries=0, pool_maxsize=32),
        )
        self.FCM_END_POINT_BASE = base_url.rstrip("/") + "/v1/projects"

    def send_request(self, payload: Any = None, timeout: Any = None) -> Any:
        """One POST (pyfcm's version sleeps on Retry-After and recurses); a token that expired
        meanwhile is refreshed once."""
        response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        if self._is_access_token_expired(response):
            self.thread_local.token_expiry = 0
            response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        return response


class FcmSender:
    def __init__(
        self,
        service_account_file: str,
        project_id: str | None,
        reactor: Any,
        pool: Any,
        *,
        base_url: str = FCM_BASE_URL,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = _Fcm(service_account_file, project_id, base_url)
        self._reactor = reactor
        self._pool = pool
        self._timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        return str(self._client.fcm_end_point)

    def _post(self, token: str, content: Content) -> tuple[int, Any, str | None]:
        payload = self._client.parse_payload(**fcm_arguments(token, content))
        response = self._client.send_request(payload, self._timeout_s)
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body, response.headers.get("Retry-After")

    async def send(self, token: PushToken, content: Content) -> Outcome:
        try:
            status, body, retry_after = await deferToThreadPool(
                self._reactor, self._pool, self._post, token.token, content
            )
        except Exception as e:  # connection refused, timeout, token endpoint down
            return Outcome(Verdict.RETRY, f"{type(e).__name__}: {e}"[:300])
        return judge_fcm(status, body, retry_after)
