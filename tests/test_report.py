"""atr_core.evaluation.report: files, table values vs metrics.json, HTML well-formedness, PNGs, examples."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atr_core.errors import InputError
from atr_core.evaluation import metrics as M
from atr_core.evaluation import report as R

VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}
NASTY = '<script>alert("x")</script> & a | pipe * star _under_ `tick`'


class StrictParser(HTMLParser):
    """Fails on any unbalanced or misnested tag; collects tags and img sources."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert tag not in VOID, f"end tag for void element {tag}"
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(path: Path) -> StrictParser:
    parser = StrictParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    assert parser.stack == [], f"unclosed tags {parser.stack}"
    return parser


def make_case(seed: int = 0, n_clips: int = 30, q: int = 5, dim: int = 12):
    rng = np.random.default_rng(seed)
    c2c = np.repeat(np.arange(n_clips), q)
    audio = rng.standard_normal((n_clips, dim)).astype(np.float32)
    text = (audio[c2c] * 0.6 + rng.standard_normal((len(c2c), dim))).astype(np.float32)
    captions = [f"caption {i} {NASTY}" for i in range(len(c2c))]
    clip_ids = [f"clip_{j}<u>" for j in range(n_clips)]
    ranks = M.rank_vectors(text @ audio.T, c2c)
    metrics = M.metrics_from_ranks(ranks, n_clips)
    return text, audio, captions, clip_ids, c2c, ranks, metrics


METADATA = {
    "split": "test",
    "model": {"name": f"model {NASTY}", "checkpoint_sha256": "ab" * 32},
    "features": {"name": "cnn14", "checkpoint_sha256": "cd" * 32},
    "counts": {"clips_ranked": 30, "captions_ranked": 150},
    "missing": {"clips_without_shard_row": {"count": 25, "examples": [f"id{i}" for i in range(25)]}},
}


# The paper's columns and the metrics.json keys they show (written out here, not taken from the module).
PAPER_COLUMNS = {"R@1": "R1", "R@5": "R5", "R@10": "R10", "R@50": "R50", "MedR": "MedR", "MnR": "MeanR"}


def md_table_rows(md: str) -> dict[str, dict[str, str]]:
    """{direction: {column header: cell}} from the first table of report.md."""
    lines = md.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("| direction |"))
    headers = [c.strip() for c in lines[head].strip("|").split("|")]
    assert headers == ["direction", *PAPER_COLUMNS, "queries"]
    rows = {}
    for line in lines[head + 2 : head + 4]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].split()[0]] = dict(zip(headers, cells, strict=True))
    return rows


# --------------------------------------------------------------------------- files and table


def test_write_report_files_and_table_values(tmp_path):
    text, audio, captions, clip_ids, c2c, ranks, metrics = make_case()
    examples = R.qualitative_examples(text, audio, captions, clip_ids, c2c, n_queries=3, top_k=4)
    paths = R.write_report(tmp_path, metrics, ranks=ranks, examples=examples, metadata=METADATA)
    assert set(paths) == set(R.FILES)
    for kind, name in R.FILES.items():
        assert Path(paths[kind]) == tmp_path / name and (tmp_path / name).stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["schema_version"] == R.REPORT_SCHEMA_VERSION
    assert doc["metrics"] == json.loads(json.dumps(metrics))
    assert doc["metadata"]["model"]["checkpoint_sha256"] == "ab" * 32
    assert len(doc["examples"]["a2t"]) == 3 and len(doc["examples"]["t2a"]) == 3

    rows = md_table_rows((tmp_path / "report.md").read_text())
    assert set(rows) == {"t2a", "a2t"}
    for d in ("t2a", "a2t"):
        for column, key in PAPER_COLUMNS.items():
            assert abs(float(rows[d][column]) - doc["metrics"][d][key]) <= 0.05 + 1e-9, (d, key)
        assert int(rows[d]["queries"]) == doc["metrics"][d]["num_queries"]


def test_several_runs_show_mean_and_std(tmp_path):
    runs = [make_case(seed)[-1] for seed in range(3)]
    mean = {d: {k: float(np.mean([r[d][k] for r in runs])) for k in runs[0][d]} for d in ("t2a", "a2t")}
    R.write_report(tmp_path, mean, ranks={}, examples={}, metadata={"split": "test"}, runs=runs)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    rows = md_table_rows((tmp_path / "report.md").read_text())
    for d in ("t2a", "a2t"):
        for column, key in PAPER_COLUMNS.items():
            m, s = (float(x) for x in rows[d][column].split("±"))
            agg = doc["aggregate"][d][key]
            assert abs(m - agg["mean"]) <= 0.05 + 1e-9 and abs(s - agg["std"]) <= 0.05 + 1e-9
            assert agg["std"] == pytest.approx(np.std([r[d][key] for r in runs]))
    assert not (tmp_path / R.FILES["recall_png"]).exists()  # no ranks: no figures
    html = parse_html(tmp_path / "report.html")
    assert html.images == []
    assert "Runs" in html.text


def test_html_is_well_formed_escaped_and_links_existing_pngs(tmp_path):
    text, audio, captions, clip_ids, c2c, ranks, metrics = make_case(seed=4)
    examples = R.qualitative_examples(text, audio, captions, clip_ids, c2c, n_queries=2, top_k=5, seed=3)
    R.write_report(tmp_path, metrics, ranks=ranks, examples=examples, metadata=METADATA)
    parser = parse_html(tmp_path / "report.html")
    assert "script" not in parser.tags and "u" not in parser.tags  # caption/clip markup stayed text
    assert any("<script>" in t for t in parser.text)  # ... and is shown literally
    assert sorted(parser.images) == sorted([R.FILES["recall_png"], R.FILES["rank_hist_png"]])
    for src in parser.images:
        assert (tmp_path / src).is_file()
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in md and "\\<script\\>" in md


def test_pngs_are_valid_images(tmp_path):
    *_, ranks, metrics = make_case(seed=5)
    paths = R.write_report(tmp_path, metrics, ranks=ranks, examples={}, metadata={})
    for kind in ("recall_png", "rank_hist_png"):
        with Image.open(paths[kind]) as img:
            img.verify()
        with Image.open(paths[kind]) as img:
            assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


def test_missing_direction_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="a2t"):
        R.write_report(tmp_path, {"t2a": {}}, ranks={}, examples={}, metadata={})


def test_remote_out_dir_goes_through_fsspec(monkeypatch):
    import fsspec

    *_, ranks, metrics = make_case(seed=6)
    monkeypatch.setattr(R, "is_remote", lambda uri: uri.startswith("memory://"))
    paths = R.write_report("memory://reports/test", metrics, ranks=ranks, examples={}, metadata={})
    fs = fsspec.filesystem("memory")
    for path in paths.values():
        assert path.startswith("memory://reports/test/") and fs.cat(path)


# --------------------------------------------------------------------------- curves and buckets


def test_recall_curve_and_buckets_agree_with_the_metrics():
    rng = np.random.default_rng(7)
    for _ in range(200):
        ranks = rng.integers(0, 240, size=int(rng.integers(1, 300))) / 2
        s = M.summarize_ranks(ranks)
        ks, rec = R.recall_curve(ranks, 100)
        assert ks[0] == 1 and ks[-1] == 100
        for k in (1, 5, 10, 50):
            assert rec[k - 1] == pytest.approx(s[f"R{k}"])
        buckets = [v for _, v in R.rank_buckets(ranks)]
        cumulative = np.cumsum(buckets)
        for i, k in enumerate((1, 5, 10, 50)):
            assert cumulative[i] == pytest.approx(s[f"R{k}"])
        assert cumulative[-1] == pytest.approx(100.0)


# --------------------------------------------------------------------------- qualitative examples


def test_qualitative_examples_properties():
    rng = np.random.default_rng(8)
    for seed in range(25):
        n_clips = int(rng.integers(2, 20))
        c2c = np.sort(rng.integers(0, n_clips, size=int(rng.integers(1, 60))))
        dim = 8
        audio = (rng.integers(-3, 4, size=(n_clips, dim)) / 4).astype(np.float32)  # exact dot products
        text = (rng.integers(-3, 4, size=(len(c2c), dim)) / 4).astype(np.float32)
        captions = [f"c{i}" for i in range(len(c2c))]
        clip_ids = [f"k{j}" for j in range(n_clips)]
        ex = R.qualitative_examples(text, audio, captions, clip_ids, c2c, n_queries=4, top_k=3, seed=seed)
        ranks = M.rank_vectors(text @ audio.T, c2c)
        a2t_rank = dict(zip(ranks["a2t_clips"].tolist(), ranks["a2t"].tolist(), strict=True))
        assert len(ex["a2t"]) == min(4, len(set(c2c.tolist())))
        assert len(ex["t2a"]) == min(4, len(c2c))
        for q in ex["a2t"]:
            j = clip_ids.index(q["query_clip"])
            assert q["ground_truth"] == [captions[c] for c in np.flatnonzero(c2c == j)]
            assert q["correct_rank"] == a2t_rank[j] + 1
            scores = [r["score"] for r in q["results"]]
            assert scores == sorted(scores, reverse=True) and len(scores) == min(3, len(c2c))
            for r in q["results"]:
                c = captions.index(r["caption"])
                assert r["score"] == pytest.approx(float(text[c] @ audio[j]))
                assert r["correct"] == (c2c[c] == j) and r["clip"] == clip_ids[c2c[c]]
        for q in ex["t2a"]:
            c = captions.index(q["query_caption"])
            assert q["ground_truth_clip"] == clip_ids[c2c[c]]
            assert q["correct_rank"] == ranks["t2a"][c] + 1
            for r in q["results"]:
                j = clip_ids.index(r["clip"])
                assert r["score"] == pytest.approx(float(text[c] @ audio[j]))
                assert r["correct"] == (j == c2c[c])
        json.dumps(ex)  # serialisable


def test_qualitative_examples_are_seeded_and_validated():
    text, audio, captions, clip_ids, c2c, *_ = make_case(seed=9)
    a = R.qualitative_examples(text, audio, captions, clip_ids, c2c, seed=1)
    b = R.qualitative_examples(text, audio, captions, clip_ids, c2c, seed=1)
    c = R.qualitative_examples(text, audio, captions, clip_ids, c2c, seed=2)
    assert a == b and a != c
    with pytest.raises(InputError, match="caption texts"):
        R.qualitative_examples(text, audio, captions[:-1], clip_ids, c2c)
    with pytest.raises(InputError, match="clip ids"):
        R.qualitative_examples(text, audio, captions, clip_ids[:-1], c2c)


@pytest.mark.parametrize(
    ("features", "named"),
    [({"feature": "cnn14", "checkpoint": "random:0"}, "RANDOM weights (random:0"),
     ({"feature": "cnn14", "checkpoint": "/w/Cnn14_mAP=0.431.pth"}, "CNN14 features (Cnn14_mAP=0.431.pth)"),
     ({"feature": "lms", "checkpoint": ""}, "LMS features")],
)
def test_the_title_names_the_features_and_their_weights(tmp_path, features, named):
    text, audio, captions, clip_ids, c2c, ranks, metrics = make_case()
    examples = R.qualitative_examples(text, audio, captions, clip_ids, c2c, n_queries=2, top_k=3)
    metadata = {**METADATA, "features": features}
    R.write_report(tmp_path, metrics, ranks=ranks, examples=examples, metadata=metadata)
    for name in ("report.html", "report.md"):
        page = (tmp_path / name).read_text()
        title = page.split("<h1>", 1)[1].split("</h1>")[0] if name.endswith("html") else page.splitlines()[0]
        assert named in title.replace("&#x27;", "'").replace("\\", ""), title
