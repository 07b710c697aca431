"""An S3 service for tests: moto in server mode on loopback (a real HTTP endpoint, real presigned
URLs), started as a subprocess from the venv's ``moto_server``."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.node import free_port, wait_port

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
REGION = "us-east-1"
ACCESS_KEY = "testing"
SECRET_KEY = "testing"


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_port(self.port, timeout)
        deadline = time.monotonic() + timeout
        while True:  # the port opens a moment before requests are answered
            try:
                self.client().list_buckets()
                return self
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def new_bucket(self) -> str:
        name = f"media-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str) -> dict[str, str]:
        """The media component's S3 settings for ``bucket`` (see the README)."""
        return {
            "MESSENGER_S3_ENDPOINT": self.endpoint,
            "MESSENGER_S3_REGION": REGION,
            "MESSENGER_S3_BUCKET": bucket,
            "MESSENGER_S3_ACCESS_KEY": ACCESS_KEY,
            "MESSENGER_S3_SECRET_KEY": SECRET_KEY,
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
