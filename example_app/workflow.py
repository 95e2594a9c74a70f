"""A real image workflow, run in-process: decode → resize → detect → edges → encode.

`FaceCannyWorkflow` is a package `Deployment`: ``open_run(inputs, parameters)`` returns an
async iterator of update dicts that `fastapi_ikstream.StreamingRun` turns into run states.

Stages, each run in a worker thread (``asyncio.to_thread``) so the event loop stays free
and a cancelled run stops before the next stage:

1. ``decode``: base64 or a ``data:`` URL → pixels (OpenCV).
2. ``resize``: the longer side bounded by ``max_side``; grayscale copy for the next stages.
3. ``detect``: human frontal faces and cat faces with the Haar cascades that
   ``opencv-python-headless`` 4.x ships in ``cv2.data.haarcascades``.
4. ``edges``: Canny edges.
5. ``encode``: the input with detection boxes drawn (JPEG) and the edges (PNG), as base64.

Each stage reports ``progress`` (``{"current": stages done, "total": 5}``), one log line
(e.g. ``"detect: faces: 1, cats: 0 in …ms"``) and an ETA ``[min, max]`` in
milliseconds, estimated from the stage times measured on earlier runs (running averages of
milliseconds per unit of work, scaled by the image size; the first run uses conservative
defaults). State words follow Ikomia's: ``PENDING``, ``STARTED``, ``SUCCESS``.

Parameters (strings or numbers, as Ikomia sends them):

- ``canny_low``, ``canny_high``: Canny hysteresis thresholds, 0 to 1000. Default 100, 200.
- ``max_side``: longest side after resizing, in pixels, 32 to 4096. Default 1024.
- ``detect``: comma-separated ``faces``, ``cats``; empty or ``none`` for none.
  Default ``"faces,cats"``.
- ``stage_delay_ms``: an artificial pause before each stage, in milliseconds, 0 to 2000.
  Default 0. It only paces the run (so that a browser can watch progress move); it is
  counted in the ETA.

Results, in Ikomia SCALE's form::

    [{"image": "<base64 JPEG: the input with boxes>"},
     {"image": "<base64 PNG: Canny edges>"},
     {"OBJECT_DETECTION": {"detections": [{"box": {"x", "y", "width", "height"},
        "color": {"r", "g", "b", "a"}, "confidence", "id", "label"}],
        "referenceImageIndex": 0}},
     {"DATA_DICT": {"faces": n, "cats": m, "width": w, "height": h, "timings_ms": {...}}}]

Boxes are in the pixels of the resized image (output 0). ``confidence`` is ``n / (n + k)``,
where ``n`` is the number of raw detections merged into the box and ``k`` the cascade's
``minNeighbors``.

Sample photographs come from scikit-image's wheel (``skimage/data``), nothing is
downloaded: see `SAMPLES` and `sample_base64`. ``python -m example_app.workflow`` runs the
workflow on each sample and prints the measured stage times.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import cv2.data
import numpy as np

from fastapi_ikstream import DeploymentError
from fastapi_ikstream.models import decode_image_input

__all__ = [
    "DEFAULT_PARAMETERS",
    "SAMPLES",
    "STAGES",
    "TASK_NAME",
    "FaceCannyWorkflow",
    "Settings",
    "StageTimes",
    "parse_parameters",
    "sample_base64",
    "sample_data_url",
]

TASK_NAME = "infer_face_canny"
STAGES: tuple[str, ...] = ("decode", "resize", "detect", "edges", "encode")
DEFAULT_PARAMETERS: dict[str, str] = {
    "canny_low": "100",
    "canny_high": "200",
    "max_side": "1024",
    "detect": "faces,cats",
    "stage_delay_ms": "0",
}
MAX_STAGE_DELAY_MS = 2000


def _skimage_data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('scikit-image is not installed: pip install "fastapi-ikstream[example]"')
    return Path(next(iter(spec.submodule_search_locations))) / "data"


_DATA = _skimage_data_dir()
SAMPLES: dict[str, Path] = {
    "astronaut": _DATA / "astronaut.png",
    "chelsea": _DATA / "chelsea.png",
    "coffee": _DATA / "coffee.png",
    "rocket": _DATA / "rocket.jpg",
}
"""Sample photographs shipped in scikit-image's wheel: name → file path.

``astronaut`` shows a human face, ``chelsea`` a cat, ``coffee`` a cup, ``rocket`` a launch pad.
"""

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def sample_base64(name: str) -> str:
    """A sample photograph as raw base64 (no ``data:`` prefix).

    Raises:
        KeyError: ``name`` is not in `SAMPLES`.
    """
    return base64.b64encode(SAMPLES[name].read_bytes()).decode("ascii")


def sample_data_url(name: str) -> str:
    """A sample photograph as a ``data:image/...;base64,...`` URL.

    Raises:
        KeyError: ``name`` is not in `SAMPLES`.
    """
    mime = _MIME.get(SAMPLES[name].suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64,{sample_base64(name)}"


# -- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Validated parameters of one run (see the module docstring for meanings and ranges)."""

    canny_low: int = 100
    canny_high: int = 200
    max_side: int = 1024
    detect: tuple[str, ...] = ("faces", "cats")
    stage_delay_ms: int = 0


def _invalid(message: str) -> DeploymentError:
    return DeploymentError(message, code="invalid_parameters")


def _int_param(parameters: Mapping[str, Any], name: str, low: int, high: int) -> int:
    raw = parameters.get(name, DEFAULT_PARAMETERS[name])
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise _invalid(f"Parameter {name!r} must be a number, got {str(raw)[:40]!r}.") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise _invalid(f"Parameter {name!r} must be between {low} and {high}.")
    return round(value)


def parse_parameters(parameters: Mapping[str, Any]) -> Settings:
    """Validate a run's parameters (strings or numbers) into `Settings`.

    Unknown names are refused; ``task_name`` is ignored (the router may pass it along).

    Raises:
        DeploymentError: code ``invalid_parameters``, with a message naming the parameter.
    """
    unknown = sorted(set(parameters) - set(DEFAULT_PARAMETERS) - {"task_name"})
    if unknown:
        known = ", ".join(DEFAULT_PARAMETERS)
        raise _invalid(f"Unknown parameter {unknown[0][:40]!r}; known: {known}.")
    low = _int_param(parameters, "canny_low", 0, 1000)
    high = _int_param(parameters, "canny_high", 0, 1000)
    if low > high:
        raise _invalid("Parameter 'canny_low' must not exceed 'canny_high'.")
    raw_detect = str(parameters.get("detect", DEFAULT_PARAMETERS["detect"])).strip().lower()
    kinds = [part.strip() for part in raw_detect.split(",") if part.strip()]
    if kinds == ["none"]:
        kinds = []
    for kind in kinds:
        if kind not in _DETECTORS:
            raise _invalid(
                f"Parameter 'detect' takes 'faces', 'cats' or 'none', not {kind[:40]!r}."
            )
    return Settings(
        canny_low=low,
        canny_high=high,
        max_side=_int_param(parameters, "max_side", 32, 4096),
        detect=tuple(kind for kind in _DETECTORS if kind in kinds),
        stage_delay_ms=_int_param(parameters, "stage_delay_ms", 0, MAX_STAGE_DELAY_MS),
    )


# -- stage timing and ETA --------------------------------------------------------------------

# Milliseconds per unit of work before any run was measured (decode: per MB of encoded
# input; resize: per source megapixel; detect: per resized megapixel and cascade; edges,
# encode: per resized megapixel). They
# are several times what `python -m example_app.workflow` measures on a laptop core, so a
# first ETA errs on the long side.
_DEFAULT_MS_PER_UNIT: dict[str, float] = {
    "decode": 60.0,
    "resize": 20.0,
    "detect": 750.0,
    "edges": 20.0,
    "encode": 60.0,
}
_MIN_UNITS = 0.01


class StageTimes:
    """Running averages of each stage's cost, in milliseconds per unit of work.

    A unit is a megabyte of encoded input for ``decode``, a source megapixel for ``resize``,
    a resized megapixel per cascade for ``detect``, and a resized megapixel for ``edges``
    and ``encode``. Averages are exponential (weight ``alpha``
    for the newest run), so the ETA follows a machine that gets busier or quieter.

    Args:
        alpha: weight of the newest measurement, in (0, 1]. Default 0.3.

    Attributes:
        samples: how many times each stage has completed.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self._rate: dict[str, float] = {}
        self.samples: dict[str, int] = dict.fromkeys(STAGES, 0)

    def record(self, stage: str, ms: float, units: float) -> None:
        """Add one measurement: ``stage`` took ``ms`` milliseconds for ``units`` of work.

        A stage that had no work (``units`` 0, e.g. no cascade to run) is counted in
        `samples` but leaves its average alone.
        """
        self.samples[stage] = self.samples.get(stage, 0) + 1
        if units <= 0:
            return
        rate = ms / max(units, _MIN_UNITS)
        previous = self._rate.get(stage)
        self._rate[stage] = rate if previous is None else previous + self.alpha * (rate - previous)

    def eta(self, remaining: Sequence[tuple[str, float]], delay_ms: float = 0.0) -> list[int]:
        """Estimate ``[min, max]`` milliseconds for the ``(stage, units)`` still to run.

        Stages measured before give a band of 0.75 to 1.5 times the estimate; if any stage was
        never measured, the band widens to 0.5 to 3 times its conservative default.

        Args:
            remaining: the stages still to run, with their expected units of work.
            delay_ms: artificial pacing still to come, added to both bounds.
        """
        total = 0.0
        measured = True
        for stage, units in remaining:
            rate = self._rate.get(stage)
            if rate is None:
                measured = False
                rate = _DEFAULT_MS_PER_UNIT[stage]
            total += rate * max(units, _MIN_UNITS)
        low, high = (0.75, 1.5) if measured else (0.5, 3.0)
        return [int(total * low + delay_ms), math.ceil(total * high + delay_ms)]


# -- the stages (pure functions, run in worker threads) ---------------------------------------


@dataclass(frozen=True)
class _Detector:
    file: str
    label: str
    rgb: tuple[int, int, int]
    min_neighbors: int


_DETECTORS: dict[str, _Detector] = {
    "faces": _Detector("haarcascade_frontalface_default.xml", "face", (0, 200, 83), 5),
    "cats": _Detector("haarcascade_frontalcatface_extended.xml", "cat", (255, 145, 0), 3),
}
_local = threading.local()  # CascadeClassifier objects are not shared between threads


def _cascade(file: str) -> cv2.CascadeClassifier:
    cache: dict[str, cv2.CascadeClassifier] | None = getattr(_local, "cascades", None)
    if cache is None:
        cache = _local.cascades = {}
    classifier = cache.get(file)
    if classifier is None:
        classifier = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / file))
        if classifier.empty():
            raise RuntimeError(f"OpenCV's cascade {file} is missing (opencv-python-headless 4.x)")
        cache[file] = classifier
    return classifier


def _input_of(inputs: Any) -> str | dict[str, Any]:
    items = [inputs] if isinstance(inputs, str | dict) else list(inputs or [])
    if len(items) != 1:
        raise DeploymentError(
            f"This workflow takes exactly one image input, got {len(items)}.",
            code="invalid_input",
        )
    item = items[0]
    if not isinstance(item, str | dict):
        raise DeploymentError(
            "An input is a base64 string or {'image': ...}.", code="invalid_input"
        )
    return item


def _decode(item: str | dict[str, Any]) -> tuple[np.ndarray, int]:
    try:
        data = decode_image_input(item)
    except ValueError:
        raise DeploymentError(
            "The input is not a base64 image or a data: URL.", code="invalid_input"
        ) from None
    if isinstance(data, str):
        raise DeploymentError(
            "This workflow takes images as base64 or data: URLs, not URLs.", code="invalid_input"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise DeploymentError("The input could not be decoded as an image.", code="invalid_input")
    return image, len(data)


def _resize(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _detect(gray: np.ndarray, kinds: Sequence[str]) -> list[dict[str, Any]]:
    detections: list[dict[str, Any]] = []
    for kind in kinds:
        spec = _DETECTORS[kind]
        boxes, counts = _cascade(spec.file).detectMultiScale2(
            gray, scaleFactor=1.1, minNeighbors=spec.min_neighbors, minSize=(24, 24)
        )
        for (x, y, w, h), n in zip(boxes, counts, strict=True):
            r, g, b = spec.rgb
            detections.append(
                {
                    "box": {"x": int(x), "y": int(y), "width": int(w), "height": int(h)},
                    "color": {"r": r, "g": g, "b": b, "a": 255},
                    "confidence": round(int(n) / (int(n) + spec.min_neighbors), 3),
                    "id": len(detections),
                    "label": spec.label,
                }
            )
    return detections


def _edges(gray: np.ndarray, low: int, high: int) -> np.ndarray:
    return cv2.Canny(gray, low, high)


def _encode(
    image: np.ndarray, edges: np.ndarray, detections: Sequence[dict[str, Any]]
) -> tuple[str, str, int]:
    annotated = image.copy()
    thickness = max(2, round(max(image.shape[:2]) / 300))
    for det in detections:
        box, color = det["box"], det["color"]
        bgr = (color["b"], color["g"], color["r"])
        top_left = (box["x"], box["y"])
        bottom_right = (box["x"] + box["width"], box["y"] + box["height"])
        cv2.rectangle(annotated, top_left, bottom_right, bgr, thickness)
        label_at = (box["x"], max(12, box["y"] - 6))
        cv2.putText(annotated, det["label"], label_at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, bgr, 1)
    ok_jpg, jpg = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ok_png, png = cv2.imencode(".png", edges)
    if not (ok_jpg and ok_png):
        raise RuntimeError("OpenCV could not encode the output images")
    size = int(jpg.nbytes + png.nbytes)
    return (
        base64.b64encode(jpg.tobytes()).decode("ascii"),
        base64.b64encode(png.tobytes()).decode("ascii"),
        size,
    )


# -- the workflow -------------------------------------------------------------------------------

T = TypeVar("T")


class FaceCannyWorkflow:
    """Decode → resize → face and cat detection → Canny edges → encode, in-process.

    A `fastapi_ikstream.Deployment`: ``open_run`` returns an async iterator of updates, so
    ``StreamingRun(workflow.open_run(inputs, parameters))`` streams a run. One instance keeps
    its measured stage times (`times`) across runs for its ETAs; share it between runs.

    Example::

        workflow = FaceCannyWorkflow()
        run = StreamingRun(workflow.open_run([sample_base64("astronaut")], {"max_side": 512}))
        async for state in run.aiter_states():
            print(state.type, state.progress, state.eta)

    Args:
        name: the task name shown over the SCALE protocol. Default ``"infer_face_canny"``.

    Attributes:
        task_name: the task name.
        default_parameters: parameter names and their defaults, as strings.
        times: the running stage-time averages behind the ETA.
    """

    def __init__(self, name: str = TASK_NAME) -> None:
        self.name = name
        self.task_name = name
        self.default_parameters = dict(DEFAULT_PARAMETERS)
        self.times = StageTimes()

    def open_run(self, inputs: Any, parameters: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Describe one run; it starts when the returned iterator is read.

        Args:
            inputs: one image: a list holding a base64 string, a ``data:`` URL or
                ``{"image": "<base64>"}`` (or that item alone).
            parameters: see the module docstring.

        Returns:
            An async iterator of update dicts (``state``, ``eta``, ``progress``, ``logs``),
            ending with one that carries ``results``. Invalid inputs or parameters end it
            with `DeploymentError` (codes ``invalid_input``, ``invalid_parameters``).
        """
        return self._run(inputs, dict(parameters))

    async def _stage(
        self,
        stage: str,
        units: float,
        timings: dict[str, float],
        fn: Callable[..., T],
        *args: Any,
    ) -> T:
        started = time.perf_counter()
        value = await asyncio.to_thread(fn, *args)
        ms = (time.perf_counter() - started) * 1000
        timings[stage] = round(ms, 1)
        self.times.record(stage, ms, units)
        return value

    async def _run(self, inputs: Any, parameters: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        settings = parse_parameters(parameters)
        item = _input_of(inputs)
        total = len(STAGES)
        delay = settings.stage_delay_ms / 1000
        timings: dict[str, float] = {}
        encoded = item if isinstance(item, str) else str(item.get("image", ""))
        in_mb = len(encoded) * 3 / 4 / 1e6
        guess_mp = min(settings.max_side**2, 1 << 20) / 1e6
        cascades = len(settings.detect)

        def eta(done: int, source_mp: float, work_mp: float) -> list[int]:
            units = {"decode": in_mb, "resize": source_mp, "detect": work_mp * cascades}
            remaining = [(stage, units.get(stage, work_mp)) for stage in STAGES[done:]]
            return self.times.eta(remaining, settings.stage_delay_ms * (total - done))

        def update(done: int, log: str, eta_ms: list[int]) -> dict[str, Any]:
            return {
                "state": "STARTED",
                "progress": {"current": done, "total": total},
                "logs": [log],
                "eta": eta_ms,
            }

        yield {
            "state": "PENDING",
            "progress": {"current": 0, "total": total},
            "eta": eta(0, guess_mp, guess_mp),
        }
        start_log = (
            f"start: max_side={settings.max_side}, detect={','.join(settings.detect) or 'none'}, "
            f"canny={settings.canny_low}/{settings.canny_high}"
        )
        yield update(0, start_log, eta(0, guess_mp, guess_mp))

        await asyncio.sleep(delay)
        image, nbytes = await self._stage("decode", in_mb, timings, _decode, item)
        source_h, source_w = image.shape[:2]
        source_mp = source_w * source_h / 1e6
        work_mp = min(source_mp, settings.max_side**2 / 1e6)
        kb = nbytes / 1000
        log = f"decode: {source_w}x{source_h} px from {kb:.0f} kB in {timings['decode']} ms"
        yield update(1, log, eta(1, source_mp, work_mp))

        await asyncio.sleep(delay)
        image, gray = await self._stage(
            "resize", source_mp, timings, _resize, image, settings.max_side
        )
        height, width = image.shape[:2]
        work_mp = width * height / 1e6
        yield update(
            2, f"resize: {width}x{height} px in {timings['resize']} ms", eta(2, 0, work_mp)
        )

        await asyncio.sleep(delay)
        detections = await self._stage(
            "detect", work_mp * cascades, timings, _detect, gray, settings.detect
        )
        faces = sum(1 for det in detections if det["label"] == "face")
        cats = sum(1 for det in detections if det["label"] == "cat")
        log = f"detect: faces: {faces}, cats: {cats} in {timings['detect']} ms"
        yield update(3, log, eta(3, 0, work_mp))

        await asyncio.sleep(delay)
        edges = await self._stage(
            "edges", work_mp, timings, _edges, gray, settings.canny_low, settings.canny_high
        )
        share = float(np.count_nonzero(edges)) / max(edges.size, 1) * 100
        log = f"edges: {share:.1f}% edge pixels in {timings['edges']} ms"
        yield update(4, log, eta(4, 0, work_mp))

        await asyncio.sleep(delay)
        boxes_b64, edges_b64, size = await self._stage(
            "encode", work_mp, timings, _encode, image, edges, detections
        )
        log = f"encode: 2 images, {size / 1000:.0f} kB in {timings['encode']} ms"
        yield update(5, log, [0, 0])

        yield {
            "state": "SUCCESS",
            "eta": [0, 0],
            "results": [
                {"image": boxes_b64},
                {"image": edges_b64},
                {"OBJECT_DETECTION": {"detections": detections, "referenceImageIndex": 0}},
                {
                    "DATA_DICT": {
                        "faces": faces,
                        "cats": cats,
                        "width": width,
                        "height": height,
                        "timings_ms": timings,
                    }
                },
            ],
        }


async def _bench() -> None:  # pragma: no cover - a command for people, not a test
    from fastapi_ikstream import StreamingRun

    workflow = FaceCannyWorkflow()
    for name in SAMPLES:
        for _ in range(3):
            run = StreamingRun(workflow.open_run([sample_base64(name)], {}))
            async for state in run.aiter_states():
                if state.results:
                    data = state.results[3]["DATA_DICT"]
        print(
            f"{name}: {data['width']}x{data['height']} px, faces {data['faces']}, "
            f"cats {data['cats']}, stage ms {data['timings_ms']}"
        )


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_bench())
