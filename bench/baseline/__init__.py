"""Baseline: a re-creation of the legacy gateway design, kept only to be measured against (see README.md)."""
