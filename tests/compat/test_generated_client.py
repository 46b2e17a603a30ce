"""A TypeScript client written for the old service compiles against types generated from ours.

openapi-typescript turns each document into types, and ``tsc --noEmit --strict`` checks
``typescript/old_client.ts`` (list, get, put with ``allow_overwrite``, delete, the error body)
against them: first against the old document's types, which proves the client is right, then
unchanged against our live document's. The tools are pinned in ``typescript/package.json`` and
installed once into ``build/`` (ignored by git); without Node and npm the test is skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import OLD_DOCUMENT

SOURCES = Path(__file__).with_name("typescript")
TOOLS_ROOT = Path(__file__).resolve().parents[2] / "build" / "compat-typescript"
TSC_OPTIONS = (
    "--noEmit",
    "--strict",
    "--target",
    "es2020",
    "--lib",
    "es2020",
    "--module",
    "esnext",
    "--moduleResolution",
    "bundler",
    "--skipLibCheck",
)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def tools() -> Path:
    """The folder whose node_modules holds the pinned openapi-typescript and tsc."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip(
            "NOT CHECKED: the generated TypeScript client needs Node.js and npm on PATH "
            "(apt-get install nodejs npm); the old service's clients are untested here"
        )
    manifest = (SOURCES / "package.json").read_bytes()
    folder = TOOLS_ROOT / hashlib.sha256(manifest).hexdigest()[:12]
    done = folder / "installed"
    if not done.exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package.json").write_bytes(manifest)
        installed = _run(
            [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            folder,
            timeout=300,
        )
        if installed.returncode != 0:
            pytest.skip(
                "NOT CHECKED: npm could not install openapi-typescript and typescript "
                f"(registry unreachable?): {installed.stderr.strip()[-500:]}"
            )
        done.touch()
    return folder


def _generate(tools: Path, document: Path, target: Path) -> None:
    target.mkdir()
    for name in ("old_client.ts", "new_fields.ts"):
        shutil.copy(SOURCES / name, target / name)
    generated = _run(
        [str(tools / "node_modules/.bin/openapi-typescript"), str(document), "-o", "api.d.ts"],
        target,
        timeout=120,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr


def _type_check(tools: Path, folder: Path, *files: str) -> subprocess.CompletedProcess[str]:
    return _run([str(tools / "node_modules/.bin/tsc"), *TSC_OPTIONS, *files], folder, timeout=120)


def test_old_client_compiles_against_types_generated_from_our_document(
    tools: Path, live_document: dict[str, Any], tmp_path: Path
) -> None:
    ours_json = tmp_path / "ours.json"
    ours_json.write_text(json.dumps(live_document), encoding="utf-8")
    old, ours = tmp_path / "old", tmp_path / "ours"
    _generate(tools, OLD_DOCUMENT, old)
    _generate(tools, ours_json, ours)

    checked = _type_check(tools, old, "old_client.ts")
    assert checked.returncode == 0, "the client is wrong for the old document:\n" + checked.stdout
    checked = _type_check(tools, ours, "old_client.ts", "new_fields.ts")
    assert checked.returncode == 0, "an old client breaks against ours:\n" + checked.stdout

    # The check has teeth: what we added is not in the old types, so this fails there.
    checked = _type_check(tools, old, "new_fields.ts")
    assert checked.returncode != 0
    assert "status" in checked.stdout
