"""The test helpers themselves: `require` skips on a developer machine and fails under CI=true."""

import pytest

from testdata import require, require_module


def test_require_passes_when_the_condition_holds(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require("/usr/bin/chromium", "no chromium")  # returns, nothing raised


def test_require_skips_with_the_reason_off_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        require(None, "no chromium")


def test_require_fails_with_the_reason_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but this test cannot run: no chromium"):
        require(None, "no chromium")


def test_require_module(monkeypatch):
    assert require_module("json", "json missing").dumps([]) == "[]"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not_a_module_xyz not installed"):
        require_module("not_a_module_xyz", "not_a_module_xyz not installed")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="not_a_module_xyz not installed"):
        require_module("not_a_module_xyz", "not_a_module_xyz not installed")
