"""The private parts of ``ikomia-client`` that ``fastapi_ikstream._ikclient`` reads, checked
on the installed library's real objects: an upgrade that moves one fails here."""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

import httpx
import pytest
from ikclient.core.client import AsyncClient
from ikclient.core.results import Results
from packaging.version import Version

from fastapi_ikstream._ikclient import auth_of, auth_session, jwt_expiry, jwt_of, raw_outputs
from fastapi_ikstream._updates import results_of

OUTPUTS: list[dict[str, Any]] = [{"image": "aGVsbG8="}, {"DATA_DICT": {"label": "cat"}}]


def test_the_installed_version_is_in_the_range_the_adapter_was_written_for() -> None:
    version = Version(importlib.metadata.version("ikomia-client"))
    assert Version("0.4.1") <= version < Version("0.5")


def test_raw_outputs_of_real_results() -> None:
    results = Results("uuid-1", [], [dict(item) for item in OUTPUTS])
    assert raw_outputs(results) == OUTPUTS
    assert len(results) == len(OUTPUTS)  # the same list the library's own API reads
    assert results_of(results) == OUTPUTS
    assert raw_outputs({"results": OUTPUTS}) is None
    assert raw_outputs(object()) is None


async def test_the_jwt_state_of_a_real_client() -> None:
    client = AsyncClient("http://127.0.0.1:9/deployment", token="an-opaque-test-token")
    try:
        auth = auth_of(client)
        assert auth is not None
        assert callable(auth.jwt)
        assert jwt_of(auth) is None  # nothing fetched yet
        assert jwt_expiry(auth) is None
        session = auth_session(client)
        assert isinstance(session, httpx.Client)
        # what the library's own refresh writes (ScaleJwtAuth.jwt sets both)
        expires = time.time() + 300
        auth._jwt, auth._expires_at = "Bearer header.payload.sig", expires
        assert jwt_of(auth) == "header.payload.sig"
        assert jwt_expiry(auth) == pytest.approx(expires)
    finally:
        await client.aclose()
        session = auth_session(client)
        if session is not None:
            session.close()


def test_objects_of_another_shape_give_none() -> None:
    assert auth_of(object()) is None
    assert auth_session(object()) is None
    assert jwt_of(None) is None
    assert jwt_expiry(None) is None
