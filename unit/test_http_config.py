"""`kakeya serve`'s HTTP flags: off by default, on loopback, KAKEYA_* fallbacks, and no open
non-loopback HTTP without API keys."""

from __future__ import annotations

import os

import pytest

from kakeya.runtime.common.config import HttpConfig, RuntimeConfig, ServerConfig
from kakeya.runtime.server import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("KAKEYA_"):
            monkeypatch.delenv(name)


def config(*argv: str) -> RuntimeConfig:
    return cli.config_from_args(cli.build_parser().parse_args(["serve", *argv]))


def test_http_is_off_by_default_and_on_loopback_when_enabled():
    assert config().http == HttpConfig()
    assert config().http.port is None
    http = config("--http-port", "8000").http
    assert (http.host, http.port, http.reuse_sessions) == ("127.0.0.1", 8000, True)


def test_http_flags_and_their_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("KAKEYA_HTTP_PORT", "8100")
    monkeypatch.setenv("KAKEYA_HTTP_REUSE_SESSIONS", "0")
    http = config("--http-chat-template", "/tmp/t.jinja").http
    assert (http.port, http.reuse_sessions, http.chat_template) == (8100, False, "/tmp/t.jinja")
    assert config("--http-port", "8200").http.port == 8200  # the flag wins


def test_a_non_loopback_http_host_needs_api_keys():
    with pytest.raises(ValueError, match="HTTP"):
        RuntimeConfig(http=HttpConfig(host="0.0.0.0", port=8000))
    RuntimeConfig(server=ServerConfig(api_keys=("k",)), http=HttpConfig(host="0.0.0.0", port=8000))
    RuntimeConfig(server=ServerConfig(allow_insecure_bind=True), http=HttpConfig(host="0.0.0.0", port=8000))
    RuntimeConfig(http=HttpConfig(host="0.0.0.0"))  # HTTP off: nothing is exposed


@pytest.mark.parametrize("kwargs", [dict(port=70000), dict(port=-1), dict(max_body_bytes=0)])
def test_bad_http_settings_fail_at_startup(kwargs):
    with pytest.raises(ValueError):
        HttpConfig(**kwargs)
