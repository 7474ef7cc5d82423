"""Qwen-Image engines (boogu-image, boogu-image-edit) against a tiny random-weight checkpoint,
loaded through the registry's factories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagegate.engines import qwen_image as qi
from imagegate.engines.base import EngineCall, QwenImageOptions
from imagegate.engines.registry import resolve_factory
from imagegate.exceptions import InputError, JobCanceledError, ValidationError, WeightsNotFoundError

from .support import gradient, mean_abs, same, Steps

PROMPT = "a photo of a red cat"
PROMPT_ZH = "一只红色的猫的照片"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegate.fixtures.qwen_image import build_qwen_image

    return build_qwen_image(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def t2i(checkpoint):
    factory = resolve_factory("qwen-image.text-to-image")
    return factory(str(checkpoint), device="cpu", dtype="auto", model_id="boogu-image")


@pytest.fixture(scope="module")
def edit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagegate.fixtures.qwen_image import build_qwen_image_edit

    return build_qwen_image_edit(tmp_path_factory.mktemp("qwen-edit"))


@pytest.fixture(scope="module")
def edit(edit_checkpoint):
    factory = resolve_factory("qwen-image.edit")
    return factory(str(edit_checkpoint), device="cpu", dtype="auto", model_id="boogu-image-edit")


def call(**overrides) -> EngineCall:
    values = dict(task="text-to-image", prompt=PROMPT, width=64, height=64, num_inference_steps=4, seed=3,
                  guidance_scale=4.0, negative_prompt="blurry, low quality")
    values.update(overrides)
    return EngineCall(**values)


def window(start: float, end: float, **overrides) -> EngineCall:
    return call(options=QwenImageOptions(cfg_range_start=start, cfg_range_end=end), **overrides)


def count_block_calls(engine, monkeypatch) -> list[int]:
    """Counts real transformer passes: the first block runs once per computed pass."""
    counter = [0]
    block = engine.pipe.transformer.transformer_blocks[0]
    original = block.forward

    def counting(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(block, "forward", counting)
    return counter


# --------------------------------------------------------------------------- text-to-image


def test_registry_keys_load_their_classes():
    assert resolve_factory("qwen-image.text-to-image").__self__ is qi.QwenImageTextToImage
    assert resolve_factory("qwen-image.edit").__self__ is qi.QwenImageEdit


def test_sizes_batch_seed_and_steps(t2i):
    steps = Steps()
    result = t2i(call(num_images=2, width=96, height=64), steps)
    assert [im.size for im in result.images] == [(96, 64), (96, 64)]
    assert mean_abs(result.images[0], result.images[1]) > 1
    assert steps.seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    again = t2i(call(num_images=2, width=96, height=64), Steps())
    assert same(result.images[0], again.images[0]) and same(result.images[1], again.images[1])
    assert mean_abs(result.images[0], t2i(call(seed=4, width=96, height=64), Steps()).images[0]) > 1
    kwargs = t2i.pipeline_kwargs(call(width=None, height=None, num_inference_steps=None, guidance_scale=None))
    assert (kwargs["width"], kwargs["height"], kwargs["num_inference_steps"]) == (1024, 1024, qi.QWEN_STEPS)
    assert kwargs["true_cfg_scale"] == qi.QWEN_TRUE_CFG


def test_bilingual_prompts(t2i):
    english = t2i(call(), Steps()).images[0]
    chinese = t2i(call(prompt=PROMPT_ZH), Steps()).images[0]
    assert mean_abs(english, chinese) > 0.3
    assert same(chinese, t2i(call(prompt=PROMPT_ZH), Steps()).images[0])


def test_true_cfg_negative_prompt_and_guidance(t2i):
    guided = t2i(call(), Steps())
    assert guided.info["classifier_free_guidance"] and guided.info["true_cfg_scale"] == 4.0
    other_negative = t2i(call(negative_prompt="cartoon, drawing"), Steps()).images[0]
    empty_negative = t2i(call(negative_prompt=None), Steps()).images[0]  # Qwen's " " negative
    weaker = t2i(call(guidance_scale=2.0), Steps()).images[0]
    unguided = t2i(call(guidance_scale=1.0), Steps())
    assert not unguided.info["classifier_free_guidance"]
    for a, b in [(guided.images[0], other_negative), (guided.images[0], empty_negative),
                 (guided.images[0], weaker), (empty_negative, unguided.images[0])]:
        assert mean_abs(a, b) > 0.3
    # With guidance 1 the negative branch never runs, so the negative prompt cannot matter.
    assert same(unguided.images[0], t2i(call(guidance_scale=1.0, negative_prompt=None), Steps()).images[0])


def test_cfg_range_windows(t2i, monkeypatch):
    counter = count_block_calls(t2i, monkeypatch)
    results, passes = {}, {}
    for start, end in [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0), (0.0, 0.0), (0.8, 1.0)]:
        counter[0] = 0
        results[(start, end)] = t2i(window(start, end), Steps())
        passes[(start, end)] = counter[0]
    pure = t2i(call(guidance_scale=1.0), Steps()).images[0]

    full, first, second = (results[w].images[0] for w in [(0.0, 1.0), (0.0, 0.5), (0.5, 1.0)])
    assert mean_abs(full, first) > 0.3 and mean_abs(full, second) > 0.3 and mean_abs(first, second) > 0.3
    # An empty window is guidance off.
    assert same(results[(0.0, 0.0)].images[0], pure)
    # So is a window no step falls in (fractions 0, .25, .5, .75 vs [.8, 1)): here every
    # unconditional call goes through the hook and is skipped, and the result is still bit-identical.
    assert same(results[(0.8, 1.0)].images[0], pure)
    assert results[(0.8, 1.0)].info["unconditional_passes_skipped"] == 4
    # Steps outside the window cost one pass, not two.
    assert passes == {(0.0, 1.0): 8, (0.0, 0.5): 6, (0.5, 1.0): 6, (0.0, 0.0): 4, (0.8, 1.0): 4}
    assert results[(0.0, 0.5)].info["cfg_range"] == [0.0, 0.5]
    assert results[(0.0, 0.5)].info["unconditional_passes_skipped"] == 2
    # The first half of the schedule matters more than the second: guiding it alone lands nearer
    # to full guidance than guiding the second half alone does.
    assert mean_abs(full, first) < mean_abs(full, second)


def test_cfg_range_with_batches_and_acceleration(t2i):
    single = t2i(window(0.0, 0.5), Steps()).images[0]
    batch = t2i(window(0.0, 0.5, num_images=2), Steps())
    # The batch's first image is the single call's, up to batch-size-dependent float rounding.
    assert mean_abs(batch.images[0], single) < 0.05 and mean_abs(batch.images[0], batch.images[1]) > 1
    fast = t2i(window(0.0, 0.5, num_inference_steps=8, acceleration="high"), Steps())
    assert fast.info["unconditional_passes_skipped"] == 4 and not t2i.pipe.transformer.is_cache_enabled
    # Nothing leaks into the next plain call.
    assert same(t2i(window(0.0, 0.5), Steps()).images[0], single)


def test_cfg_range_is_validated_once_by_the_catalog():
    from imagegate.catalog import MODELS

    spec = MODELS["boogu-image"]
    for start, end in [(0.6, 0.4), (-0.1, 0.5), (0.0, 1.5), ("soon", 1.0)]:
        with pytest.raises(ValidationError, match="cfg_range"):
            spec.validate({"prompt": PROMPT, "cfg_range_start": start, "cfg_range_end": end})
    params = spec.validate({"prompt": PROMPT, "cfg_range_start": 0.25, "cfg_range_end": 0.75, "seed": 1})
    assert spec.build_call(params, {}).options == QwenImageOptions(cfg_range_start=0.25, cfg_range_end=0.75)


def test_cancel_mid_window_leaves_the_hook_reusable(t2i):
    with pytest.raises(JobCanceledError):
        t2i(window(0.0, 0.5), Steps(cancel_at=1))
    assert same(t2i(window(0.0, 0.5), Steps()).images[0], t2i(window(0.0, 0.5), Steps()).images[0])


# --------------------------------------------------------------------------- editing


def edit_call(**overrides) -> EngineCall:
    values = dict(task="edit", prompt="make the sky blue", images=[gradient(96, 64)], seed=1,
                  num_inference_steps=3, guidance_scale=4.0)
    values.update(overrides)
    return EngineCall(**values)


def test_edit_checkpoint_is_in_the_published_layout(edit_checkpoint):
    import json

    index = json.loads((edit_checkpoint / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert (edit_checkpoint / "processor" / "tokenizer.json").is_file()


def test_edit_with_unit_image_guidance_is_the_plain_pipeline(edit, edit_checkpoint):
    """Scale 1 leaves the edit pipeline untouched: same bytes as calling diffusers directly."""
    from diffusers import QwenImageEditPlusPipeline

    source = gradient(96, 64)
    ours = edit(edit_call(images=[source], options=QwenImageOptions(image_guidance_scale=1.0)), Steps())
    assert ours.info["reference_free_passes"] == 0 and ours.images[0].size == (96, 64)
    plain = QwenImageEditPlusPipeline.from_pretrained(
        str(edit_checkpoint), **qi.QwenImageEdit.load_components(str(edit_checkpoint)))
    plain.set_progress_bar_config(disable=True)
    direct = plain(image=[source], prompt="make the sky blue", negative_prompt=qi.EMPTY_NEGATIVE_PROMPT,
                   true_cfg_scale=4.0, num_inference_steps=3, width=96, height=64,
                   generator=torch.Generator("cpu").manual_seed(1)).images[0]
    assert same(ours.images[0], direct)


def test_image_guidance_runs_reference_free_passes_and_grows_with_the_scale(edit):
    results = {scale: edit(edit_call(options=QwenImageOptions(image_guidance_scale=scale)), Steps())
               for scale in (1.0, 2.0, 8.0)}
    # 3 steps x 2 branches (true CFG), one extra pass each when the scale is above 1.
    assert [results[s].info["reference_free_passes"] for s in (1.0, 2.0, 8.0)] == [0, 6, 6]
    assert [results[s].info["image_guidance_scale"] for s in (1.0, 2.0, 8.0)] == [1.0, 2.0, 8.0]
    near, far = mean_abs(results[1.0].images[0], results[2.0].images[0]), mean_abs(
        results[1.0].images[0], results[8.0].images[0])
    assert 0.5 < near < far
    again = edit(edit_call(options=QwenImageOptions(image_guidance_scale=8.0)), Steps())
    assert same(again.images[0], results[8.0].images[0])


def test_image_guidance_hook_applies_the_formula(edit):
    """One transformer call through the hook equals ``pred + (g - 1) * (pred - pred_without_ref)``."""
    transformer = edit.pipe.transformer
    generator = torch.Generator().manual_seed(0)
    channels = transformer.config.in_channels
    out_shape, ref_shape = (1, 2, 3), (1, 4, 4)
    hidden = torch.randn(2, 6 + 16, channels, generator=generator)
    text = torch.randn(2, 5, transformer.config.joint_attention_dim, generator=generator)
    kwargs = dict(encoder_hidden_states=text, encoder_hidden_states_mask=torch.ones(2, 5, dtype=torch.long),
                  timestep=torch.full((2,), 0.5), return_dict=False)
    hook = edit.guidance_hook
    with torch.no_grad():
        hook.configure(None, edit.pipe, image_guidance=1.0)
        with_ref = transformer(hidden_states=hidden, img_shapes=[[out_shape, ref_shape]] * 2, **kwargs)[0]
        without = transformer(hidden_states=hidden[:, :6], img_shapes=[[out_shape]] * 2, **kwargs)[0]
        hook.configure(None, edit.pipe, image_guidance=3.0)
        guided = transformer(hidden_states=hidden, img_shapes=[[out_shape, ref_shape]] * 2, **kwargs)[0]
        hook.configure(None, edit.pipe)
    assert not torch.allclose(with_ref[:, :6], without, atol=1e-4)
    torch.testing.assert_close(guided[:, :6], with_ref[:, :6] + 2.0 * (with_ref[:, :6] - without))
    torch.testing.assert_close(guided[:, 6:], with_ref[:, 6:])


def test_edit_sizes_guidance_and_validation(edit):
    source = gradient(96, 64)
    kept = edit(edit_call(images=[source], guidance_scale=1.0), Steps())
    assert kept.images[0].size == (96, 64) and kept.info["classifier_free_guidance"] is False
    sized = edit(edit_call(images=[source], width=64, height=64, num_images=2, guidance_scale=1.0), Steps())
    assert [im.size for im in sized.images] == [(64, 64), (64, 64)]
    guided = edit(edit_call(images=[source], negative_prompt="blurry", num_inference_steps=4,
                            options=QwenImageOptions(cfg_range_start=0.0, cfg_range_end=0.5, image_guidance_scale=2.0)),
                  Steps())
    # Steps 2 and 3 fall outside the window: their unconditional pass (and its reference-free
    # companion) is skipped.
    assert guided.info["unconditional_passes_skipped"] == 2 and guided.info["reference_free_passes"] == 6
    assert mean_abs(kept.images[0], guided.images[0]) > 0.3
    with pytest.raises(InputError, match="image"):
        edit(edit_call(images=[source, source]), Steps())
    with pytest.raises(InputError, match="acceleration"):
        edit(edit_call(acceleration="regular", options=QwenImageOptions(image_guidance_scale=2.0)), Steps())
    with pytest.raises(InputError, match="task"):
        edit(EngineCall(task="text-to-image", prompt="x"), Steps())


@pytest.mark.parametrize("key", ["qwen-image.text-to-image", "qwen-image.edit"])
def test_missing_weights(key, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights for boogu-image not found"):
        resolve_factory(key)(str(tmp_path / "absent"), device="cpu", dtype="auto", model_id="boogu-image")


def test_edit_needs_the_edit_checkpoint(checkpoint):
    """A text-to-image folder has no processor: the edit engine reports missing weights."""
    with pytest.raises(WeightsNotFoundError, match="not a complete diffusers checkpoint"):
        resolve_factory("qwen-image.edit")(str(checkpoint), device="cpu", dtype="auto", model_id="boogu-image-edit")
