"""ikstream.d.ts: `tsc --strict` passes on it and on a typed example, and it declares exactly
the module's exports (the runtime list comes from Node importing the module)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"

pytestmark = pytest.mark.timeout(90)

STATIC = Path(__file__).parent.parent / "fastapi_ikstream" / "static"
MODULE = STATIC / "ikstream.js"
TYPINGS = STATIC / "ikstream.d.ts"
TS_DIR = Path(__file__).parent / "ts"


def tsc(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NODE_DIR / "node_modules" / ".bin" / "tsc"), "-p", str(project)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def runtime_exports(node: str) -> list[str]:
    script = f"import({json.dumps(MODULE.as_uri())}).then(m => console.log(JSON.stringify("
    script += "Object.keys(m).sort())))"
    result = subprocess.run(
        [node, "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    names: list[str] = json.loads(result.stdout)
    return names


def exports_check(tmp: Path, names: list[str]) -> Path:
    """A project whose compilation fails when ``names`` and the declared values differ."""
    union = " | ".join(json.dumps(name) for name in names)
    (tmp / "check.ts").write_text(
        f"import * as ik from {json.dumps(str(MODULE))};\n"
        f"type Runtime = {union};\n"
        "type Declared = keyof typeof ik;\n"
        "type NotDeclared = Exclude<Runtime, Declared>;\n"
        "type NotExported = Exclude<Declared, Runtime>;\n"
        "export const notDeclared: [NotDeclared] extends [never] ? true : NotDeclared = true;\n"
        "export const notExported: [NotExported] extends [never] ? true : NotExported = true;\n"
    )
    config = json.loads((TS_DIR / "tsconfig.json").read_text())
    config["files"] = ["check.ts", str(TYPINGS)]
    (tmp / "tsconfig.json").write_text(json.dumps(config))
    return tmp / "tsconfig.json"


def test_tsc_strict_passes_on_the_declarations_and_the_typed_example(node):
    result = tsc(TS_DIR / "tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_tsc_strict_rejects_a_misuse_of_the_declarations(node, tmp_path):
    (tmp_path / "misuse.ts").write_text(
        f"import {{streamStates}} from {json.dumps(str(MODULE))};\n"
        'export const eta: number = streamStates("/x").states[0].eta[0];\n'
    )
    config = json.loads((TS_DIR / "tsconfig.json").read_text())
    config["files"] = ["misuse.ts", str(TYPINGS)]
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    result = tsc(tmp_path / "tsconfig.json")
    assert result.returncode != 0
    assert "misuse.ts(2," in result.stdout
    assert "null" in result.stdout


def test_the_declarations_name_exactly_the_module_exports(node, tmp_path):
    names = runtime_exports(node)
    assert {"streamStates", "RunStream", "processReadableStream", "fileToInput"} <= set(names)
    result = tsc(exports_check(tmp_path, names))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("change", ["an export left undeclared", "a declaration not exported"])
def test_the_exports_check_catches_a_difference(node, tmp_path, change):
    names = runtime_exports(node)
    if change == "an export left undeclared":
        names.append("notInTheTypings")
        expected = "notInTheTypings"
    else:
        names.remove("fileToInput")
        expected = "fileToInput"
    result = tsc(exports_check(tmp_path, names))
    assert result.returncode != 0
    assert expected in result.stdout
