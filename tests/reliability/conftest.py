"""Reliability suite fixtures: every test gets an empty cache folder of its own (tests/conftest.py
already keeps the whole session out of the user's home and clears CIFARLAB_* settings)."""

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Empty per test: these tests inspect what the cache holds after a crash or a corrupt file."""
    monkeypatch.setenv("CIFARLAB_HOME", str(tmp_path / "home"))
