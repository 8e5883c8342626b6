"""Flex Template artefacts: metadata shape, parameters that the pipelines really accept, Dockerfiles."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"


def _options_class(module: str):
    if module == "extract":
        from pipelines.extract import ExtractOptions

        return ExtractOptions
    from pipelines.embed import EmbedOptions

    return EmbedOptions


@pytest.mark.parametrize("name", ["extract", "embed"])
def test_metadata_shape_and_parameters_are_pipeline_options(name: str) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    meta = json.loads((TEMPLATES / f"{name}_metadata.json").read_text())
    assert meta["name"] == f"atr-{name}"
    assert meta["description"]
    assert meta["streaming"] is False
    params = meta["parameters"]
    assert params, "a template without parameters cannot be configured"
    names = [p["name"] for p in params]
    assert len(names) == len(set(names)), "duplicate parameter"
    known = set(PipelineOptions([]).view_as(_options_class(name)).get_all_options().keys())
    for p in params:
        assert set(p) <= {"name", "label", "helpText", "isOptional", "regexes"}, p
        assert p["label"] and p["helpText"], p
        assert p["name"] in known, f"template parameter {p['name']} is not an option of pipelines.{name}"
        for rx in p.get("regexes", []):
            re.compile(rx)


@pytest.mark.parametrize(
    ("param", "good", "bad"),
    [
        ("output", "gs://bucket/atr/segments", "/local/path"),
        ("features", "lms", "vggish"),
        ("cnn14_sha256", "a" * 64, "abc"),
        ("incremental", "true", "yes"),
    ],
)
def test_extract_regexes_accept_valid_and_reject_invalid(param: str, good: str, bad: str) -> None:
    meta = json.loads((TEMPLATES / "extract_metadata.json").read_text())
    (spec,) = [p for p in meta["parameters"] if p["name"] == param]
    assert all(re.fullmatch(rx, good) for rx in spec["regexes"])
    assert not all(re.fullmatch(rx, bad) for rx in spec["regexes"])


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.worker"])
def test_dockerfile_copies_existing_paths(dockerfile: str) -> None:
    text = (TEMPLATES / dockerfile).read_text()
    lines = text.splitlines()
    copies = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ") and "--from" not in ln]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile} copies {src}, which is not in the repository"
    assert "torch==2.13.0" in text and "apache-beam[torch]" not in text


def test_launchers_call_run_without_waiting() -> None:
    text = (TEMPLATES / "Dockerfile").read_text()
    py_files = re.findall(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", text)
    assert py_files
    for module in ("extract", "embed"):
        path = TEMPLATES / f"launch_{module}.py"
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree)
        calls = [n for n in nodes if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "run"]
        assert calls, f"{path.name} never calls run()"
        assert any(k.arg == "wait" and k.value.value is False for c in calls for k in c.keywords)
        mod = __import__(f"pipelines.{module}", fromlist=["run"])
        import inspect

        assert "wait" in inspect.signature(mod.run).parameters
