"""Side-by-side benchmark of SSE progress streaming: ``python -m bench.run``."""
