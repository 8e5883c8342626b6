"""JSON sidecar files (a model's ``config.json``, saved word vectors' ``identity.json``): one reader."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from atr_core.errors import AtrError, SchemaError


def read_sidecar(
    path: str,
    *,
    kind: str,
    schema_version: int,
    what: str,
    missing: type[AtrError],
    missing_hint: str,
) -> dict[str, Any]:
    """Read a JSON sidecar and check its ``kind`` and ``schema_version``.

    Args:
        path: the file, a local path or URL.
        kind: the ``kind`` the file must declare.
        schema_version: the supported ``schema_version``.
        what: what the file is, for messages ("model config").
        missing: the error raised when the file is absent or unreadable.
        missing_hint: what its absence means ("not a trained model directory").

    Returns:
        The parsed JSON object.

    Raises:
        ``missing``: no such file, or not JSON.
        SchemaError: another kind of file, or a schema version this release does not read.
    """
    try:
        with fsspec.open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError as exc:
        raise missing(f"{path}: missing; {missing_hint}") from exc
    except (OSError, ValueError) as exc:
        raise missing(f"{path}: unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("kind") != kind:
        raise SchemaError(f"{path}: not an atr {what} (expected kind={kind!r})")
    if meta.get("schema_version") != schema_version:
        raise SchemaError(
            f"{path}: {what} schema_version {meta.get('schema_version')!r} is not supported; "
            f"expected {schema_version}"
        )
    return meta
