"""What can be checked of a Dataflow run without Dataflow: graph shape, launch checks, a dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from atr_core.errors import InputError
from pipelines import extract
from pipelines.common import ONE_PROCESS_PER_GPU, check_device, check_runner
from tests.audio_fixtures import write_audio

ROOT = Path(__file__).resolve().parents[1]
DATAFLOW = ["--runner=DataflowRunner", "--project=atr-test", "--region=us-central1"]


def _leaves(p: beam.Pipeline) -> list:
    found = []

    class Leaves(PipelineVisitor):
        def visit_transform(self, node):
            found.append(node)

    p.visit(Leaves())
    return found


def _audio(tmp_path: Path, n: int = 3) -> Path:
    audio = tmp_path / "audio"
    audio.mkdir()
    for i in range(n):
        write_audio(audio / f"c{i}.wav", 0.5 + i * 0.3, kind="noise", seed=i)
    return audio


def _upstream(leaves: list, label: str) -> list[str]:
    """Labels of every transform on the main-input path into the transform labelled ``label``."""
    producer = {out: node for node in leaves for out in node.outputs.values()}
    (node,) = [n for n in leaves if n.full_label == label]
    seen, todo = [], list(node.main_inputs.values())
    while todo:
        pcoll = todo.pop()
        if pcoll in producer:
            up = producer[pcoll]
            seen.append(up.full_label)
            todo.extend(up.main_inputs.values())
    return seen


def test_inputs_pass_a_fusion_break_before_decoding_and_ids_are_a_side_input(tmp_path):
    audio = _audio(tmp_path)
    out = tmp_path / "out"
    extract.run(["--runner=FnApiRunner", f"--input={audio}/*.wav", f"--output={out}", "--features=lms"])
    opts = extract.ExtractOptions(
        [f"--input={audio}/*.wav", f"--output={out}", "--features=lms", "--incremental=true"]
    )
    plan = extract.plan_run(opts)
    assert plan.existing_shards and not hasattr(plan, "existing_ids")
    p = beam.Pipeline(runner="FnApiRunner")
    extract.build_pipeline(p, plan)
    leaves = _leaves(p)
    up = _upstream(leaves, "Decode/ParDo(DecodeFn)")
    assert "SpreadClips/GroupByKey" in up and "Dedupe/ParDo(FilterInputs)" in up, up
    assert up.index("SpreadClips/GroupByKey") < up.index("Dedupe/ParDo(FilterInputs)")  # nearer Decode
    (dedupe,) = [n for n in leaves if n.full_label == "Dedupe/ParDo(FilterInputs)"]
    assert dedupe.side_inputs, "existing ids must reach the workers as a side input"
    # the old shards' ids are read on the workers: none of them is pickled into the job graph
    graph = p.to_runner_api().SerializeToString()
    assert sum(graph.count(f"c{i}.wav".encode()) for i in range(3)) == 0


def test_dataflow_launch_checks_fail_in_one_line_before_any_work(tmp_path):
    audio = _audio(tmp_path, 1)
    base = [sys.executable, "-m", "pipelines.extract", f"--input={audio}/*.wav", f"--output={tmp_path}/o",
            "--features=lms"]  # fmt: skip
    no_gcp = (
        "import sys, runpy; sys.modules['apache_beam.runners.dataflow.internal.apiclient'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_module('pipelines.extract', run_name='__main__')"
    )
    cases = {
        "gcp extra": [sys.executable, "-c", no_gcp, *base[3:], *DATAFLOW, "--temp_location=gs://b/tmp"],
        "temp_location=gs://": [*base, *DATAFLOW],
        "--region": [*base, "--runner=DataflowRunner", "--project=p", "--temp_location=gs://b/tmp"],
    }
    for needle, argv in cases.items():
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("extract: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], (needle, proc.stderr[-800:])
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cuda_fails_locally_before_work_and_asks_dataflow_for_one_process_per_gpu():
    import torch

    local = PipelineOptions(["--runner=FnApiRunner"])
    if torch.cuda.is_available():  # on a GPU machine the local check passes
        check_device(local, "cuda")
    else:
        with pytest.raises(InputError, match="CUDA is not available"):
            check_device(local, "cuda")
    remote = PipelineOptions([*DATAFLOW, "--temp_location=gs://b/tmp"])
    check_device(remote, "cuda")
    assert remote.view_as(DebugOptions).lookup_experiment(ONE_PROCESS_PER_GPU)
    cpu = PipelineOptions(DATAFLOW)
    check_device(cpu, "cpu")
    assert not cpu.view_as(DebugOptions).lookup_experiment(ONE_PROCESS_PER_GPU)
    check_runner(local)  # local runs need nothing
