"""The example image workflow, run in-process through StreamingRun on real photographs."""

import asyncio
import base64
import time

import cv2
import numpy as np
import pytest

from example_app.workflow import (
    DEFAULT_PARAMETERS,
    SAMPLES,
    STAGES,
    FaceCannyWorkflow,
    StageTimes,
    parse_parameters,
    sample_base64,
    sample_data_url,
)
from fastapi_ikstream import EventType, RunState, RunStatus, StreamingRun
from fastapi_ikstream.errors import RunCancelledError

pytestmark = pytest.mark.timeout(60)


async def run_states(
    workflow: FaceCannyWorkflow, inputs: object, parameters: dict[str, object]
) -> list[RunState]:
    run = StreamingRun(workflow.open_run(inputs, parameters), raise_on_error=False)
    async with asyncio.timeout(20):
        return [state async for state in run.aiter_states()]


def decode(b64: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


def test_samples_ship_with_scikit_image() -> None:
    assert {"astronaut", "chelsea", "coffee", "rocket"} <= set(SAMPLES)
    for path in SAMPLES.values():
        assert path.is_file()
    raw = SAMPLES["astronaut"].read_bytes()
    assert base64.b64decode(sample_base64("astronaut")) == raw
    url = sample_data_url("rocket")
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == SAMPLES["rocket"].read_bytes()


async def test_astronaut_has_a_face() -> None:
    states = await run_states(FaceCannyWorkflow(), [sample_base64("astronaut")], {})
    result = states[-2]
    assert result.type is EventType.RESULT
    assert result.state == "SUCCESS"
    assert result.results is not None
    assert [next(iter(item)) for item in result.results] == [
        "image",
        "image",
        "OBJECT_DETECTION",
        "DATA_DICT",
    ]
    boxes = decode(result.results[0]["image"])
    edges = decode(result.results[1]["image"])
    data = result.results[3]["DATA_DICT"]
    assert boxes.shape == (data["height"], data["width"], 3) == (512, 512, 3)
    assert edges.shape == (512, 512)
    assert set(np.unique(edges)) <= {0, 255}
    assert np.count_nonzero(edges) > 1000
    detections = result.results[2]["OBJECT_DETECTION"]["detections"]
    faces = [det for det in detections if det["label"] == "face"]
    assert data["faces"] == len(faces) >= 1
    assert data["cats"] == 0
    assert set(data["timings_ms"]) == set(STAGES)
    face = faces[0]
    box = face["box"]
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= 512
    assert box["y"] >= 0
    assert box["y"] + box["height"] <= 512
    assert 0 < face["confidence"] < 1
    assert face["color"] == {"r": 0, "g": 200, "b": 83, "a": 255}
    # the box is drawn on output 0: its edge has the detection's colour (JPEG, so roughly)
    b, g, r = boxes[box["y"], box["x"] + box["width"] // 2].astype(int)
    assert g > 150
    assert r < 90
    assert b < 140


async def test_chelsea_has_a_cat_from_a_data_url() -> None:
    states = await run_states(FaceCannyWorkflow(), [sample_data_url("chelsea")], {})
    result = states[-2]
    assert result.results is not None
    data = result.results[3]["DATA_DICT"]
    assert data["cats"] >= 1
    assert data["faces"] == 0
    labels = {det["label"] for det in result.results[2]["OBJECT_DETECTION"]["detections"]}
    assert labels == {"cat"}


async def test_progress_logs_and_eta_per_stage_in_order() -> None:
    workflow = FaceCannyWorkflow()
    states = await run_states(
        workflow, [{"image": sample_base64("coffee")}], {"max_side": "256", "detect": "faces"}
    )
    assert [s.type for s in states[:1]] == [EventType.RUN]
    assert [s.type for s in states[-2:]] == [EventType.RESULT, EventType.DONE]
    progress = [s for s in states if s.type is EventType.PROGRESS]
    assert [s.state for s in progress] == ["PENDING"] + ["STARTED"] * (len(STAGES) + 1)
    assert [s.status for s in progress] == [RunStatus.QUEUED] + [RunStatus.RUNNING] * 6
    assert [p.progress.current for p in progress if p.progress] == [0, 0, 1, 2, 3, 4, 5]
    assert {p.progress.total for p in progress if p.progress} == {len(STAGES)}
    messages = [s.logs[0].message for s in progress if s.logs]
    assert [m.split(":")[0] for m in messages] == ["start", *STAGES]
    assert "faces: 0, cats: 0" in messages[3]
    assert "256x171 px" in messages[2]
    for state in progress:
        assert state.eta is not None
        low, high = state.eta
        assert low is not None
        assert high is not None
        assert 0 <= low <= high
    remaining = [s.eta[1] for s in progress[1:] if s.eta and s.eta[1] is not None]
    assert remaining == sorted(remaining, reverse=True)
    assert progress[-1].eta == (0, 0)
    assert states[-2].results is not None
    assert states[-2].results[3]["DATA_DICT"]["width"] == 256


async def test_eta_learns_from_measured_runs() -> None:
    workflow = FaceCannyWorkflow()
    first = await run_states(workflow, [sample_base64("rocket")], {"max_side": 128})
    assert workflow.times.samples == dict.fromkeys(STAGES, 1)
    second = await run_states(workflow, [sample_base64("rocket")], {"max_side": 128})
    assert workflow.times.samples == dict.fromkeys(STAGES, 2)
    assert first[1].eta is not None
    assert second[1].eta is not None
    (low1, high1), (low2, high2) = (first[1].eta, second[1].eta)
    assert low1 is not None
    assert high1 is not None
    assert low2 is not None
    assert high2 is not None
    assert high1 >= 5 * low1  # defaults: a wide, conservative band
    assert 1.5 * low2 <= high2 <= 2.5 * max(low2, 1)  # measured: a narrower one


def test_stage_times_scale_with_image_size_and_pacing() -> None:
    times = StageTimes(alpha=0.5)
    times.record("detect", 100.0, 0.25)  # 400 ms per megapixel
    assert times.eta([("detect", 0.5)]) == [150, 300]
    assert times.eta([("detect", 1.0)]) == [300, 600]
    assert times.eta([("detect", 1.0)], delay_ms=200) == [500, 800]
    times.record("detect", 200.0, 0.25)  # 800 ms per megapixel; the average moves halfway
    assert times.eta([("detect", 1.0)]) == [450, 900]
    unmeasured = times.eta([("detect", 1.0), ("edges", 1.0)])
    assert unmeasured[1] >= 5 * unmeasured[0]
    assert times.samples["detect"] == 2


async def test_pacing_is_counted_in_the_eta() -> None:
    workflow = FaceCannyWorkflow()
    params = {"max_side": 64, "stage_delay_ms": 40, "detect": "none"}
    started = time.perf_counter()
    states = await run_states(workflow, [sample_base64("coffee")], params)
    assert time.perf_counter() - started >= 5 * 0.04
    assert states[1].eta is not None
    assert (states[1].eta[0] or 0) >= 5 * 40
    assert states[-2].type is EventType.RESULT


async def test_cancel_between_stages_stops_the_work() -> None:
    workflow = FaceCannyWorkflow()
    params = {"max_side": 128, "stage_delay_ms": 150}
    run = StreamingRun(workflow.open_run([sample_base64("astronaut")], params))
    seen: list[RunState] = []

    async def read() -> None:
        async with asyncio.timeout(10):
            async for state in run.aiter_states():
                seen.append(state)
                if state.progress is not None and state.progress.current == 1:
                    run.cancel("stopped by the test")

    with pytest.raises(RunCancelledError):
        await read()
    assert [s.type for s in seen[-2:]] == [EventType.CANCELLED, EventType.DONE]
    assert seen[-2].error is not None
    assert seen[-2].error.message == "stopped by the test"
    await asyncio.sleep(0.4)  # longer than two stage delays: nothing ran on
    assert workflow.times.samples == {**dict.fromkeys(STAGES, 0), "decode": 1}
    assert max(s.progress.current for s in seen if s.progress) == 1


async def test_the_event_loop_stays_free_during_a_stage() -> None:
    workflow = FaceCannyWorkflow()
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    states = await run_states(workflow, [sample_base64("astronaut")], {"detect": "faces,cats"})
    stop.set()
    await task
    detect_ms = states[-2].results[3]["DATA_DICT"]["timings_ms"]["detect"]  # type: ignore[index]
    assert detect_ms > 40  # long enough that blocking the loop would show
    assert max(gaps) * 1000 < detect_ms


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["not base64 at all!"], "not a base64 image"),
        ([base64.b64encode(b"hello, not an image").decode()], "could not be decoded"),
        (["https://example.com/cat.png"], "not URLs"),
        ([], "exactly one image"),
        ([sample_base64("rocket"), sample_base64("rocket")], "exactly one image"),
    ],
)
async def test_bad_inputs_fail_the_run(inputs: list[str], message: str) -> None:
    states = await run_states(FaceCannyWorkflow(), inputs, {})
    assert [s.type for s in states[-2:]] == [EventType.FAILED, EventType.DONE]
    error = states[-2].error
    assert error is not None
    assert error.code == "invalid_input"
    assert message in error.message
    assert not error.retryable


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"canny_low": "abc"}, "'canny_low' must be a number"),
        ({"canny_low": 300, "canny_high": 200}, "must not exceed"),
        ({"max_side": 10}, "between 32 and 4096"),
        ({"stage_delay_ms": 60_000}, "between 0 and 2000"),
        ({"detect": "faces,dogs"}, "'dogs'"),
        ({"threshold": 1}, "Unknown parameter 'threshold'"),
    ],
)
async def test_bad_parameters_fail_the_run(parameters: dict[str, object], message: str) -> None:
    states = await run_states(FaceCannyWorkflow(), [sample_base64("rocket")], parameters)
    error = states[-2].error
    assert states[-2].type is EventType.FAILED
    assert error is not None
    assert error.code == "invalid_parameters"
    assert message in error.message


def test_parameters_accept_strings_and_numbers() -> None:
    assert parse_parameters({}) == parse_parameters(DEFAULT_PARAMETERS)
    settings = parse_parameters(
        {
            "canny_low": 10,
            "canny_high": "20.0",
            "max_side": 300.0,
            "detect": " Cats ",
            "task_name": "x",
        }
    )
    assert (settings.canny_low, settings.canny_high, settings.max_side) == (10, 20, 300)
    assert settings.detect == ("cats",)
    assert parse_parameters({"detect": "none"}).detect == ()
    assert parse_parameters({"detect": "cats,faces"}).detect == ("faces", "cats")
