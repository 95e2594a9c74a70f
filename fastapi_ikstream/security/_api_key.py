"""`APIKeyAuth`: the dependency that checks an API key header, in constant time."""

import hashlib
import hmac
from collections.abc import Mapping
from typing import NoReturn

from fastapi import HTTPException, Request
from fastapi.openapi.models import APIKey as APIKeyModel
from fastapi.openapi.models import APIKeyIn
from fastapi.security.base import SecurityBase

from ._principal import Principal

__all__ = ["APIKeyAuth"]


class APIKeyAuth(SecurityBase):
    """Dependency that checks an API key header and returns the key's `Principal`.

    Keys are compared in constant time: the SHA-256 of the sent key is compared with
    `hmac.compare_digest` to the hash of every configured key, without stopping at a match.

    Args:
        keys: maps each accepted key to its `Principal`, or to a subject name (a
            `Principal` with that subject and no scopes).
        header_name: header that carries the key. Default ``"X-API-Key"``.
        scheme_name: name of the scheme in OpenAPI. Default ``"APIKeyAuth"``.
        description: description of the scheme in OpenAPI.

    Raises:
        ValueError: no keys, or an empty key.

    Example:
        ```python
        auth = APIKeyAuth({os.environ["PARTNER_KEY"]: "partner"})
        ```
    """

    def __init__(
        self,
        keys: Mapping[str, Principal | str],
        *,
        header_name: str = "X-API-Key",
        scheme_name: str | None = None,
        description: str | None = None,
    ) -> None:
        if not keys or not all(keys):
            raise ValueError("APIKeyAuth needs at least one key, and no empty key")
        self.header_name = header_name
        self._entries = [
            (
                hashlib.sha256(key.encode()).digest(),
                (
                    who.model_copy(update={"authority": who.authority or "apikey"})
                    if isinstance(who, Principal)
                    else Principal(subject=who, authority="apikey")
                ),
            )
            for key, who in keys.items()
        ]
        self.model = APIKeyModel(
            **{"in": APIKeyIn.header},
            name=header_name,
            description=description,
        )
        self.scheme_name = scheme_name or type(self).__name__

    async def __call__(self, request: Request) -> Principal:
        """Check the request's API key.

        Returns:
            the key's principal.

        Raises:
            HTTPException: 401 when the key is missing or not accepted.
        """
        sent = request.headers.get(self.header_name)
        if not sent:
            _refuse_key(f"Not authenticated: send an API key in the {self.header_name} header.")
        digest = hashlib.sha256(sent.encode("latin-1", "replace")).digest()
        found: Principal | None = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            _refuse_key("The API key is not valid.")
        return found


def _refuse_key(message: str) -> NoReturn:
    raise HTTPException(401, detail=message, headers={"WWW-Authenticate": "APIKey"})
