"""Naive async port: the legacy design moved to async the obvious way, kept only to be measured against (see
README.md)."""
