"""Per-split evaluation report: ``metrics.json``, ``report.md``, ``report.html`` and two PNG figures.

The table follows the paper's layout (rows t2a and a2t; R@1, R@5, R@10, MedR, MnR, plus R@50), with
mean +- std when several runs (seeds) are given. Figures are drawn with matplotlib's Agg canvas directly
(no pyplot, no global backend change). Every text that reaches the HTML is escaped.
No Beam import; ``out_dir`` may be a local folder or a ``gs://`` URL.
"""

from __future__ import annotations

import html
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atr_core import __version__
from atr_core.errors import InputError
from atr_core.evaluation.metrics import aggregate_runs, similarities
from atr_core.runtime.storage import is_remote, open_uri

REPORT_SCHEMA_VERSION = 1
FILES = {
    "metrics_json": "metrics.json",
    "report_md": "report.md",
    "report_html": "report.html",
    "recall_png": "recall_at_k.png",
    "rank_hist_png": "rank_histogram.png",
}
COLUMNS = (("R@1", "R1"), ("R@5", "R5"), ("R@10", "R10"), ("R@50", "R50"), ("MedR", "MedR"), ("MnR", "MeanR"))
DIRECTIONS = (("t2a", "text → audio"), ("a2t", "audio → text"))
COLORS = {"t2a": "#1f6feb", "a2t": "#d9480f"}
MAX_LIST_ITEMS = 20


# --------------------------------------------------------------------------- table


def format_cell(value: float, std: float | None = None) -> str:
    """One decimal as in the paper; ``mean ± std`` when a std is given."""
    return f"{value:.1f}" if std is None else f"{value:.1f} ± {std:.1f}"


def table_cells(
    metrics: Mapping[str, Mapping[str, Any]], aggregate: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """Formatted cells per direction, in :data:`COLUMNS` order, plus the query count.

    With ``aggregate`` (from :func:`atr_core.evaluation.metrics.aggregate_runs`) cells are ``mean ± std``.
    """
    rows = {}
    for d, _ in DIRECTIONS:
        if aggregate is not None:
            cells = [format_cell(aggregate[d][k]["mean"], aggregate[d][k]["std"]) for _, k in COLUMNS]
            queries = aggregate[d]["num_queries"]["values"]
            count = str(int(queries[0])) if len(set(queries)) == 1 else "/".join(str(int(q)) for q in queries)
        else:
            cells = [format_cell(float(metrics[d][k])) for _, k in COLUMNS]
            count = str(int(metrics[d]["num_queries"]))
        rows[d] = cells + [count]
    return rows


# --------------------------------------------------------------------------- figures


def recall_curve(ranks: np.ndarray, k_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, recall@K in %) for K = 1..k_max; K = 1 counts rank == 0 only, like the reported R@1."""
    rho = np.asarray(ranks, dtype=np.float64)
    ks = np.arange(1, max(1, k_max) + 1)
    recall = np.array([100.0 * np.mean(rho < k) for k in ks])
    recall[0] = 100.0 * np.mean(rho == 0)
    return ks, recall


def _candidates(metrics: Mapping[str, Mapping[str, Any]], direction: str) -> int:
    """Candidates per query: clips for t2a, captions for a2t."""
    if direction == "t2a":
        return int(metrics["a2t"]["num_queries"]) + int(metrics["a2t"].get("num_excluded", 0))
    return int(metrics["t2a"]["num_queries"])


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def recall_figure(ranks: Mapping[str, np.ndarray], metrics: Mapping[str, Mapping[str, Any]]) -> bytes:
    """PNG of recall@K (K = 1..100, or up to the number of candidates) for both directions."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    for d, label in DIRECTIONS:
        if len(ranks.get(d, ())) == 0:
            continue
        ks, rec = recall_curve(ranks[d], min(100, _candidates(metrics, d)))
        ax.plot(ks, rec, color=COLORS[d], linewidth=2, label=f"{d} ({label})")
        for k in (1, 5, 10):
            if k <= ks[-1]:
                ax.plot(k, rec[k - 1], "o", color=COLORS[d], markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("K (log scale)")
    ax.set_ylabel("recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Recall@K")
    _style(ax)
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return _png(fig)


RANK_BUCKETS = ((0, 1, "1"), (1, 5, "2–5"), (5, 10, "6–10"), (10, 50, "11–50"), (50, 100, "51–100"),
                (100, np.inf, ">100"))  # fmt: skip


def rank_buckets(ranks: np.ndarray) -> list[tuple[str, float]]:
    """% of queries per rank bucket; bucket edges follow R@1/5/10/50 so cumulative sums equal them.

    0-based rank rho: "1" is rho == 0 (untied first), "2–5" is 0 < rho < 5, then [5, 10), ...
    """
    rho = np.asarray(ranks, dtype=np.float64)
    out = []
    for lo, hi, label in RANK_BUCKETS:
        if lo == 0:
            inside = rho == 0
        else:  # the "2–5" bucket also takes tie ranks in (0, 1)
            inside = ((rho > 0) if lo == 1 else (rho >= lo)) & (rho < hi)
        out.append((label, 100.0 * np.count_nonzero(inside) / max(rho.size, 1)))
    return out


def rank_histogram_figure(ranks: Mapping[str, np.ndarray]) -> bytes:
    """PNG: % of queries whose first correct item lands in each rank bucket, both directions."""
    from matplotlib.figure import Figure

    present = [(d, label) for d, label in DIRECTIONS if len(ranks.get(d, ())) > 0]
    buckets = {d: rank_buckets(ranks[d]) for d, _ in present}
    n = len(RANK_BUCKETS)
    while n > 1 and all(buckets[d][n - 1][1] == 0 for d, _ in present):
        n -= 1  # drop trailing empty buckets (small candidate sets)
    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(present)
    x = np.arange(n)
    for i, (d, label) in enumerate(present):
        values = [v for _, v in buckets[d][:n]]
        bars = ax.bar(x + (i - (len(present) - 1) / 2) * width, values, width, color=COLORS[d],
                      label=f"{d} ({label})")  # fmt: skip
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7, padding=2)
    ax.set_ylim(0, max(v for d, _ in present for _, v in buckets[d][:n]) * 1.2 + 1)
    ax.set_xticks(x, [label for _, _, label in RANK_BUCKETS[:n]])
    ax.set_xlabel("rank of the first correct item")
    ax.set_ylabel("% of queries")
    ax.set_title("Where the first correct item lands")
    _style(ax)
    ax.grid(False, axis="x")
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- examples


def qualitative_examples(
    text_emb: Any,
    audio_emb: Any,
    caption_texts: Sequence[str],
    clip_ids: Sequence[str],
    caption_to_clip: Any,
    n_queries: int = 5,
    top_k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Sampled queries with their top results, like the paper's Table 3 (JSON-serialisable).

    ``a2t``: for sampled clips (with captions), the top ``top_k`` captions with scores, correct ones
    marked, the clip's own captions and the 1-based tie-averaged rank of its best caption.
    ``t2a``: for sampled captions, the top ``top_k`` clips with scores, the correct clip marked, and
    its rank. Sampling uses ``numpy.random.default_rng(seed)``.
    """
    text = np.asarray(text_emb, dtype=np.float32)
    audio = np.asarray(audio_emb, dtype=np.float32)
    c2c = np.asarray(caption_to_clip, dtype=np.int64)
    n_captions, n_clips = text.shape[0], audio.shape[0]
    if len(caption_texts) != n_captions or c2c.shape != (n_captions,):
        raise InputError(
            f"{n_captions} caption vectors but {len(caption_texts)} caption texts and "
            f"{c2c.shape[0] if c2c.ndim else 0} caption->clip entries"
        )
    if len(clip_ids) != n_clips:
        raise InputError(f"{n_clips} clip vectors but {len(clip_ids)} clip ids")
    if n_captions and (c2c.min() < 0 or c2c.max() >= n_clips):
        raise InputError(f"caption_to_clip points outside 0..{n_clips - 1}")
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"n_queries": n_queries, "top_k": top_k, "seed": seed, "a2t": [], "t2a": []}
    if n_captions == 0 or n_clips == 0:
        return out

    with_caps = np.flatnonzero(np.bincount(c2c, minlength=n_clips) > 0)
    clips = np.sort(rng.choice(with_caps, size=min(n_queries, with_caps.size), replace=False))
    scores = similarities(text, audio[clips])  # (n_captions, q)
    for q, j in enumerate(clips):
        col = scores[:, q]
        own = np.flatnonzero(c2c == j)
        best = col[own].max()
        top = np.argsort(-col, kind="stable")[:top_k]
        out["a2t"].append(
            {
                "query_clip": str(clip_ids[j]),
                "ground_truth": [str(caption_texts[c]) for c in own],
                "correct_rank": _rank1(col, best),
                "results": [
                    {
                        "rank": i + 1,
                        "caption": str(caption_texts[c]),
                        "clip": str(clip_ids[c2c[c]]),
                        "score": float(col[c]),
                        "correct": bool(c2c[c] == j),
                    }
                    for i, c in enumerate(top)
                ],
            }
        )

    caps = np.sort(rng.choice(n_captions, size=min(n_queries, n_captions), replace=False))
    scores = similarities(text[caps], audio)  # (q, n_clips)
    for q, c in enumerate(caps):
        row = scores[q]
        top = np.argsort(-row, kind="stable")[:top_k]
        out["t2a"].append(
            {
                "query_caption": str(caption_texts[c]),
                "ground_truth_clip": str(clip_ids[c2c[c]]),
                "correct_rank": _rank1(row, row[c2c[c]]),
                "results": [
                    {
                        "rank": i + 1,
                        "clip": str(clip_ids[j]),
                        "score": float(row[j]),
                        "correct": bool(j == c2c[c]),
                    }
                    for i, j in enumerate(top)
                ],
            }
        )
    return out


def _rank1(values: np.ndarray, target: float) -> float:
    """1-based tie-averaged rank of ``target`` among ``values``."""
    return float(np.count_nonzero(values > target) + (np.count_nonzero(values == target) - 1) / 2 + 1)


# --------------------------------------------------------------------------- metadata


def _flatten(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested metadata -> (dotted key, display text) rows; long lists are shortened."""
    if isinstance(node, Mapping):
        rows: list[tuple[str, str]] = []
        for k, v in node.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return rows or [(prefix, "")]
    if isinstance(node, (list, tuple)):
        if all(not isinstance(x, (Mapping, list, tuple)) for x in node):
            shown = ", ".join(str(x) for x in node[:MAX_LIST_ITEMS])
            more = f" … ({len(node)} in all)" if len(node) > MAX_LIST_ITEMS else ""
            return [(prefix, shown + more if node else "(none)")]
        rows = []
        for i, x in enumerate(node[:MAX_LIST_ITEMS]):
            rows += _flatten(x, f"{prefix}[{i}]")
        if len(node) > MAX_LIST_ITEMS:
            rows.append((prefix, f"… ({len(node)} in all)"))
        return rows
    return [(prefix, str(node))]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------- markdown

RUN_COLUMNS = (("R@1", "R1"), ("R@5", "R5"), ("R@10", "R10"), ("MedR", "MedR"))


_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|"})


def _md(text: Any) -> str:
    """Text for a Markdown table cell: punctuation that Markdown or HTML would interpret is escaped."""
    return " ".join(str(text).split()).translate(_MD_SPECIAL)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> list[str]:
    """Markdown table lines; cells must already be escaped."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _run_rows(runs: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [str(i + 1)] + [format_cell(float(r[d][k])) for d, _ in DIRECTIONS for _, k in RUN_COLUMNS]
        for i, r in enumerate(runs)
    ]


def _run_headers() -> list[str]:
    return ["run"] + [f"{d} {c}" for d, _ in DIRECTIONS for c, _ in RUN_COLUMNS]


def _example_rows(ex: Mapping[str, Any], kind: str) -> list[tuple[bool, list[str]]]:
    """(correct, [rank, item, score, mark]) per result; item is a caption (a2t) or a clip (t2a)."""
    return [
        (bool(r["correct"]), [str(r["rank"]), str(r["caption" if kind == "a2t" else "clip"]),
                              f"{r['score']:.3f}", "✓" if r["correct"] else ""])  # fmt: skip
        for r in ex["results"]
    ]


def render_markdown(
    metrics: Mapping[str, Any],
    aggregate: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]] | None,
    examples: Mapping[str, Any],
    metadata: Mapping[str, Any],
    figures: Mapping[str, str],
) -> str:
    """The report as Markdown (figures by relative path)."""
    lines = [f"# {_md(_title(metadata))}", "", _md(_subtitle(metrics, aggregate, runs)), ""]
    lines += ["## Retrieval", ""]
    cells = table_cells(metrics, aggregate)
    rows = [[f"{d} ({label})"] + cells[d] for d, label in DIRECTIONS]
    lines += _md_table(["direction"] + [c for c, _ in COLUMNS] + ["queries"], rows, [False] + [True] * 7)
    lines += ["", NOTE, ""]
    if runs and len(runs) > 1:
        lines += ["### Runs", ""] + _md_table(_run_headers(), _run_rows(runs), [False] + [True] * 8) + [""]
    if figures:
        lines += ["## Figures", ""]
        for name, path in figures.items():
            lines += [f"![{name}]({path})", ""]
    lines += _examples_md(examples)
    lines += ["## Run metadata", ""]
    lines += _md_table(["key", "value"], [[_md(k), _md(v)] for k, v in _flatten(metadata)], [False, False])
    lines += ["", f"_Written by atr {__version__}, report schema {REPORT_SCHEMA_VERSION}._", ""]
    return "\n".join(lines)


def _examples_md(examples: Mapping[str, Any]) -> list[str]:
    if not examples or not (examples.get("a2t") or examples.get("t2a")):
        return []
    lines = ["## Examples", ""]
    for kind in ("a2t", "t2a"):
        for ex in examples.get(kind, []):
            if kind == "a2t":
                head = f"**Audio query** {_md(ex['query_clip'])}: best correct caption at rank"
            else:
                head = f"**Caption query** “{_md(ex['query_caption'])}”: correct clip at rank"
            rows = [[_md(c) for c in cells] for _, cells in _example_rows(ex, kind)]
            item = "caption" if kind == "a2t" else "clip"
            lines += [f"{head} {ex['correct_rank']:g}", ""]
            lines += _md_table(["rank", item, "score", "correct"], rows, [True, False, True, False])
            if kind == "a2t":
                lines += ["", "Ground truth: " + "; ".join(_md(c) for c in ex["ground_truth"])]
            lines.append("")
    return lines


NOTE = "R@K in %, MedR and MnR 1-based; R@1 counts only an untied first place (reference.md section 8)."


def _title(metadata: Mapping[str, Any]) -> str:
    from atr_core.audio.features import features_label

    split = metadata.get("split")
    model = metadata.get("model")
    name = model.get("name") if isinstance(model, Mapping) else model
    features = metadata.get("features")
    label = features_label(features["feature"], features.get("checkpoint")) if isinstance(
        features, Mapping) and features.get("feature") else None
    return " · ".join(["Retrieval report"] + [str(x) for x in (split, name, label) if x])


def _subtitle(
    metrics: Mapping[str, Any], aggregate: Mapping[str, Any] | None, runs: Sequence[Mapping[str, Any]] | None
) -> str:
    t2a, a2t = metrics["t2a"], metrics["a2t"]
    text = f"{int(t2a['num_queries'])} caption queries · {int(a2t['num_queries'])} audio queries"
    if int(a2t.get("num_excluded", 0)):
        text += f" · {int(a2t['num_excluded'])} clips without captions (not a2t queries)"
    if aggregate is not None:
        text += f" · mean ± std over {len(runs or [])} runs"
    return text


# --------------------------------------------------------------------------- html

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
background:#f6f8fa;margin:0}
main{max-width:1040px;margin:0 auto;padding:28px 20px 60px}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 12px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
.sub{color:#656d76;margin:0 0 20px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:14px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:10px;padding:14px 16px}
.card h3{margin:0 0 8px;font-size:14px;color:#656d76;font-weight:600}
.big{display:flex;gap:18px;flex-wrap:wrap}.big div{min-width:64px}
.big b{display:block;font-size:24px}.big span{font-size:12px;color:#656d76}
.t2a b{color:#1f6feb}.a2t b{color:#d9480f}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;width:100%}
th,td{padding:6px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
tr.ok td{background:#dafbe1}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:14px}
.figs img{width:100%;background:#fff;border:1px solid #d0d7de;border-radius:8px}
.ex{background:#fff;border:1px solid #d0d7de;border-radius:10px;padding:12px 14px;margin:0 0 14px}
.ex p{margin:0 0 8px}
code{background:#eff1f3;padding:1px 5px;border-radius:4px;font-size:13px}
details{margin-top:8px}summary{cursor:pointer;color:#0969da}.note{color:#656d76;font-size:13px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    numeric: Sequence[bool],
    row_class: Sequence[str] | None = None,
) -> list[str]:
    """An HTML table; every header and cell is escaped here."""
    def cell(tag: str, text: str, n: bool) -> str:
        return f'<{tag} class="n">{_e(text)}</{tag}>' if n else f"<{tag}>{_e(text)}</{tag}>"

    head = "".join(cell("th", h, n) for h, n in zip(headers, numeric, strict=True))
    out = ["<table>", f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_class[i])}"' if row_class and row_class[i] else ""
        body = "".join(cell("td", c, n) for c, n in zip(row, numeric, strict=True))
        out.append(f"<tr{cls}>{body}</tr>")
    return out + ["</tbody>", "</table>"]


def render_html(
    metrics: Mapping[str, Any],
    aggregate: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]] | None,
    examples: Mapping[str, Any],
    metadata: Mapping[str, Any],
    figures: Mapping[str, str],
) -> str:
    """The report as a standalone HTML page (escaped text; figures by relative path)."""
    title = _title(metadata)
    cells = table_cells(metrics, aggregate)
    keys = [k for _, k in COLUMNS]
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{_e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
           f"<h1>{_e(title)}</h1>", f'<p class="sub">{_e(_subtitle(metrics, aggregate, runs))}</p>',
           '<div class="cards">']  # fmt: skip
    for d, label in DIRECTIONS:
        out.append(f'<div class="card {d}"><h3>{_e(d)} · {_e(label)}</h3><div class="big">')
        for name, key in RUN_COLUMNS:
            out.append(f"<div><b>{_e(cells[d][keys.index(key)])}</b><span>{_e(name)}</span></div>")
        out.append("</div></div>")
    out += ["</div>", "<h2>Retrieval</h2>"]
    rows = [[f"{d} ({label})"] + cells[d] for d, label in DIRECTIONS]
    out += _html_table(["direction"] + [c for c, _ in COLUMNS] + ["queries"], rows, [False] + [True] * 7)
    out.append(f'<p class="note">{_e(NOTE)}</p>')
    if runs and len(runs) > 1:
        out += ["<h2>Runs</h2>"] + _html_table(_run_headers(), _run_rows(runs), [False] + [True] * 8)
    if figures:
        out += ["<h2>Figures</h2>", '<div class="figs">']
        out += [f'<img src="{_e(path)}" alt="{_e(name)}">' for name, path in figures.items()]
        out.append("</div>")
    out += _examples_html(examples)
    out += ["<h2>Run metadata</h2>"]
    out += _html_table(["key", "value"], [list(kv) for kv in _flatten(metadata)], [False, False])
    out.append(f'<p class="note">Written by atr {_e(__version__)}, report schema {REPORT_SCHEMA_VERSION}</p>')
    out += ["</main>", "</body>", "</html>", ""]
    return "\n".join(out)


def _examples_html(examples: Mapping[str, Any]) -> list[str]:
    if not examples or not (examples.get("a2t") or examples.get("t2a")):
        return []
    out = ["<h2>Examples</h2>"]
    for kind in ("a2t", "t2a"):
        for ex in examples.get(kind, []):
            rank = _e(format(ex["correct_rank"], "g"))
            if kind == "a2t":
                head = (f"Audio query <code>{_e(ex['query_clip'])}</code> · best correct caption "
                        f"at rank <b>{rank}</b>")  # fmt: skip
            else:
                head = (f"Caption query “{_e(ex['query_caption'])}” · correct clip "
                        f"<code>{_e(ex['ground_truth_clip'])}</code> at rank <b>{rank}</b>")  # fmt: skip
            results = _example_rows(ex, kind)
            item = "caption" if kind == "a2t" else "clip"
            out += ['<div class="ex">', f"<p>{head}</p>"]
            classes = ["ok" if ok else "" for ok, _ in results]
            numeric = [True, False, True, False]
            out += _html_table(["rank", item, "score", "correct"], [c for _, c in results], numeric, classes)
            if kind == "a2t":
                gt = "".join(f"<li>{_e(c)}</li>" for c in ex["ground_truth"])
                out.append(f"<details><summary>ground-truth captions</summary><ul>{gt}</ul></details>")
            out.append("</div>")
    return out


# --------------------------------------------------------------------------- writing


def _write(out_dir: str, name: str, data: bytes) -> str:
    """Write ``data`` to ``out_dir/name``: temp file + rename locally, one upload remotely."""
    if is_remote(out_dir):
        path = f"{out_dir.rstrip('/')}/{name}"
        with open_uri(path, "wb") as f:
            f.write(data)
        return path
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(folder / name)


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, Mapping[str, Any]],
    *,
    ranks: Mapping[str, np.ndarray],
    examples: Mapping[str, Any],
    metadata: Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """Write metrics.json, report.md, report.html and (when ranks are given) the two PNG figures.

    ``metrics`` is a :func:`atr_core.evaluation.metrics.retrieval_metrics`-style dict; ``ranks``
    holds the 0-based ``t2a``/``a2t`` rank vectors (may be empty: no figures); ``examples`` comes from
    :func:`qualitative_examples` (may be empty); ``runs`` (several seeds) switches the table to
    mean ± std. Returns the written paths by kind (keys of :data:`FILES`).
    """
    for d, _ in DIRECTIONS:
        if d not in metrics:
            raise InputError(f"metrics has no '{d}' direction (keys: {sorted(metrics)})")
    out = str(out_dir)
    aggregate = aggregate_runs(runs) if runs else None
    written: dict[str, str] = {}

    figures: dict[str, str] = {}
    if any(len(ranks.get(d, ())) > 0 for d, _ in DIRECTIONS):
        written["recall_png"] = _write(out, FILES["recall_png"], recall_figure(ranks, metrics))
        written["rank_hist_png"] = _write(out, FILES["rank_hist_png"], rank_histogram_figure(ranks))
        figures = {"Recall@K": FILES["recall_png"], "Rank distribution": FILES["rank_hist_png"]}

    doc = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "produced_by": {"package": "atr", "version": __version__},
        "metrics": metrics,
        "runs": list(runs) if runs else None,
        "aggregate": aggregate,
        "metadata": metadata,
        "examples": examples or {},
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default)
    written["metrics_json"] = _write(out, FILES["metrics_json"], text.encode("utf-8"))
    md = render_markdown(metrics, aggregate, runs, examples, metadata, figures)
    written["report_md"] = _write(out, FILES["report_md"], md.encode("utf-8"))
    page = render_html(metrics, aggregate, runs, examples, metadata, figures)
    written["report_html"] = _write(out, FILES["report_html"], page.encode("utf-8"))
    return written
