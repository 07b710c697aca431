"""The node's HTTP root (router/web.py): the web client's files, the SPA fallback, the health
check, and the JSON index when the client is not built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from router import drain
from router.web import PROJECT_ROOT, media_origins, root_resource, web_dir_of


def get(root: Resource, path: str, method: bytes = b"GET") -> tuple[int, dict[bytes, Any], bytes]:
    segments = [s.encode() for s in path.lstrip("/").split("/")]
    request = DummyRequest(segments)
    request.method = method
    request.path = path.encode()  # type: ignore[attr-defined]
    request.uri = path.encode()
    resource = getChildForRequest(root, request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
    # else static.File has written the (small) file already through its producer
    content = b"".join(request.written)
    headers = {k.lower(): v[0] for k, v in request.responseHeaders.getAllRawHeaders()}
    return request.responseCode or 200, headers, content


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>Messenger</title>")
    (tmp_path / "assets" / "index-abc.js").write_text("console.log(1)")
    return tmp_path


@pytest.fixture(autouse=True)
def state(monkeypatch: pytest.MonkeyPatch) -> drain.DrainState:
    s = drain.DrainState()
    monkeypatch.setattr(drain, "STATE", s)
    return s


def test_serves_the_built_client_at_root_with_no_cache(dist: Path) -> None:
    code, headers, body = get(root_resource({"web_dir": str(dist)}), "/")
    assert code == 200 and b"<title>Messenger</title>" in body
    assert headers[b"content-type"].startswith(b"text/html") and headers[b"cache-control"] == b"no-cache"


def test_hashed_assets_are_served_and_cached_for_good(dist: Path) -> None:
    code, headers, body = get(root_resource({"web_dir": str(dist)}), "/assets/index-abc.js")
    assert code == 200 and body == b"console.log(1)"
    assert b"immutable" in headers[b"cache-control"]


def test_the_page_has_a_content_security_policy_that_allows_only_its_origin_and_the_media_store(
    dist: Path,
) -> None:
    _, headers, _ = get(root_resource({"web_dir": str(dist)}), "/")
    csp = headers[b"content-security-policy"].decode()
    assert "script-src 'self';" in csp and "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
    assert "connect-src 'self';" in csp
    _, headers, _ = get(root_resource({"web_dir": str(dist), "media_origins": ["https://s3.example.com"]}), "/")
    csp = headers[b"content-security-policy"].decode()
    assert "img-src 'self' data: blob: https://s3.example.com;" in csp
    assert "connect-src 'self' https://s3.example.com;" in csp
    assert headers[b"x-frame-options"] == b"DENY" and headers[b"referrer-policy"] == b"no-referrer"


def test_the_media_origin_defaults_to_the_s3_endpoint_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSENGER_S3_ENDPOINT", "https://minio.internal:9000/some/path")
    assert media_origins({}) == ["https://minio.internal:9000"]
    assert media_origins({"media_origins": ["https://cdn.example.com"]}) == ["https://cdn.example.com"]
    monkeypatch.delenv("MESSENGER_S3_ENDPOINT")
    assert media_origins({}) == []


def test_client_routes_fall_back_to_the_app_but_missing_files_are_404(dist: Path) -> None:
    root = root_resource({"web_dir": str(dist)})
    code, _, body = get(root, "/chats/some-chat")
    assert code == 200 and b"Messenger" in body
    assert get(root, "/missing.js")[0] == 404
    assert get(root, "/assets/missing.js")[0] == 404
    assert get(root, "/assets/")[0] == 403  # no directory listing


def test_health_check_is_json_and_503_while_draining_whether_or_not_built(
    dist: Path, tmp_path: Path, state: drain.DrainState
) -> None:
    for extra in ({"web_dir": str(dist)}, {"web_dir": str(tmp_path / "nothing")}):
        root = root_resource(extra)
        code, headers, body = get(root, "/healthz")
        assert code == 200 and json.loads(body)["websocket"] == "/ws"
        assert headers[b"content-type"] == b"application/json"
        state.start(rate_per_s=1, grace_s=0)
        code, _, body = get(root, "/healthz")
        assert code == 503 and json.loads(body)["draining"] is True
        state.cancel()


def test_without_a_build_root_answers_the_json_index_as_before(tmp_path: Path) -> None:
    root = root_resource({"web_dir": str(tmp_path / "nothing")})
    code, _, body = get(root, "/")
    assert code == 200 and json.loads(body) == {
        "service": "messenger",
        "websocket": "/ws",
        "jwks": "/.well-known/jwks.json",
        "health": "/healthz",
    }
    assert get(root, "/anything")[0] == 404


def test_web_dir_is_relative_to_the_project_root() -> None:
    assert web_dir_of({}) == PROJECT_ROOT / "web" / "dist"
    assert web_dir_of({"web_dir": "/srv/web"}) == Path("/srv/web")
