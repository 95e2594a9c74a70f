"""``python -m fastapi_ikstream watch``, run as a subprocess against a real uvicorn server."""

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from pydantic import BaseModel

from fastapi_ikstream import DeploymentError, StreamingRun
from fastapi_ikstream.__main__ import main

pytestmark = pytest.mark.timeout(60)


def png(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Job(BaseModel):
    steps: int = 3
    fail: bool = False
    cancel: bool = False
    silent: float = 0.0
    images: int = 1


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.headers = []

    @app.post("/stream")
    async def stream(job: Job, request: Request) -> Any:
        app.state.headers.append(dict(request.headers))

        async def run_job(on_progress: Any) -> list[dict[str, Any]]:
            for step in range(job.steps):
                on_progress(
                    state="STARTED",
                    eta=[500, 2000 * (job.steps - step)],
                    progress={"current": step + 1, "total": job.steps},
                )
                await asyncio.sleep(0.01)
            await asyncio.sleep(job.silent)
            on_progress(log={"level": "WARNING", "message": "low light"})
            if job.fail:
                raise DeploymentError("no face in the image", code="no_faces")
            if job.cancel:
                asyncio.get_running_loop().call_soon(run.cancel, "stopped by the operator")
                await asyncio.sleep(5)
            images = [{"image": png((12 + i, 9))} for i in range(job.images)]
            return [*images, {"DATA_DICT": {"faces": 2}}]

        run = StreamingRun(run_job, keep_alive=0)
        return run.to_response(accept=request.headers.get("accept"))

    @app.post("/guarded")
    async def guarded(request: Request) -> Any:
        if request.headers.get("authorization") != "Bearer good":
            raise HTTPException(401, detail="Missing or bad token.")
        raise HTTPException(429, detail="Too many runs.")

    return app


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = image.size
        return width, height


@pytest.fixture
def server(serve_app):
    with serve_app(make_app()) as running:
        yield running


def watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastapi_ikstream", "watch", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_completed_run_saves_the_image_and_prints_a_summary(server, tmp_path):
    output = tmp_path / "result.png"
    proc = watch(server.url + "/stream", "--json", '{"steps": 3}', "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    with Image.open(output) as image:
        assert image.format == "PNG"
        assert image.size == (12, 9)
    lines = proc.stdout.splitlines()
    assert "running (STARTED) 1/3 ETA 6s" in lines
    assert "running (STARTED) 3/3 ETA 2s" in lines
    assert "WARNING low light" in lines
    assert any(line.startswith("completed in ") and "2 output(s)" in line for line in lines)
    assert "  [0] image image/png 12x9, " in proc.stdout
    assert '  [1] DATA_DICT {"faces":2}' in lines
    assert f"saved {output} ({output.stat().st_size} bytes)" in lines


def test_json_lines_headers_token_and_save_dir(server, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"steps": 1, "images": 2}))
    proc = watch(
        server.url + "/stream",
        "--json",
        f"@{body}",
        "--jsonl",
        "--header",
        "X-Trace: abc",
        "--token",
        "t0k",
        "--save",
        str(tmp_path / "images"),
    )
    assert proc.returncode == 0, proc.stderr
    saved = sorted((tmp_path / "images").iterdir())
    assert [path.suffix for path in saved] == [".png", ".png"]
    assert [size_of(path) for path in saved] == [(12, 9), (13, 9)]
    headers = server.config.app.state.headers[-1]
    assert headers["accept"] == "application/jsonl"
    assert headers["x-trace"] == "abc"
    assert headers["authorization"] == "Bearer t0k"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"fail": True}, "run failed [no_faces]: no face in the image"),
        ({"cancel": True}, "run cancelled [cancelled]: stopped by the operator"),
    ],
)
def test_failed_or_cancelled_run_exits_1(server, body, message):
    proc = watch(server.url + "/stream", "--json", json.dumps(body))
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "WARNING low light" in proc.stdout


def test_http_error_before_the_stream_exits_3_with_the_json_body(server):
    proc = watch(server.url + "/guarded", "--json", "{}")
    assert proc.returncode == 3
    assert proc.stderr.startswith(f"HTTP 401 from {server.url}/guarded\n")
    assert json.loads(proc.stderr.split("\n", 1)[1]) == {"detail": "Missing or bad token."}
    limited = watch(server.url + "/guarded", "--json", "{}", "--token", "good")
    assert limited.returncode == 3
    assert '"detail": "Too many runs."' in limited.stderr


def test_timeout_and_unreachable_server_exit_4(server, tmp_path):
    silent = watch(
        server.url + "/stream", "--json", '{"steps": 1, "silent": 5}', "--timeout", "0.3"
    )
    assert silent.returncode == 4
    assert "StreamTimeoutError: the event stream sent nothing for 0.3 s" in silent.stderr
    with socket_without_listener() as port:
        refused = watch(f"http://127.0.0.1:{port}/stream", "--json", "{}")
    assert refused.returncode == 4
    assert "StreamConnectionError: could not reach" in refused.stderr


def test_output_without_an_image_exits_1(server, tmp_path):
    proc = watch(server.url + "/stream", "--json", '{"images": 0}', "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 1
    assert "no image output to save to --output" in proc.stdout
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["watch", "http://127.0.0.1:9/stream", "--json", "{not json"], "--json is not valid JSON"),
        (["watch", "http://127.0.0.1:9/stream", "--header", "no-colon"], "NAME:VALUE"),
        (["watch", "ftp://127.0.0.1:9/stream"], "must be http:// or https://"),
        (["watch", "http://127.0.0.1:9/stream", "--json", "@/nonexistent.json"], "cannot read"),
        (["watch", "http://127.0.0.1:9/stream", "--timeout", "0"], "--timeout must be > 0"),
        (["watch"], "the following arguments are required: url"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_usage_error_exits_2_as_a_process():
    proc = watch("http://127.0.0.1:9/stream", "--json", "[1,")
    assert proc.returncode == 2
    assert "--json is not valid JSON" in proc.stderr


class socket_without_listener:
    """A port on 127.0.0.1 that is bound but not listening: connections are refused."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_the_console_script_points_at_main():
    from importlib.metadata import entry_points

    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "ikstream"]
    assert script.load() is main
    assert Path(sys.executable).with_name("ikstream").exists()
