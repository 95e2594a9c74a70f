"""Authentication dependencies: JWT bearer tokens and API keys, answered as RFC 6750 says.

Both are callable classes, like `fastapi.security.HTTPBearer`: configure them once, use the
instance as a dependency, and read the caller as a `Principal`::

    from typing import Annotated
    from fastapi import Security
    from fastapi_ikstream.security import JWTBearer, Principal

    auth = JWTBearer(jwks_url="https://issuer/.well-known/jwks.json", algorithms=["RS256"],
                     audience="image-api", issuer="https://issuer/", scopes=["images:generate"])

    @app.get("/me")
    async def me(principal: Annotated[Principal, Security(auth)]) -> dict[str, str]:
        return {"subject": principal.subject}

A refused caller gets a JSON body (``{"detail": "..."}``) and a real status: 401 with
``WWW-Authenticate: Bearer`` (plus ``error="invalid_token"`` when a token was sent), 403 with
``error="insufficient_scope"``, 503 when the issuer's key set cannot be fetched. Messages are
fixed sentences: they never echo the token or the JWT library's own text. No input gives a 500.

JWTs are verified with python-jose (the ``jwt`` extra); every call to it is in the private
``_jose`` module, so another JWT library could take its place. `APIKeyAuth` and
`Principal` do not need the extra.
"""

from ._api_key import APIKeyAuth as APIKeyAuth
from ._jose import create_access_token as create_access_token
from ._jwt import JWTBearer as JWTBearer
from ._principal import Principal as Principal

__all__ = ["APIKeyAuth", "JWTBearer", "Principal", "create_access_token"]
