"""A schemathesis run over the generated OpenAPI: no 500, no schema violation."""

from __future__ import annotations

import asyncio

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pydantic import BaseModel, Field
from schemathesis.generation.modes import GenerationMode

from fastapi_ikstream import create_router


class PromptIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=200)
    steps: int = Field(default=4, ge=1, le=50)


async def echo(inputs, parameters, on_progress):
    on_progress(state="STARTED", progress={"current": 1, "total": 1})
    await asyncio.sleep(0)
    return [{"DATA_DICT": {"prompt": getattr(inputs, "prompt", None)}}]


app = FastAPI()
app.include_router(create_router(echo, path="/gen", request_model=PromptIn), prefix="/api")
app.include_router(create_router(echo, path="/ik"), prefix="/api")

schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(modes=[GenerationMode.POSITIVE])

# Negative cases for query strings are not well defined (a query string has no types: an
# "integer" list or a missing value read back as a valid one), so those are generated for
# bodies and paths only.
negative = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(method="GET")
negative.config.generation.update(modes=[GenerationMode.NEGATIVE])


@negative.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_refuses_what_its_schema_refuses(case):
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case):
    response = case.call()
    assert response.status_code < 500, response.text
    case.validate_response(response)
