"""The demo's own pieces: refusals before any work, the held-out table beside chance, labels."""

from __future__ import annotations

import pytest

from atr_core.audio.features import features_label
from atr_core.errors import InputError, OutputExistsError
from atr_core.evaluation.chance import chance_levels
from pipelines import demo


def test_cnn14_without_a_checkpoint_and_a_non_empty_output_are_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="--cnn14_checkpoint"):
        demo.main(["--output", str(tmp_path / "out"), "--features", "cnn14"])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        demo.main(["--output", str(tmp_path / "full")])
    assert (tmp_path / "full" / "x").exists() and not (tmp_path / "out").exists()


def test_defaults_are_lms_features_glove_vectors_and_310_clips():
    args = demo.build_parser().parse_args(["--output", "o"])
    assert (args.features, args.word2vec, args.clips) == ("lms", "glove", 310)


def test_the_held_out_table_puts_chance_under_each_direction():
    metrics = {d: {"R1": 30.0, "R5": 60.0, "R10": 75.0, "MedR": 3.0, "MeanR": 8.0} for d in ("t2a", "a2t")}
    chance = chance_levels([5] * 62)
    lines = demo.metrics_table(metrics, chance)
    assert lines[1].split()[:4] == ["text->audio", "30.0", "60.0", "75.0"]
    assert lines[2].split()[:4] == ["chance", "1.6", "8.1", "16.1"]
    assert lines[4].split()[0] == "chance" and lines[4].split()[3] == "15.2"


def test_feature_labels_name_random_weights_loudly():
    label = features_label("cnn14", "random:3")
    assert "RANDOM" in label and "random:3" in label
    assert features_label("cnn14", "gs://b/Cnn14_mAP=0.431.pth") == "CNN14 features (Cnn14_mAP=0.431.pth)"
    assert features_label("lms").startswith("LMS")
