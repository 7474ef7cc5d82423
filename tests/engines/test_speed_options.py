"""The CUDA paths of the speed options, checked as far as a CPU allows: TF32 through torch's
``fp32_precision`` API and restored after every call, fp8 refused at load with a reason, step caches
left off step-distilled weights, compiled engines warming up at load and counting (and logging) every
later compilation, the recompile limit reported rather than silently run eagerly, First Block Cache on
the compiled blocks, and QKV fusion freeing each unfused copy as it goes."""

from __future__ import annotations

import gc
import importlib.util
import logging
import sys
import weakref

import pytest
import torch
from torch._dynamo import register_backend

from imagegate.config import Settings
from imagegate.engines import speed
from imagegate.engines.base import EngineCall
from imagegate.engines.diffusers_base import WarmupSize
from imagegate.engines.flux1 import Flux1TextToImage

from .support import mean_abs, noop, same

PRECISIONS = ("matmul", "cudnn", "conv", "rnn")


def precisions() -> dict[str, str]:
    cudnn = torch.backends.cudnn
    values = (torch.backends.cuda.matmul, cudnn, cudnn.conv, cudnn.rnn)
    return {name: backend.fp32_precision for name, backend in zip(PRECISIONS, values)}


def t2i(**overrides) -> EngineCall:
    values = dict(task="text-to-image", prompt="a photo of a red cat", width=64, height=64, num_inference_steps=4, seed=3)
    values.update(overrides)
    return EngineCall(**values)


# Counts, for the compile tests, every graph compiled and every run of compiled code (eager backend).
RUNS = {"compiled": 0, "ran": 0}


@register_backend(name="imagegate_test_counting")
def counting_backend(graph_module, example_inputs):
    RUNS["compiled"] += 1

    def run(*args):
        RUNS["ran"] += 1
        return graph_module.forward(*args)

    return run


@pytest.fixture()
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled_engine(source, *sizes: str) -> Flux1TextToImage:
    options = {"compile": True, "compile_backend": "imagegate_test_counting", "warmup_sizes": list(sizes)}
    return Flux1TextToImage.load(source, device="cpu", dtype="float32", model_id="tiny-flux1", options=options)


# --------------------------------------------------------------------------- TF32


def test_fp32_precision_sets_the_new_api_and_restores_it():
    before = precisions()
    with speed.fp32_precision(True):
        assert precisions() == dict.fromkeys(PRECISIONS, "tf32")
        with speed.fp32_precision(False):
            assert precisions() == dict.fromkeys(PRECISIONS, "ieee")
        assert precisions() == dict.fromkeys(PRECISIONS, "tf32")
    assert precisions() == before
    with pytest.raises(RuntimeError, match="boom"), speed.fp32_precision(True):
        raise RuntimeError("boom")
    assert precisions() == before


def test_each_call_sets_its_engine_precision_and_gives_the_previous_one_back(flux1_dirs):
    engine = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32", options={"tf32": True})
    assert engine.optimisations["tf32"] == "n/a: not CUDA" and engine.options.tf32 is False
    seen = []
    with speed.fp32_precision(True):  # what a previous engine or benchmark row left behind
        engine(t2i(num_inference_steps=2), lambda step, total: seen.append(precisions()))
        assert precisions() == dict.fromkeys(PRECISIONS, "tf32")
    # During the call: this engine's own choice (no TF32 off CUDA), whatever was set before it.
    assert seen == [dict.fromkeys(PRECISIONS, "ieee")] * 2
    engine.unload()


# --------------------------------------------------------------------------- fp8


def test_fp8_is_offered_only_where_the_recipe_runs():
    assert "CUDA GPU" in speed.fp8_unavailable_reason("cpu")
    ada = speed.fp8_unavailable_reason("cuda", capability=(8, 9))
    assert "compute capability 9.0" in ada and "8.9" in ada
    assert "9.0" in speed.fp8_unavailable_reason("cuda", capability=(8, 0))
    hopper = speed.fp8_unavailable_reason("cuda", capability=(9, 0))
    if importlib.util.find_spec("torchao") is None:  # the gpu extra is not installed here
        assert "imagegate[gpu]" in hopper
    else:
        assert hopper is None and speed.fp8_unavailable_reason("cuda", capability=(10, 0)) is None
    # The recipe cannot run on this CPU: the probe reports it instead of a job failing later.
    assert speed.fp8_probe("cpu").startswith("fp8 kernels failed on cpu")


def test_fp8_without_torchao_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    assert "imagegate[gpu]" in speed.fp8_unavailable_reason("cuda", capability=(9, 0))


def test_fp8_is_refused_at_load_with_the_reason_and_the_engine_serves(flux1_dirs, caplog):
    with caplog.at_level(logging.WARNING, logger="imagegate.engines.diffusers_base"):
        engine = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32", model_id="m",
                                       options={"fp8": True})
    assert engine.optimisations["fp8"].startswith("n/a: fp8") and "CUDA GPU" in engine.optimisations["fp8"]
    assert "m: fp8 refused, serving torch.float32: fp8" in caplog.text
    assert engine(t2i(num_inference_steps=1), noop).images[0].size == (64, 64)
    engine.unload()


# --------------------------------------------------------------------------- step caches


def test_step_caches_are_not_applied_to_step_distilled_weights(flux1_dirs, tmp_path):
    from imagegate.engines.flux2 import Flux2KleinTextToImage
    from imagegate.fixtures.flux2 import build_flux2_klein

    schnell = Flux1TextToImage.load(str(flux1_dirs["schnell"]), device="cpu", dtype="float32")
    klein = Flux2KleinTextToImage.load(str(build_flux2_klein(tmp_path, distilled=True)), device="cpu", dtype="float32")
    for engine in (schnell, klein):
        assert engine.step_distilled
        plain = engine(t2i(), noop)
        cached = engine(t2i(acceleration="high"), noop)
        assert same(plain.images[0], cached.images[0])
        assert cached.info["acceleration"] == "none" and "step-distilled" in cached.info["acceleration_skipped"]
        engine.unload()
    dev = Flux1TextToImage.load(str(flux1_dirs["t2i"]), device="cpu", dtype="float32")
    assert not dev.step_distilled
    cached = dev(t2i(num_inference_steps=8, acceleration="high"), noop)
    assert cached.info["acceleration"] == "high" and "acceleration_skipped" not in cached.info
    assert not same(cached.images[0], dev(t2i(num_inference_steps=8), noop).images[0])
    dev.unload()


# --------------------------------------------------------------------------- compile


def test_compiled_engine_warms_up_at_load_and_logs_later_compilations(flux1_dirs, fresh_dynamo, caplog):
    with caplog.at_level(logging.INFO, logger="imagegate.engines.diffusers_base"):
        engine = compiled_engine(str(flux1_dirs["t2i"]), "64x64", "64x64*2")
    try:
        assert engine.warmup_graphs > 0 and "tiny-flux1: warmed up 64x64*2" in caplog.text
        caplog.clear()
        for batch in (1, 2):
            result = engine(t2i(num_images=batch), noop)
            assert result.info["compiled_graphs"] == 0 and len(result.images) == batch
        assert engine.recompiles == 0 and "compiled" not in caplog.text
        other = engine(t2i(width=96), noop)
        assert other.info["compiled_graphs"] > 0 and engine.recompiles == other.info["compiled_graphs"]
        assert "tiny-flux1: compiled" in caplog.text and "for 96x64 x1" in caplog.text
    finally:
        engine.unload()


def test_engines_that_finish_setting_up_after_the_base_warm_up_once_loaded(fresh_dynamo, tmp_path):
    from imagegate.engines.qwen_image import QwenImageTextToImage
    from imagegate.fixtures.qwen_image import build_qwen_image

    options = {"compile": True, "compile_backend": "eager", "warmup_sizes": ["64x64"]}
    engine = QwenImageTextToImage.load(str(build_qwen_image(tmp_path)), device="cpu", dtype="float32", options=options)
    try:  # its guidance hook is registered after the base class applied the options
        assert engine.warmup_graphs > 0
        assert engine(t2i(guidance_scale=4.0), noop).info["compiled_graphs"] == 0
    finally:
        engine.unload()


def test_settings_warmup_sizes_reach_the_engine_options():
    settings = Settings(torch_compile=True, warmup_sizes=["768x1344", "1024x1024*4"])
    assert settings.engine_options.warmup_sizes == (WarmupSize(768, 1344), WarmupSize(1024, 1024, 4))
    assert settings.engine_options.compile is True
    with pytest.raises(ValueError, match="warmup_sizes"):
        Settings(warmup_sizes=["big"])


def test_hitting_the_recompile_limit_is_reported_and_the_call_still_served(flux1_dirs, fresh_dynamo, caplog):
    source = str(flux1_dirs["t2i"])
    plain = Flux1TextToImage.load(source, device="cpu", dtype="float32")
    with torch._dynamo.config.patch(recompile_limit=1, automatic_dynamic_shapes=False):
        engine = compiled_engine(source, "64x64")
        try:
            with caplog.at_level(logging.WARNING, logger="imagegate.engines.diffusers_base"):
                wide = engine(t2i(width=96), noop)
            assert "recompile limit (1)" in caplog.text and "new ones run eagerly" in caplog.text
            assert engine.optimisations["compile"] == "on (recompile limit reached: new shapes run eagerly)"
            assert mean_abs(wide.images[0], plain(t2i(width=96), noop).images[0]) < 0.05
            # From now on shapes it never compiled run eagerly without asking again; 64x64 keeps its code.
            ran = RUNS["ran"]
            assert engine(t2i(width=128), noop).images[0].size == (128, 64)
            assert RUNS["ran"] == ran
            engine(t2i(), noop)
            assert RUNS["ran"] > ran
        finally:
            engine.unload()
            plain.unload()


def test_first_block_cache_runs_on_the_compiled_blocks_taylorseer_eagerly(flux1_dirs, fresh_dynamo):
    source = str(flux1_dirs["t2i"])
    plain = Flux1TextToImage.load(source, device="cpu", dtype="float32")
    engine = compiled_engine(source, "64x64")
    try:
        compiled, ran = RUNS["compiled"], RUNS["ran"]
        regular = engine(t2i(num_inference_steps=8, acceleration="regular"), noop)
        assert RUNS["ran"] > ran and RUNS["compiled"] == compiled  # the hooks wrap the compiled code
        assert mean_abs(regular.images[0], plain(t2i(num_inference_steps=8, acceleration="regular"), noop).images[0]) < 0.05
        ran = RUNS["ran"]
        high = engine(t2i(num_inference_steps=8, acceleration="high"), noop)
        assert RUNS["ran"] == ran  # TaylorSeer hooks sit inside the blocks: eager
        assert mean_abs(high.images[0], plain(t2i(num_inference_steps=8, acceleration="high"), noop).images[0]) < 0.05
        assert not speed.hooks_inside_compiled_regions(engine.denoiser)  # hooks gone after the call
    finally:
        engine.unload()
        plain.unload()


# --------------------------------------------------------------------------- fused QKV


def test_fusing_qkv_frees_each_unfused_copy_before_the_next_module(flux1_dirs):
    from diffusers import FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(flux1_dirs["t2i"], subfolder="transformer")
    names = ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
    originals = {}
    for module in transformer.modules():
        if getattr(module, "_supports_qkv_fusion", False) and hasattr(module, "to_q"):
            originals[id(module)] = [weakref.ref(getattr(module, n).weight) for n in names if getattr(module, n, None) is not None]
    order: list[int] = []

    def check(module) -> None:
        order.append(id(module))
        gc.collect()
        for key, refs in originals.items():
            freed = [ref() is None for ref in refs]
            assert all(freed) if key in order else not any(freed), "unfused copies must go as each module is fused"

    assert speed.fuse_qkv_projections(transformer, on_fused=check) == len(originals) > 1
    assert order == list(originals)
