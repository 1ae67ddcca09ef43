"""Fixtures shared by the bridge tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge import KafkaTransport, MemoryTransport, Transport


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    """Each test that takes it runs on MemoryTransport and on the real broker."""
    if request.param == "memory":
        t: Transport = MemoryTransport()
    else:
        t = KafkaTransport({"bootstrap.servers": request.getfixturevalue("kafka_bootstrap")})
    yield t
    t.close()
