"""benchmarks/gpu.py on the CPU: the real architectures built on the meta device have the published
sizes, the memory plan places FLUX.2 [dev], the plan prints, and the tiny rehearsal runs a model's rows
through the same code as the GPU run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("imagegate_gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("key", ["flux1-dev", "flux1-fill", "flux2-klein-4b", "flux2-dev", "qwen-image-edit"])
def test_real_architectures_have_the_published_sizes(bench, key):
    build = bench.MODELS[key].real()
    counts = bench.parameter_counts(build)
    assert build.published and set(build.published) <= set(counts)
    for component, name in build.published.items():
        published = bench.PUBLISHED_PARAMETERS[name]
        assert abs(counts[component] - published) / published < 0.01, (component, counts[component], published)


def test_published_sizes_pinned_by_the_issue(bench):
    flux = bench.parameter_counts(bench.MODELS["flux1-dev"].real())
    assert round(flux["transformer"] / 1e9, 1) == 11.9 and round(flux["text_encoder_2"] / 1e9, 2) == 4.76
    assert bench.parameter_counts(bench.MODELS["qwen-image"].real())["transformer"] == 20_430_401_088


def test_memory_plan_puts_flux2_dev_in_bf16_on_an_h200_and_offloads_on_an_h100(bench):
    build = bench.MODELS["flux2-dev"].real()
    weights, fits = bench.memory_plan(build, bench.meta_components(build))
    assert 100 < weights["bf16"] < 110  # 56B parameters: ~112 GB
    assert weights["fp8"] < 0.75 * weights["bf16"] and weights["offload"] < 0.6 * weights["bf16"]
    assert fits == {"H100 80GB": "offload", "H200 141GB": "bf16"}


def test_plan_prints_parameters_memory_and_time(bench, capsys):
    assert bench.main(["--plan", "--models", "flux2-klein-4b"]) == 0
    out = capsys.readouterr().out
    for heading in ("### Parameters", "### Memory plan", "### Time plan", "### Session time plan"):
        assert heading in out
    assert "| FLUX.2 [klein] 4B | transformer | 3.876 B |" in out


def test_tiny_rehearsal_runs_every_row_of_a_model(bench, capsys):
    try:
        assert bench.main(["--tiny", "--models", "flux1-schnell", "--runs", "2", "--warmup", "1"]) == 0
    finally:
        torch._dynamo.reset()
    rows = table_rows(capsys.readouterr().out)
    assert [row[2] for row in rows] == [row.label for row in bench.ROWS if row.model == "flux1-schnell"]
    by_label = {row[2]: row for row in rows}
    # The reference call runs with every option off: the eager row reproduces it exactly.
    assert by_label["eager (bf16, every option off)"][14] == "inf"
    assert by_label["+ fp8"][3] == "n/a" and "fp8" in by_label["+ fp8"][15]
    compiled = by_label["+ compile"]
    assert float(compiled[3]) > 0 and float(compiled[6]) > 0  # p50, first call
    assert all(float(compiled[i]) > 0 for i in (7, 8, 9, 10))  # text, step, VAE, store
    assert float(compiled[13]) > 0  # images/s at batch 4


def test_rows_past_the_deadline_are_listed_not_run(bench, capsys):
    assert bench.main(["--tiny", "--models", "flux1-schnell", "--deadline-s", "1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert rows and all(row[3] == "not run" for row in rows)
