"""Reference downstream for development, end-to-end, fault and load tests.

NOT PRODUCT CODE. ``devstack`` is a small, in-memory, single-process stand-in for the three downstream
services the gateway talks to (auth, RAG, question generation; SPEC section 4). It exists so that
``make run``, the end-to-end and fault tests and the benchmarks have a fast, deterministic peer with
fault-injection knobs. It has no persistence, no security and no real retrieval or language model; never
deploy it in front of real users. See ``devstack/README.md``.
"""

from devstack.app import create_app
from devstack.settings import DevstackSettings

__all__ = ["DevstackSettings", "create_app"]
