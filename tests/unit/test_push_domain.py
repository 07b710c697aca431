"""Rules of push notifications: validation, what a push says, provider answers, backoff."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.errors import InvalidArgument
from components.push import domain as d
from components.push.domain import Notice, RetryPolicy, Verdict


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def subscription(endpoint: str = "https://fcm.googleapis.com/fcm/send/abc:def") -> dict:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {
        "endpoint": endpoint,
        "expirationTime": None,
        "keys": {"p256dh": b64url(raw), "auth": b64url(os.urandom(16))},
    }


FCM_TOKEN = (
    "dX8aBcDeFgH:APA91bHPRgkF3JUikC4ENAHEeMrd41Zxv3hVZjC9KtT8OvPVGJ-hQMRKRrZuJAEcl7B338qju59zJM"
    "jw2DELjzEvxwYv7hH5Ynpc1ODQ0aT4U4OFEeco8ohsN5PjL1iC2dNtk2BAokeMCg2ZXKqpc8FXKmhX94kIxQ"
)


def notice(**kw) -> Notice:
    base = {
        "chat_id": "c" * 32,
        "chat_kind": "direct",
        "chat_title": None,
        "sender_id": "a" * 32,
        "sender_name": None,
        "message_id": "f" * 32,
        "seq": 7,
        "text_preview": "hello",
        "has_media": False,
        "recipients": ["b" * 32],
    }
    return d.parse_notice({**base, **kw})


# -- validation ----------------------------------------------------------------------------------
def test_platforms_and_disabled_platforms() -> None:
    assert d.validate_platform("fcm") == "fcm"
    with pytest.raises(InvalidArgument):
        d.validate_platform("apns")
    with pytest.raises(InvalidArgument, match="not enabled"):
        d.validate_platform("fcm", frozenset({"webpush"}))


@pytest.mark.parametrize("token", [FCM_TOKEN, "x" * 32, "a:b-c_d" * 10])
def test_fcm_tokens_of_the_right_shape(token: str) -> None:
    assert d.validate_fcm_token(token) == token


@pytest.mark.parametrize("token", [None, 42, "", "short", "with space" * 5, "ü" * 40, "x" * 4097, {"t": "x"}])
def test_fcm_tokens_of_the_wrong_shape(token: object) -> None:
    with pytest.raises(InvalidArgument):
        d.validate_fcm_token(token)


def test_a_browser_subscription_is_canonicalized() -> None:
    sub = subscription()
    assert d.validate_subscription(sub) == {"endpoint": sub["endpoint"], "keys": sub["keys"]}


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1:8000/push/1", "http://localhost/push", "http://[::1]:9/p", "https://push.example.com:8443/x"],
)
def test_endpoints_https_or_loopback_http(endpoint: str) -> None:
    assert d.validate_endpoint(endpoint) == endpoint


@pytest.mark.parametrize(
    "endpoint",
    [
        None,
        "",
        "push.example.com/x",
        "http://push.example.com/x",
        "http://10.0.0.1/x",
        "ftp://push.example.com/x",
        "https://user:pw@push.example.com/x",
        "https:///nohost",
        "https://push.example.com:99999/x",
        "https://push.example.com/a b",
        "https://push.example.com/" + "x" * 2048,
    ],
)
def test_bad_endpoints(endpoint: object) -> None:
    with pytest.raises(InvalidArgument):
        d.validate_endpoint(endpoint)


def test_bad_subscription_keys() -> None:
    good = subscription()
    p256dh, auth = good["keys"]["p256dh"], good["keys"]["auth"]
    compressed = b64url(b"\x02" + os.urandom(32))
    not_on_curve = b64url(b"\x04" + b"\x01" * 64)
    bad_keys: list[Any] = [
        None,
        {},
        {"p256dh": p256dh},
        {"auth": auth},
        {"p256dh": p256dh[:-2], "auth": auth},
        {"p256dh": compressed, "auth": auth},
        {"p256dh": not_on_curve, "auth": auth},
        {"p256dh": p256dh + "!", "auth": auth},
        {"p256dh": p256dh, "auth": b64url(os.urandom(15))},
        {"p256dh": p256dh, "auth": b64url(os.urandom(17))},
        {"p256dh": p256dh, "auth": 16},
    ]
    for keys in bad_keys:
        with pytest.raises(InvalidArgument):
            d.validate_subscription({**good, "keys": keys})
    with pytest.raises(InvalidArgument):
        d.validate_subscription([good])


def test_token_records_and_keys() -> None:
    sub = subscription()
    rec = d.new_token("u" * 32, "dev", "webpush", sub, 5)
    assert rec.subscription() == {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    # the same endpoint with new keys is the same target; unregistering needs only the endpoint
    again = d.new_token("u" * 32, "dev2", "webpush", subscription(sub["endpoint"]), 6)
    assert again.key == rec.key == d.key_to_unregister("webpush", {"endpoint": sub["endpoint"]})
    fcm = d.new_token("u" * 32, "dev", "fcm", FCM_TOKEN, 5)
    assert fcm.token == FCM_TOKEN and fcm.key == d.key_to_unregister("fcm", FCM_TOKEN) != rec.key


# -- notices and content ---------------------------------------------------------------------------
def test_notice_validation() -> None:
    n = notice(recipients=["b" * 32, "b" * 32, "d" * 32])
    assert n.recipients == ("b" * 32, "d" * 32)
    bad_notices: list[dict[str, Any]] = [
        {"seq": 0},
        {"seq": True},
        {"chat_id": "nope"},
        {"chat_kind": "channel"},
        {"recipients": "b" * 32},
        {"recipients": ["x"]},
        {"recipients": ["b" * 32] * 1001},
        {"text_preview": 5},
    ]
    for bad in bad_notices:
        with pytest.raises(InvalidArgument):
            notice(**bad)


def test_direct_chat_push_shows_sender_and_text() -> None:
    c = d.content_for(notice(text_preview="  see\nyou   soon "), "Alice")
    assert (c.title, c.body) == ("Alice", "see you soon")
    assert c.collapse_key == "c" * 32
    assert c.data == {
        "type": "message.new",
        "chat_id": "c" * 32,
        "message_id": "f" * 32,
        "seq": "7",
        "sender_id": "a" * 32,
    }


def test_group_push_shows_group_title_and_sender_in_body() -> None:
    c = d.content_for(notice(chat_kind="group", chat_title="Climbing club"), "Alice")
    assert (c.title, c.body) == ("Climbing club", "Alice: hello")


def test_media_only_and_long_text_and_unknown_sender() -> None:
    c = d.content_for(notice(text_preview=None, has_media=True), None)
    assert (c.title, c.body) == (d.DEFAULT_TITLE, d.MEDIA_BODY)
    c = d.content_for(notice(text_preview="x" * 500, sender_name="Bob"), None)
    assert c.title == "Bob" and len(c.body) == d.BODY_MAX and c.body.endswith("…")
    c = d.content_for(notice(), "N" * 200)
    assert len(c.title) == d.TITLE_MAX


def test_platform_payloads() -> None:
    c = d.content_for(notice(), "Alice")
    args = d.fcm_arguments("tok", c)
    assert args["fcm_token"] == "tok" and args["notification_title"] == "Alice"
    assert args["android_config"]["collapse_key"] == "c" * 32
    assert args["android_config"]["notification"]["tag"] == "c" * 32
    assert all(isinstance(v, str) for v in args["data_payload"].values())  # FCM data values are strings
    payload = json.loads(d.webpush_payload(c))
    assert payload["title"] == "Alice" and payload["body"] == "hello" and payload["chat_id"] == "c" * 32


# -- provider answers --------------------------------------------------------------------------------
UNREGISTERED = {
    "error": {
        "code": 404,
        "status": "NOT_FOUND",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}],
    }
}


def test_judge_fcm() -> None:
    assert d.judge_fcm(200, {"name": "x"}, None).verdict is Verdict.SENT
    assert d.judge_fcm(404, UNREGISTERED, None).verdict is Verdict.GONE
    assert d.judge_fcm(404, None, None).verdict is Verdict.GONE
    gone_400 = {"error": {"code": 400, "details": [{"errorCode": "UNREGISTERED"}]}}
    assert d.judge_fcm(400, gone_400, None).verdict is Verdict.GONE
    retry = d.judge_fcm(429, {"error": {"status": "RESOURCE_EXHAUSTED"}}, "7")
    assert retry.verdict is Verdict.RETRY and retry.retry_after_s == 7
    assert d.judge_fcm(503, None, None).verdict is Verdict.RETRY
    assert d.judge_fcm(500, None, "junk").retry_after_s is None
    assert d.judge_fcm(400, {"error": {"status": "INVALID_ARGUMENT"}}, None).verdict is Verdict.FAILED
    assert d.judge_fcm(401, None, None).verdict is Verdict.FAILED


def test_judge_webpush() -> None:
    assert d.judge_webpush(201, None).verdict is Verdict.SENT
    assert d.judge_webpush(404, None).verdict is Verdict.GONE
    assert d.judge_webpush(410, None).verdict is Verdict.GONE
    assert d.judge_webpush(429, "3").retry_after_s == 3
    assert d.judge_webpush(502, None).verdict is Verdict.RETRY
    assert d.judge_webpush(413, None).verdict is Verdict.FAILED


def test_backoff_is_exponential_jittered_bounded_and_honours_retry_after() -> None:
    p = RetryPolicy(attempts=5, base_s=1.0, max_s=10.0)
    assert [p.delay(n, None, 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert [p.delay(n, None, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert p.delay(5, None, 0.5) is None  # five sends made: give up
    assert RetryPolicy(attempts=10, base_s=1.0, max_s=10.0).delay(9, None, 1.0) == 10.0
    assert p.delay(1, 3.0, 0.0) == 3.0  # Retry-After is a floor
    assert p.delay(1, 3600.0, 0.0) == 10.0  # ... capped
