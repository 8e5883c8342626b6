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


GPU = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
IMAGE = "us-docker.pkg.dev/atr-test/atr/worker:test"
DRY_RUN = [
    *DATAFLOW, "--temp_location=gs://atr-test/tmp", "--dry_run=True", f"--sdk_container_image={IMAGE}",
    f"--dataflow_service_options={GPU}", "--machine_type=n1-standard-8", "--device=cuda",
]  # fmt: skip


def _translated(result) -> tuple[list[str], object]:
    """Transform names and the Dataflow environment of a dry-run job (built as a submission would)."""
    from apache_beam.runners.dataflow.internal import apiclient

    job = result.job
    env = apiclient.Environment([], job.options, "8", "gs://atr-test/tmp/pipeline.pb", job.proto_pipeline)
    return [t.unique_name for t in job.proto_pipeline.components.transforms.values()], env.proto


def _assert_gpu_environment(env) -> None:
    assert GPU in list(env.service_options)
    assert ONE_PROCESS_PER_GPU in list(env.experiments)
    (pool,) = env.worker_pools
    assert pool.machine_type == "n1-standard-8"
    assert [c.container_image for c in pool.sdk_harness_container_images] == [IMAGE]


def test_extract_dry_run_on_dataflow_translates_without_network(tmp_path):
    audio = _audio(tmp_path, 2)
    result = extract.run([f"--input={audio}/*.wav", f"--output={tmp_path}/out", "--features=lms", *DRY_RUN])
    names, env = _translated(result)
    assert {"SpreadClips/GroupByKey", "Decode/ParDo(DecodeFn)", "ExistingIds"} <= set(names)
    _assert_gpu_environment(env)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_embed_dry_run_on_dataflow_translates_without_network(tmp_path):
    from pipelines import embed
    from tests.test_embed import embed_args, make_corpus

    c = make_corpus(tmp_path)
    argv = [a for a in embed_args(c, tmp_path / "out") if not a.startswith("--runner")]
    names, env = _translated(embed.run([*argv, *DRY_RUN]))
    assert any(n.startswith("val/") or "RunInference" in n for n in names), names[:20]
    _assert_gpu_environment(env)


def _rows(out: Path) -> dict[str, tuple]:
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted(out.glob("segments*.parquet")):
        t = pq.read_table(path)
        for r in t.to_pylist():
            rows[r["audio_id"]] = (r["num_segments"], r["duration_s"], str(r["embedding"]))
    return rows


def test_multi_process_runner_gives_the_same_shards_as_in_process(tmp_path):
    """Every DoFn pickles and runs in other processes, as on Dataflow workers; same rows result."""
    audio = _audio(tmp_path, 4)
    common = [f"--input={audio}/*.wav", "--features=lms", "--runner=FnApiRunner", "--num_threads=1"]
    extract.run([*common, f"--output={tmp_path}/one"])
    extract.run([*common, f"--output={tmp_path}/multi", "--direct_running_mode=multi_processing",
                 "--direct_num_workers=2"])  # fmt: skip
    one, multi = _rows(tmp_path / "one"), _rows(tmp_path / "multi")
    assert len(one) == 4 and one == multi
