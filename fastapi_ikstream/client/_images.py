"""Images both ways: `ImageOutput` decodes an image output, `image_input` encodes an input.

The media type of an image file is what Pillow (in the ``client`` extra) identifies it as.
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import MissingExtraError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ImageOutput", "image_input", "sniff_mime"]

_OCTET_STREAM = "application/octet-stream"
_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
}


def sniff_mime(data: bytes) -> str | None:
    """The media type of an image file as Pillow identifies it, or None if it cannot.

    Raises:
        MissingExtraError: Pillow is not installed.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise MissingExtraError("client", "the client's image type detection") from exc
    # Only the header is parsed; what Pillow warns about in a damaged file is not our concern.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                mime: str | None = image.get_format_mimetype()
    except (UnidentifiedImageError, OSError):
        return None
    return mime


def _b64decode(data: str) -> bytes:
    data = data.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(data + "=" * (-len(data) % 4))


class ImageOutput:
    """An ``{"image": "<base64>"}`` output: bytes, a data URL, a PIL image or an array.

    Args:
        raw: the output object; its ``image`` is base64 (a ``data:`` URL is accepted too).
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = dict(raw)
        value = str(raw["image"])
        self.base64 = value.partition("base64,")[2] if value.startswith("data:") else value
        self._bytes: bytes | None = None
        self._mime: str | None = None

    def to_bytes(self) -> bytes:
        """The encoded image file (PNG, JPEG …), decoded from base64.

        Raises:
            ValueError: the data is not valid base64.
        """
        if self._bytes is None:
            try:
                self._bytes = _b64decode(self.base64)
            except binascii.Error as exc:
                raise ValueError("the image output is not valid base64") from exc
        return self._bytes

    @property
    def mime(self) -> str:
        """The media type of the image file, as Pillow identifies it (e.g. ``"image/png"``).

        ``"application/octet-stream"`` when it is not an image Pillow knows, or not base64.

        Raises:
            MissingExtraError: Pillow is not installed.
        """
        if self._mime is None:
            try:
                data = self.to_bytes()
            except ValueError:
                return _OCTET_STREAM
            self._mime = sniff_mime(data) or _OCTET_STREAM
        return self._mime

    @property
    def extension(self) -> str:
        """A file extension for `mime`, e.g. ``".png"`` (``".bin"`` when unknown)."""
        mime = self.mime
        return _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"

    @property
    def data_url(self) -> str:
        """``data:{mime};base64,{data}``, ready for an ``<img src>``."""
        return f"data:{self.mime};base64,{self.base64}"

    def to_pil(self) -> Image:
        """Open as a ``PIL.Image.Image`` (needs Pillow).

        Raises:
            MissingExtraError: Pillow is not installed.
        """
        try:
            from PIL import Image
        except ImportError as exc:
            raise MissingExtraError("client", "ImageOutput.to_pil") from exc
        return Image.open(io.BytesIO(self.to_bytes()))

    def to_numpy(self) -> Any:
        """The pixels as a ``numpy.ndarray`` of shape (height, width[, channels]) (needs numpy).

        Raises:
            MissingExtraError: numpy or Pillow is not installed.
        """
        try:
            import numpy as np
        except ImportError as exc:
            raise MissingExtraError("client", "ImageOutput.to_numpy") from exc
        return np.asarray(self.to_pil())

    def save(self, path: str | Path) -> Path:
        """Write the image file to ``path`` as it is (no re-encoding); returns the path."""
        target = Path(path)
        target.write_bytes(self.to_bytes())
        return target

    def __repr__(self) -> str:
        return f"ImageOutput({self.mime}, {len(self.base64) * 3 // 4} bytes)"


def image_input(image: str | Path | bytes | Image, *, format: str = "PNG") -> str:
    """Turn an image into a run input: a ``data:`` URL with base64, as `RunRequest` takes.

    Example::

        body = {"inputs": [image_input("photo.jpg")]}

    Args:
        image: a file path, the bytes of an image file, or a ``PIL.Image.Image``.
        format: the Pillow format a PIL image is encoded with. Default ``"PNG"``.

    Returns:
        ``data:{mime};base64,{data}``; the media type is the one Pillow identifies in the
        bytes, else guessed from the file name, else ``application/octet-stream``.

    Raises:
        OSError: the file cannot be read.
        TypeError: ``image`` is none of these.
        MissingExtraError: Pillow is not installed.
    """
    guess: str | None = None
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, str | Path):
        data = Path(image).read_bytes()
        guess = mimetypes.guess_type(str(image))[0]
    elif callable(getattr(image, "save", None)):
        buffer = io.BytesIO()
        image.save(buffer, format=format)
        data = buffer.getvalue()
    else:
        raise TypeError(f"not an image, a path or bytes: {type(image).__name__}")
    mime = sniff_mime(data) or guess or _OCTET_STREAM
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
