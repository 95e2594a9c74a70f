r"""``python -m fastapi_ikstream watch URL``: follow a run in the terminal (extra ``client``).

Shows a live progress bar (status, progress, the server's ETA), prints log lines as they
come, saves image outputs, and prints a summary of the results. Example::

    python -m fastapi_ikstream watch http://127.0.0.1:8000/api/detect/stream \
        --json '{"inputs": ["https://example.com/cat.jpg"]}' --token "$TOKEN" -o out.png

Exit codes: 0 the run completed; 1 it failed or was cancelled (or ``--output`` found no
image); 2 a usage error; 3 an HTTP error before the stream (its JSON body is printed);
4 a timeout, a connection error or a broken stream; 130 interrupted (the connection is
closed, which cancels the run on the server).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._exceptions import MissingExtraError, RunCancelledError, RunFailedError
from ._models import EventType, RunState

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from .client import Results

__all__ = ["main"]

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_HTTP = 3
EXIT_STREAM = 4
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fastapi_ikstream",
        description="Follow fastapi-ikstream runs from the terminal.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    watch = commands.add_parser(
        "watch",
        help="start a run on a stream endpoint and follow it",
        description="Start a run and show its progress, logs and results.",
        epilog="Exit codes: 0 completed, 1 failed or cancelled, 2 usage error, "
        "3 HTTP error before the stream, 4 timeout or connection error.",
    )
    watch.add_argument("url", help="the stream endpoint, e.g. http://host/api/detect/stream")
    watch.add_argument(
        "--json",
        dest="body",
        metavar="BODY",
        help="the JSON request body, or @FILE to read it from a file",
    )
    watch.add_argument(
        "--header",
        "-H",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="an extra request header (repeatable)",
    )
    watch.add_argument("--token", help="send 'Authorization: Bearer TOKEN'")
    watch.add_argument(
        "--method", default=None, help="HTTP method (default: POST, GET without body)"
    )
    watch.add_argument("--output", "-o", type=Path, help="save the first image output to this file")
    watch.add_argument("--save", type=Path, metavar="DIR", help="save every image output in DIR")
    watch.add_argument(
        "--jsonl", action="store_true", help="ask for JSON lines instead of Server-Sent Events"
    )
    watch.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds without a byte from the server before giving up (default: 15)",
    )
    watch.add_argument(
        "--max-reconnects",
        type=int,
        default=3,
        help="reconnects in a row without a new event (default: 3)",
    )
    return parser


def _escape(text: str) -> str:
    """Escape rich markup in text that came from the server."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def _body(parser: argparse.ArgumentParser, raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
        return json.loads(text)
    except OSError as exc:
        parser.error(f"--json: cannot read {raw[1:]}: {exc.strerror}")
    except ValueError as exc:
        parser.error(f"--json is not valid JSON: {exc}")


def _headers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            parser.error(f"--header must look like NAME:VALUE, got {item!r}")
        headers[name.strip()] = value.strip()
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    return headers


class _View:
    """Renders states: a live bar on a terminal, one line per update otherwise."""

    def __init__(self, console: Console, progress: Progress) -> None:
        self.console = console
        self.progress = progress
        self.live = console.is_terminal
        self.task: TaskID = progress.add_task("connecting", total=None, eta="", visible=self.live)

    def show(self, state: RunState) -> None:
        kind = state.type
        if kind is EventType.RUN:
            self.console.print(f"[dim]run {state.run_id}[/dim]")
        if state.logs:
            for line in state.logs:
                self.console.print(f"[cyan]{_escape(line.level):<7}[/cyan] {_escape(line.message)}")
        if kind is EventType.RESET:
            self.console.print("[yellow]some events are no longer kept; continuing[/yellow]")
        if kind is EventType.PARTIAL:
            text = json.dumps(state.partial_output)
            self.console.print(f"partial output: {text[:200]}", highlight=False, markup=False)
        if kind in (EventType.LOG, EventType.DONE, EventType.RESET):
            return
        status = state.status.value if state.status is not None else "running"
        label = f"{status} ({state.state})" if state.state else status
        eta = ""
        if state.eta is not None and state.eta[1] is not None and kind is EventType.PROGRESS:
            eta = f"ETA {round(state.eta[1] / 1000)}s"
        current = total = None
        if state.progress is not None:
            current, total = state.progress.current, state.progress.total
        if kind is EventType.RESULT:
            current, total = total or 1, total or 1
        self.progress.update(self.task, description=label, eta=eta, completed=current, total=total)
        if not self.live:
            amount = f" {current:g}/{total:g}" if current is not None and total else ""
            self.console.print(f"{label}{amount} {eta}".rstrip(), markup=False)


def _summary(console: Console, results: Results, elapsed: float) -> None:
    from .client import ImageOutput, StorageObjectOutput

    console.print(
        f"[green]completed[/green] in {elapsed:.1f} s: {len(results)} output(s)", highlight=False
    )
    for index, output in enumerate(results):
        if isinstance(output, ImageOutput):
            try:
                width, height = output.to_pil().size
                size = f" {width}x{height}"
            except Exception:  # Pillow missing or an odd image: the summary goes on
                size = ""
            text = f"image {output.mime}{size}, {len(output.to_bytes())} bytes"
        elif isinstance(output, StorageObjectOutput):
            text = f"storage object {output.data_type or ''} {output.url}"
        else:
            key = next(iter(output), "?")
            text = f"{key} {json.dumps(output.get(key), separators=(',', ':'))}"
            text = text if len(text) <= 200 else text[:199] + "…"
        console.print(f"  [{index}] {text}", highlight=False, markup=False)


def _save(console: Console, results: Results, args: argparse.Namespace) -> int:
    images = results.images()
    if args.output is not None:
        if not images:
            console.print("no image output to save to --output", style="red", highlight=False)
            return EXIT_RUN_FAILED
        path = images[0].save(args.output)
        console.print(f"saved {path} ({len(images[0].to_bytes())} bytes)", markup=False)
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            path = image.save(args.save / f"{results.run_id}-{index}{image.extension}")
            console.print(f"saved {path}", markup=False)
    return EXIT_OK


def _watch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    body = _body(parser, args.body)
    headers = _headers(parser, args)
    if args.timeout <= 0 or args.max_reconnects < 0:
        parser.error("--timeout must be > 0 and --max-reconnects >= 0")
    try:
        import httpx
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn

        from . import client
    except ImportError as exc:
        print(str(MissingExtraError("client", "the watch command")) + f" ({exc})", file=sys.stderr)
        return EXIT_USAGE
    try:
        url = httpx.URL(args.url)
    except httpx.InvalidURL as exc:
        parser.error(f"invalid URL {args.url!r}: {exc}")
    if url.scheme not in ("http", "https") or not url.host:
        parser.error(f"the URL must be http:// or https://, got {args.url!r}")
    console = Console(highlight=False, soft_wrap=True)
    errors = Console(stderr=True, highlight=False, soft_wrap=True)
    method = args.method or ("POST" if body is not None else "GET")
    options: dict[str, Any] = {"headers": headers}
    if body is not None:
        options["json"] = body
    started = time.monotonic()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[eta]}"),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10.0, read=args.timeout)) as http,
            progress,
            client.connect_states(
                http,
                method,
                url,
                timeout=args.timeout,
                max_reconnects=args.max_reconnects,
                jsonl=args.jsonl,
                **options,
            ) as stream,
        ):
            view = _View(console, progress)
            for state in stream.iter_states():
                view.show(state)
            results = stream.results()
    except (RunFailedError, RunCancelledError) as exc:
        word = "failed" if isinstance(exc, RunFailedError) else "cancelled"
        error = exc.state.error
        code = f" [{error.code}]" if error is not None else ""
        errors.print(f"[red]run {word}{_escape(code)}:[/red] {_escape(str(exc))}", highlight=False)
        return EXIT_RUN_FAILED
    except client.StreamHTTPError as exc:
        errors.print(f"[red]HTTP {exc.status_code}[/red] from {_escape(exc.url)}", highlight=False)
        body_text = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, indent=2)
        errors.print(body_text, markup=False, highlight=False)
        return EXIT_HTTP
    except client.StreamError as exc:
        errors.print(f"[red]{type(exc).__name__}:[/red] {_escape(str(exc))}", highlight=False)
        return EXIT_STREAM
    except KeyboardInterrupt:
        errors.print("interrupted: the connection is closed, so the run is cancelled")
        return EXIT_INTERRUPTED
    _summary(console, results, time.monotonic() - started)
    return _save(console, results, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see the module docstring).

    Args:
        argv: the arguments without the program name; default ``sys.argv[1:]``.

    Raises:
        SystemExit: on a usage error (code 2) and for ``--help`` (code 0), from argparse.

    Returns:
        0 completed, 1 failed or cancelled, 2 usage error, 3 HTTP error before the stream,
        4 timeout or connection error, 130 interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)  # usage errors exit with 2 here
    return _watch(parser, args)


if __name__ == "__main__":
    sys.exit(main())
