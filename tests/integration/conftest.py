"""Fixtures the integration tests of the publisher share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from libs.service.embedded import free_port
from tools.billing_sink import BillingSink


@pytest.fixture
async def sink() -> AsyncIterator[BillingSink]:
    """A billing sink on free ports, with a control port that survives refusals."""
    sink = BillingSink(port=free_port(), control_port=free_port())
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
