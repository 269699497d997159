"""End-to-end tests run with blockbuster active: a blocking call on any event loop fails the test.

That covers the gateway itself: the ``gateway``/``client`` fixtures run the app (lifespan, handlers, database
and downstream calls) in the test's own event loop, and real servers in their threads' loops.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    with blockbuster_ctx() as bb:
        yield bb
