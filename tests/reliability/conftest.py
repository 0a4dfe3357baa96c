"""Reliability suite fixtures: every test gets a private cache folder and a clean environment."""

import pytest


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_HOME", str(tmp_path / "home"))
    for var in ("CIFARLAB_DATA", "CIFARLAB_TESTSET", "CIFARLAB_DEBUG"):
        monkeypatch.delenv(var, raising=False)
