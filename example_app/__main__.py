"""``python -m example_app``: serve the example app with uvicorn and print its URL.

Every setting of `example_app.main.create_app` that a demo may want to change is an
option; ``python -m example_app --help`` lists them with their defaults. Set
``ENDPOINT_URL`` and ``IKOMIA_TOKEN`` to run an Ikomia SCALE deployment instead of the
embedded workflow (see `example_app.main`).
"""

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from example_app.main import create_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m example_app",
        description="Serve the fastapi-ikstream example app.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind")
    add("--port", type=int, default=8000, help="port to bind")
    add(
        "--stage-delay-ms",
        type=int,
        default=300,
        help="pause before each workflow stage, in ms (0 to 2000), so progress can be watched",
    )
    add("--rate-limit", default="30/minute", help="runs each user may start, e.g. 10/minute")
    add("--max-concurrent-runs", type=int, default=2, help="runs each user may have at once")
    add("--login-rate-limit", default="30/minute", help="demo logins per client address")
    add("--token-ttl", type=int, default=900, help="lifetime of a demo token, in seconds")
    add("--keep-alive", type=float, default=10.0, help="seconds of silence before a keep-alive")
    add(
        "--secure-cookie",
        action="store_true",
        help="mark the login cookie Secure (for an app served over HTTPS)",
    )
    add("--log-level", default="info", help="uvicorn's log level")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options, build the app and serve it until interrupted."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.stage_delay_ms <= 2000:
        parser.error("--stage-delay-ms must be between 0 and 2000")
    if args.max_concurrent_runs < 1:
        parser.error("--max-concurrent-runs must be at least 1")
    if args.token_ttl < 1:
        parser.error("--token-ttl must be at least 1")

    app = create_app(
        stage_delay_ms=args.stage_delay_ms,
        rate_limit=args.rate_limit,
        max_concurrent_runs=args.max_concurrent_runs,
        login_rate_limit=args.login_rate_limit,
        token_ttl=args.token_ttl,
        keep_alive=args.keep_alive,
        secure_cookie=args.secure_cookie,
    )
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(args.host, args.host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    print(
        f"fastapi-ikstream example ({app.state.mode} deployment): open http://{host}:{args.port}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main(sys.argv[1:])
