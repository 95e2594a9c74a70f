"""A completed run's outputs: `Results`, and the output kinds it decodes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from .._exceptions import MissingExtraError
from .._models import RunState
from ._images import ImageOutput

if TYPE_CHECKING:
    from ikclient.core.results import Results as IkclientResults

__all__ = ["Output", "Results", "StorageObjectOutput"]


class StorageObjectOutput:
    """A ``{"storage_object": {"url", "data_type", "metadata"?}}`` output.

    Attributes:
        raw: the output object.
        url: where the object can be fetched.
        data_type: its kind, e.g. ``"image"`` or ``"video"``.
        metadata: extra fields, or None.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)
        inner = raw["storage_object"]
        self.url: str = inner.get("url", "")
        self.data_type: str | None = inner.get("data_type")
        self.metadata: Any = inner.get("metadata")

    def __repr__(self) -> str:
        return f"StorageObjectOutput({self.data_type}, {self.url!r})"


Output: TypeAlias = ImageOutput | StorageObjectOutput | dict[str, Any]
"""One output: an image, a storage object, or the raw single-key object (``DATA_DICT`` …)."""


class Results:
    """The outputs of a completed run, like ``ikclient``'s ``Results``.

    Example::

        image = results.get_output(0)            # ImageOutput
        faces = results.get_output(1)["DATA_DICT"]["faces"]

    Args:
        state: the run's ``result`` state.
    """

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.outputs: list[dict[str, Any]] = list(state.results or [])

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.state.run_id

    def get_output(self, index: int = 0) -> Output:
        """Output ``index``: `ImageOutput`, `StorageObjectOutput`, or the raw dict.

        Raises:
            IndexError: there is no such output.
        """
        raw = self.outputs[index]
        if "image" in raw and len(raw) == 1:
            return ImageOutput(raw)
        if "storage_object" in raw and len(raw) == 1:
            return StorageObjectOutput(raw)
        return raw

    def get_outputs(self) -> list[Output]:
        """All outputs, decoded as by `get_output`."""
        return [self.get_output(i) for i in range(len(self.outputs))]

    def images(self) -> list[ImageOutput]:
        """The image outputs, in order."""
        return [out for out in self.get_outputs() if isinstance(out, ImageOutput)]

    def __len__(self) -> int:
        return len(self.outputs)

    def __iter__(self) -> Iterator[Output]:
        return iter(self.get_outputs())

    def to_ikclient(self) -> IkclientResults:
        """Convert to ``ikclient.core.results.Results`` (uuid: the run id).

        Raises:
            MissingExtraError: ``ikomia-client`` is not installed.
        """
        try:
            from ikclient.core.results import Results as IkResults
        except ImportError as exc:
            raise MissingExtraError("ikomia", "Results.to_ikclient") from exc
        inputs = self.state.inputs if isinstance(self.state.inputs, list) else []
        return IkResults(self.run_id, inputs, [dict(out) for out in self.outputs])

    def __repr__(self) -> str:
        return f"Results(run_id={self.run_id!r}, outputs={self.get_outputs()!r})"
