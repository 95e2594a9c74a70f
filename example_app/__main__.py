"""``python -m example_app``: serve the example app with uvicorn and print its URL.

Options: ``--host`` (default 127.0.0.1), ``--port`` (default 8000), ``--stage-delay-ms``
(a pause before each stage of the embedded workflow so that progress can be watched;
default 300, 0 runs at full speed), ``--rate-limit`` (default ``"30/minute"``). Set
``ENDPOINT_URL`` and ``IKOMIA_TOKEN`` to run an Ikomia SCALE deployment instead of the
embedded workflow (see `example_app.main`).
"""

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from example_app.main import create_app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="Serve the fastapi-ikstream example app.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (8000)")
    parser.add_argument(
        "--stage-delay-ms",
        type=int,
        default=300,
        help="pause before each workflow stage, in ms, so progress can be watched (300)",
    )
    parser.add_argument("--rate-limit", default="30/minute", help="runs per user (30/minute)")
    parser.add_argument("--log-level", default="info", help="uvicorn's log level (info)")
    args = parser.parse_args(argv)
    if not 0 <= args.stage_delay_ms <= 2000:
        parser.error("--stage-delay-ms must be between 0 and 2000")

    app = create_app(stage_delay_ms=args.stage_delay_ms, rate_limit=args.rate_limit)
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    print(
        f"fastapi-ikstream example ({app.state.mode} deployment): open http://{host}:{args.port}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main(sys.argv[1:])
