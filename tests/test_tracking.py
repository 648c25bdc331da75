import socket
import time

import pytest
from omegaconf import OmegaConf

from sparsect.errors import InputError
from sparsect.tracking import tracking_uri


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again once the socket is released


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    cfg = OmegaConf.create({"logger": {"tracking_uri": "sqlite:///mlflow.db"}})
    start = time.monotonic()
    with pytest.raises(InputError, match="unreachable"):
        tracking_uri(cfg)
    assert time.monotonic() - start < 5


def test_local_store_needs_no_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = OmegaConf.create({"logger": {"tracking_uri": "sqlite:///mlflow.db"}})
    assert tracking_uri(cfg) == "sqlite:///mlflow.db"
