"""The authenticated caller, `Principal`, as every auth dependency returns it."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Principal"]


class Principal(BaseModel):
    """The authenticated caller, as an auth dependency returns it.

    It keys rate limits and concurrent-run limits (``subject``) and owns the runs it starts.

    Attributes:
        subject: stable identifier of the caller: the JWT ``sub`` claim, or the name given to
            an API key.
        scopes: the scopes granted (JWT ``scope``/``scp``); empty for API keys unless given.
        claims: every verified claim of the JWT; empty for API keys unless given.
        authority: who vouched for the subject: ``"jwt:{iss}"`` (``"jwt:"`` without an
            issuer) for a JWT, ``"apikey"`` for an API key. Runs belong to the authority
            and the subject together, so an API key named ``alice`` cannot read the runs
            of a JWT subject ``alice``.
    """

    model_config = ConfigDict(frozen=True)

    subject: str = Field(min_length=1)
    scopes: frozenset[str] = frozenset()
    claims: dict[str, Any] = Field(default_factory=dict)
    authority: str | None = None
