"""docs/ARCHITECTURE.md cannot drift: every module, function and file it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
TICKS = re.findall(r"`([^`\n]+)`", DOC)
DOTTED = sorted({t for t in TICKS if re.fullmatch(r"(tumortrace|app_state)(\.\w+)+", t)})
FILES = sorted(
    {t.split(":")[0] for t in TICKS if re.fullmatch(r"[\w/]+\.(py|md|toml|sh)(:\w+)?", t)}
)
PAGE_FUNCS = sorted({t for t in TICKS if re.fullmatch(r"[\w/]+\.py:\w+", t)})


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_document_cites_names():
    assert len(DOTTED) > 30 and len(FILES) > 10 and PAGE_FUNCS


@pytest.mark.parametrize("dotted", DOTTED)
def test_each_cited_module_or_function_exists(dotted):
    _resolve(dotted)


@pytest.mark.parametrize("path", FILES)
def test_each_cited_file_exists(path):
    assert (ROOT / path).is_file() or (ROOT / "tumortrace" / path).is_file(), path


@pytest.mark.parametrize("cited", PAGE_FUNCS)
def test_each_cited_script_function_exists(cited):
    path, name = cited.split(":")
    assert re.search(rf"^def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M), cited


def test_the_layout_lists_every_package_module():
    listed = set(re.findall(r"^  (\w+)\.py", DOC, re.M))
    assert {p.stem for p in (ROOT / "tumortrace").glob("*.py")} - listed <= {"__init__"}
