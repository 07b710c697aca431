"""The servers the test command starts answer (the messaging core builds on Cassandra)."""

from __future__ import annotations

import os

import pytest


@pytest.mark.cassandra
def test_cassandra_answers_cql():
    from cassandra.cluster import Cluster

    hostport = os.environ.get("MESSENGER_TEST_CASSANDRA")
    if not hostport:
        pytest.fail("MESSENGER_TEST_CASSANDRA is not set: start the test servers with `scripts/services.sh up`")
    host, port = hostport.rsplit(":", 1)
    cluster = Cluster([host], port=int(port), connect_timeout=10)
    try:
        session = cluster.connect()
        version = session.execute("SELECT release_version FROM system.local").one()[0]
        assert version.startswith("5.0.")
    finally:
        cluster.shutdown()
