"""Distributed-profile blob store: any S3-compatible service through boto3.

- uploads: a presigned PUT URL that signs ``Content-Type`` and ``Content-Length`` (SigV4), so
  S3 refuses another type or length; the service still checks the stored object's size and
  sniffs its bytes at ``complete`` (a store that does not check signatures, e.g. a test double,
  changes nothing);
- downloads: presigned GET URLs;
- ``promote`` is a server-side copy conditioned on the checked ETag (``CopySourceIfMatch``), then
  the upload is deleted: bytes replaced after the check are never promoted.

boto3 blocks: every request runs in a dedicated thread pool, under a circuit breaker
(``Unavailable`` when the store is down). Presigning is local computation (no request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from common.errors import NotFound, Unavailable
from common.resilience import CircuitBreaker
from components.media.domain import BLOB_KEY
from components.media.ports import BlobInfo

log = Logger(namespace="messenger.media")
T = TypeVar("T")
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str((response.get("Error") or {}).get("Code", ""))


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str,
        access_key: str | None = None,
        secret_key: str | None = None,
        prefix: str = "",
        addressing_style: str = "path",
        reactor: Any = None,
        threads: int = 8,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.prefix = prefix
        self._access_key = access_key
        self._secret_key = secret_key
        self._addressing_style = addressing_style
        self._reactor = reactor
        self._threads = threads
        self.breaker = breaker or CircuitBreaker("s3", reactor, call_timeout_s=60.0)
        self._pool: ThreadPool | None = None
        self._client: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": self._addressing_style},
                connect_timeout=3,
                read_timeout=30,
                retries={"max_attempts": 2, "mode": "standard"},
                max_pool_connections=self._threads,
            ),
        )

    async def start(self) -> None:
        if self._pool is None:
            pool = ThreadPool(minthreads=1, maxthreads=self._threads, name="media-s3")
            pool.start()
            self._pool = pool
        if self._client is None:
            self._client = await deferToThreadPool(self._reactor, self._pool, self._make_client)
        try:
            await deferToThreadPool(self._reactor, self._pool, lambda: self._client.head_bucket(Bucket=self.bucket))
        except Exception as e:
            raise Unavailable(f"S3 bucket {self.bucket} is not reachable: {type(e).__name__}: {e}") from e

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()

    async def _call(self, fn: Callable[[], T], *, idempotent: bool = True) -> T:
        pool = self._pool
        if pool is None or self._client is None:
            raise Unavailable("the S3 store is not started")

        async def attempt() -> T:
            result: T = await deferToThreadPool(self._reactor, pool, fn)
            return result

        return await self.breaker.call(attempt, idempotent=idempotent)

    def _key(self, key: str) -> str:
        if not BLOB_KEY.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.prefix + key

    # -- URLs ----------------------------------------------------------------------------------
    def upload_target(self, key: str, content_type: str, size: int, expires_s: int) -> tuple[str, dict[str, str]]:
        url: str = self._client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._key(key), "ContentType": content_type, "ContentLength": size},
            ExpiresIn=expires_s,
            HttpMethod="PUT",
        )
        return url, {"Content-Type": content_type}

    def download_url(self, key: str, expires_s: int) -> str:
        url: str = self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )
        return url

    # -- objects -------------------------------------------------------------------------------
    def _missing_is_none(self, fn: Callable[[], T]) -> Callable[[], T | None]:
        def run() -> T | None:
            try:
                return fn()
            except Exception as e:
                if _code(e) in _MISSING:
                    return None
                raise

        return run

    async def stat(self, key: str) -> BlobInfo | None:
        k = self._key(key)
        head = await self._call(self._missing_is_none(lambda: self._client.head_object(Bucket=self.bucket, Key=k)))
        if head is None:
            return None
        return BlobInfo(int(head["ContentLength"]), head.get("ContentType"), str(head["ETag"]))

    async def read(self, key: str, length: int) -> bytes:
        k = self._key(key)

        def get() -> bytes:
            body = self._client.get_object(Bucket=self.bucket, Key=k, Range=f"bytes=0-{max(0, length - 1)}")["Body"]
            try:
                data: bytes = body.read(length)
                return data
            finally:
                body.close()

        data = await self._call(self._missing_is_none(get))
        if data is None:
            raise NotFound(f"no blob {key}")
        return data

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        k = self._key(key)
        await self._call(
            lambda: self._client.put_object(Bucket=self.bucket, Key=k, Body=data, ContentType=content_type)
        )

    async def promote(self, src: str, dst: str, etag: str, content_type: str) -> bool:
        s, d = self._key(src), self._key(dst)

        def copy() -> bool:
            # checked here and by S3 (CopySourceIfMatch; some S3 look-alikes ignore that condition)
            try:
                if str(self._client.head_object(Bucket=self.bucket, Key=s)["ETag"]) != etag:
                    return False
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=d,
                    CopySource={"Bucket": self.bucket, "Key": s},
                    CopySourceIfMatch=etag,
                    MetadataDirective="REPLACE",
                    ContentType=content_type,
                )
            except Exception as e:
                if _code(e) in _MISSING | {"PreconditionFailed", "412"}:
                    return False
                raise
            return True

        if not await self._call(copy):
            return False
        await self.delete(src)
        return True

    async def delete(self, key: str) -> None:
        k = self._key(key)
        await self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=k))
