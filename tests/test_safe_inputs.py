"""Request inputs become images only by explicit decoding; a string never names a file.

``ikomia-client`` reads a plain string input as a path on the server. These tests post
server paths to the example app and to a router over `IkomiaDeployment`, and check what
reaches the SCALE-protocol server: never the file, only decoded bytes.
"""

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from example_app.main import API_PATH, create_app
from example_app.scale_server import create_scale_app
from example_app.workflow import sample_data_url
from fastapi_ikstream import DeploymentError, StreamingRun
from fastapi_ikstream.ikomia import STORAGE_URL_PREFIXES, IkomiaDeployment, to_scale_input

pytestmark = pytest.mark.timeout(60)

HOSTILE = [
    "/etc/passwd",
    "../../etc/passwd",
    "photo.png",
    "./images/cat.jpg",
    "file:///etc/passwd",
    "~/.ssh/id_rsa",
    "C:\\Windows\\win.ini",
]


def asgi_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.mark.parametrize("path", HOSTILE)
def test_to_scale_input_refuses_paths(path: str) -> None:
    with pytest.raises(DeploymentError) as caught:
        to_scale_input(path)
    assert caught.value.code == "invalid_input"
    assert path not in str(caught.value)


def test_a_path_that_is_also_valid_base64_is_decoded_never_opened(tmp_path: Path) -> None:
    # "tmp/abcd" is 8 base64 characters: it is decoded as data, not read as a file.
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "abcd").write_bytes(b"secret file content")
    item = to_scale_input("tmp/abcd")
    assert item == {"image": "tmp/abcd"}
    assert base64.b64decode(item["image"]) != b"secret file content"


def test_inputs_that_are_neither_strings_nor_objects_are_refused() -> None:
    for item in [("inputs", ["x"]), 42, None]:
        with pytest.raises(DeploymentError) as caught:
            to_scale_input(item)  # type: ignore[arg-type]
        assert caught.value.code == "invalid_input"


def test_storage_urls_are_checked_against_the_allowed_prefixes() -> None:
    allowed = ("https://storage.example/",)
    url = "https://storage.example/bucket/cat.png"
    assert to_scale_input(url, allowed_urls=allowed) == {
        "storage_object": {"url": url, "data_type": "image"}
    }
    for other in ["https://169.254.169.254/latest/meta-data", "s3://other/cat.png"]:
        with pytest.raises(DeploymentError, match="not allowed"):
            to_scale_input(other, allowed_urls=allowed)
    with pytest.raises(DeploymentError, match="not allowed"):
        to_scale_input(url, allowed_urls=())
    assert to_scale_input("s3://b/k")["storage_object"]["url"] == "s3://b/k"
    assert "https://" in STORAGE_URL_PREFIXES


async def test_the_example_app_answers_422_for_server_paths() -> None:
    unused = IkomiaDeployment("http://127.0.0.1:9/unused", token="unused")
    app = create_app(deployment=unused, rate_limit="1000/minute")
    async with asgi_client(app) as client:
        login = await client.post("/api/login", json={"name": "probe"})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        for path in HOSTILE:
            response = await client.post(
                f"{API_PATH}/stream", json={"inputs": [path]}, headers=headers
            )
            assert response.status_code == 422, path
            assert response.headers["content-type"] == "application/json"
            response = await client.get(
                f"{API_PATH}/stream", params={"inputs": path}, headers=headers
            )
            assert response.status_code == 422, path
            response = await client.post(
                f"{API_PATH}/stream", json={"inputs": [{"image": path}]}, headers=headers
            )
            assert response.status_code == 422, path
    assert app.state.deployment.counts == {}


async def test_what_reaches_the_deployment_is_decoded_bytes(
    serve_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scale = create_scale_app(token="t", poll_ms=20)
    received: list[bytes] = []

    @scale.middleware("http")
    async def record(request: Any, call_next: Any) -> Any:
        received.append(await request.body())
        return await call_next(request)

    with serve_app(scale) as server:
        monkeypatch.setenv("IKOMIA_URL", server.url)  # the token service, as ikclient reads it
        async with IkomiaDeployment(server.url, token="t", allowed_urls=()) as deployment:
            # past any request model (a router with a model of its own): refused in the run
            for item in [{"image": "/etc/passwd"}, "/etc/passwd", "https://storage.example/a"]:
                run = StreamingRun(deployment.open_run([item], {}), raise_on_error=False)
                states = [state async for state in run.aiter_states()]
                assert states[-2].error is not None
                assert states[-2].error.code == "invalid_input"

            app = create_app(deployment=deployment)
            async with asgi_client(app) as client:
                login = await client.post("/api/login", json={"name": "probe"})
                headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
                body = {"inputs": [sample_data_url("coffee")], "parameters": {"max_side": 64}}
                async with aconnect_sse(
                    client, "POST", f"{API_PATH}/stream", json=body, headers=headers
                ) as source:
                    kinds = [event.event async for event in source.aiter_sse()]
            assert kinds[-2:] == ["result", "done"]
    assert received
    assert not any(b"/etc/passwd" in body for body in received)
    assert not any(b"storage.example" in body for body in received)
