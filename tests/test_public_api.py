"""The public API: what each public module exports (``__all__``) is what its reference page
documents, and the root package stays small."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import fastapi_ikstream

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
PACKAGE = "fastapi_ikstream"
# Modules documented name by name on the reference pages; the others page by module.
BY_NAME = ["models", "deployments", "routing", "stores", "wire", "errors"]
WHOLE = [
    "security",
    "ratelimit",
    "client",
    "testing",
    "ikomia",
    "redis",
    "remote",
    "usage",
    "metrics",
    "tracing",
]


def documented() -> list[str]:
    """Every ``::: dotted.path`` of the reference pages."""
    paths = []
    for page in sorted(REFERENCE.glob("*.md")):
        paths += re.findall(r"^::: ([\w.]+)$", page.read_text("utf-8"), flags=re.M)
    return paths


def listed_members() -> dict[str, list[str]]:
    """The ``members:`` lists of the directives that give one (a module page in order)."""
    pattern = re.compile(
        r"^::: ([\w.]+)\n    options:\n      members:\n((?:        - \w+\n)+)", re.M
    )
    found = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for path, block in pattern.findall(page.read_text("utf-8")):
            found[path] = re.findall(r"- (\w+)", block)
    return found


def resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    try:
        return importlib.import_module(path)
    except ImportError:
        return getattr(importlib.import_module(module), name)


def test_every_reference_entry_resolves_to_a_public_name() -> None:
    for path in documented():
        assert "._" not in path, f"{path}: the reference documents a private module"
        resolve(path)


def test_the_root_exports_at_most_20_names_all_documented() -> None:
    names = fastapi_ikstream.__all__
    assert len(names) <= 20
    assert sorted(names) == names
    objects = {id(resolve(path)) for path in documented()}
    for name in names:
        assert id(getattr(fastapi_ikstream, name)) in objects, f"{name} is not documented"


@pytest.mark.parametrize("module", BY_NAME)
def test_a_module_documented_by_name_exports_exactly_its_documented_names(module: str) -> None:
    imported = importlib.import_module(f"{PACKAGE}.{module}")
    prefix = f"{PACKAGE}.{module}."
    on_pages = sorted(path[len(prefix) :] for path in documented() if path.startswith(prefix))
    assert on_pages == sorted(imported.__all__)


@pytest.mark.parametrize("module", WHOLE)
def test_a_module_documented_whole_exports_what_it_defines(module: str) -> None:
    assert f"{PACKAGE}.{module}" in documented()
    imported = importlib.import_module(f"{PACKAGE}.{module}")
    assert imported.__all__, module
    for name in imported.__all__:
        assert getattr(imported, name) is not None
    members = listed_members().get(f"{PACKAGE}.{module}")
    if members is not None:  # a page that lists the members lists each exported name once
        assert sorted(members) == sorted(imported.__all__)


def test_names_moved_out_of_the_root_still_import_from_it() -> None:
    modules = [importlib.import_module(f"{PACKAGE}.{m}") for m in BY_NAME]
    public = {name: getattr(m, name) for m in modules for name in m.__all__}
    for name, value in public.items():
        assert getattr(fastapi_ikstream, name) is value, name
    with pytest.raises(AttributeError):
        _ = fastapi_ikstream.no_such_name


def test_every_public_module_is_in_one_of_the_lists() -> None:
    here = ROOT / PACKAGE
    files = {path.stem for path in here.glob("*.py")}
    packages = {path.parent.name for path in here.glob("*/__init__.py")}
    public = {name for name in files | packages if not name.startswith("_")}
    assert public == set(BY_NAME) | set(WHOLE)
