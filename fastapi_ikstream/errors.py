"""The package's exceptions, and the handler that turns validation errors into JSON.

The exception tree (``IKStreamError`` at its root) is drawn below, in the docstring of the
module that defines it; the client module adds its own branch
(``fastapi_ikstream.client.StreamError``).
"""

from . import _exceptions
from ._errors import validation_exception_handler
from ._exceptions import *  # noqa: F403 - the exceptions, as listed in their __all__

__all__ = [*_exceptions.__all__, "validation_exception_handler"]
