"""FLUX.2 [dev] and [klein] engines against tiny random-weight checkpoints, loaded through the
registry's factories exactly as the model manager loads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagegate.engines import flux2 as f2
from imagegate.engines.base import EngineCall, Flux2Options, LoraSpec
from imagegate.engines.registry import resolve_factory
from imagegate.exceptions import InputError, JobCanceledError, WeightsNotFoundError

from .support import gradient, mean_abs, pixels, solid, Steps

PROMPT = "a photo of a red cat"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from imagegate.fixtures.flux2 import build_flux2, build_flux2_klein

    root = tmp_path_factory.mktemp("flux2")
    return {
        "dev": build_flux2(root),
        "klein": build_flux2_klein(root),
        "klein-distilled": build_flux2_klein(root, distilled=True),
    }


def load(key: str, path: Path):
    return resolve_factory(key)(str(path), device="cpu", dtype="auto", model_id=key.replace(".", "-"))


@pytest.fixture(scope="module")
def t2i(dirs):
    return load("flux2.text-to-image", dirs["dev"])


@pytest.fixture(scope="module")
def edit(dirs):
    return load("flux2.edit", dirs["dev"])


@pytest.fixture(scope="module")
def relight(dirs):
    return load("flux2.relight", dirs["dev"])


@pytest.fixture(scope="module")
def klein_t2i(dirs):
    return load("flux2-klein.text-to-image", dirs["klein"])


@pytest.fixture(scope="module")
def klein_edit(dirs):
    return load("flux2-klein.edit", dirs["klein"])


def call(**overrides) -> EngineCall:
    values = dict(task="text-to-image", prompt=PROMPT, width=64, height=64, num_inference_steps=2, seed=5)
    values.update(overrides)
    return EngineCall(**values)


def edit_call(images, **overrides) -> EngineCall:
    return call(task="edit", images=list(images), **overrides)


def make_lora(checkpoint: Path, out_dir: Path) -> Path:
    """A random peft LoRA on the FLUX.2 transformer's attention, saved in the diffusers format."""
    from diffusers import Flux2Pipeline, Flux2Transformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = Flux2Transformer2DModel.from_pretrained(checkpoint, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                       init_lora_weights=False))
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in sorted(transformer.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    Flux2Pipeline.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer))
    return out_dir / "pytorch_lora_weights.safetensors"


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "key, cls",
    [
        ("flux2.text-to-image", f2.Flux2TextToImage),
        ("flux2.edit", f2.Flux2Edit),
        ("flux2.relight", f2.Flux2Relight),
        ("flux2-klein.text-to-image", f2.Flux2KleinTextToImage),
        ("flux2-klein.edit", f2.Flux2KleinEdit),
    ],
)
def test_registry_keys_load_their_classes(key, cls):
    factory = resolve_factory(key)
    assert factory.__self__ is cls and factory.__func__ is cls.load.__func__


# --------------------------------------------------------------------------- FLUX.2 [dev] text-to-image


def test_text_to_image_sizes_batch_and_steps(t2i):
    steps = Steps()
    result = t2i(call(num_images=2, width=96, height=64), steps)
    assert [im.size for im in result.images] == [(96, 64), (96, 64)]
    assert mean_abs(result.images[0], result.images[1]) > 1  # one batch, two noise draws
    assert steps.seen == [(1, 2), (2, 2)]
    assert result.info["width"] == 96 and result.info["guidance_scale"] == f2.DEV_GUIDANCE
    # Sizes snap to the 16-pixel packing grid.
    assert t2i(call(width=70, height=50), Steps()).images[0].size == (64, 48)


def test_num_images_is_one_batched_pipeline_call(t2i, monkeypatch):
    seen = []
    pipe_class = type(t2i.pipe)
    original = pipe_class.__call__

    def spy(self, *args, **kwargs):
        seen.append(kwargs["num_images_per_prompt"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", spy)
    assert len(t2i(call(num_images=3), Steps()).images) == 3
    assert seen == [3]


def test_seed_determinism_and_conditioning(t2i):
    first = t2i(call(), Steps()).images[0]
    assert np.array_equal(pixels(first), pixels(t2i(call(), Steps()).images[0]))
    assert mean_abs(first, t2i(call(seed=6), Steps()).images[0]) > 1
    assert mean_abs(first, t2i(call(guidance_scale=1.5), Steps()).images[0]) > 1
    assert mean_abs(first, t2i(call(prompt="a large white house at night"), Steps()).images[0]) > 0.5
    # [dev] is guidance-distilled and has no negative branch: a negative prompt cannot matter.
    assert np.array_equal(pixels(first), pixels(t2i(call(negative_prompt="blurry"), Steps()).images[0]))


def test_dev_defaults_and_task_check(t2i):
    kwargs = t2i.pipeline_kwargs(call(num_inference_steps=None, guidance_scale=None, width=None, height=None))
    assert kwargs["num_inference_steps"] == f2.DEV_STEPS and kwargs["guidance_scale"] == f2.DEV_GUIDANCE
    assert (kwargs["width"], kwargs["height"]) == (1024, 1024) and kwargs["image"] is None
    with pytest.raises(InputError, match="task"):
        t2i(call(task="edit"), Steps())
    with pytest.raises(InputError, match="images"):
        t2i(call(images=[gradient()]), Steps())


# --------------------------------------------------------------------------- FLUX.2 [dev] editing


def test_edit_output_size_rules(edit):
    wide = gradient(160, 96)
    # Explicit size wins over the reference's...
    assert edit(edit_call([wide], width=64, height=64), Steps()).images[0].size == (64, 64)
    # ...unless the client asked to match the input image.
    assert edit(edit_call([wide], options=Flux2Options(match_input_image=True)), Steps()).images[0].size == (160, 96)
    # No size at all: the first reference's.
    assert edit(edit_call([wide], width=None, height=None), Steps()).images[0].size == (160, 96)
    # One side: the other follows the reference's aspect ratio.
    assert edit.output_size(edit_call([wide], width=320, height=None), [wide]) == (320, 192)
    # Huge references are capped at about one megapixel, on the 16-pixel grid.
    width, height = edit.output_size(edit_call([], width=None, height=None), [gradient(4000, 3000)])
    assert width * height <= f2.MAX_REFERENCE_AREA and width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 4 / 3) < 0.02


def test_edit_uses_every_reference(edit):
    red, blue, grad = solid((220, 30, 30)), solid((30, 30, 220)), gradient()
    one = edit(edit_call([red]), Steps())
    assert one.info["references"] == 1
    assert mean_abs(one.images[0], edit(edit_call([blue]), Steps()).images[0]) > 0.3
    two = edit(edit_call([red, grad]), Steps()).images[0]
    assert mean_abs(one.images[0], two) > 0.3  # the second reference is seen
    three = edit(edit_call([red, grad, blue]), Steps())
    assert three.info["references"] == 3 and mean_abs(two, three.images[0]) > 0.3
    # Reference order is part of the conditioning (each image gets its own time offset).
    assert mean_abs(two, edit(edit_call([grad, red]), Steps()).images[0]) > 0.3
    # And editing is not text-to-image.
    assert mean_abs(one.images[0], same_call_without_references(edit)) > 0.3


def same_call_without_references(edit) -> Image.Image:
    kwargs = edit.pipeline_kwargs(edit_call([solid((220, 30, 30))]))
    kwargs["image"] = None
    return edit.pipe(**kwargs, generator=torch.Generator().manual_seed(5)).images[0]


def test_edit_reference_limits(edit):
    with pytest.raises(InputError, match="1 to 10"):
        edit(edit_call([]), Steps())
    with pytest.raises(InputError, match="1 to 10"):
        edit(edit_call([gradient()] * 11), Steps())
    with pytest.raises(InputError, match=r"images\[1\]"):
        edit(edit_call([gradient(), gradient(32, 64)]), Steps())
    with pytest.raises(InputError, match="aspect"):
        edit(edit_call([gradient(64 * 9, 64)]), Steps())
    assert len(edit(edit_call([gradient()] * 10, num_images=2), Steps()).images) == 2


# --------------------------------------------------------------------------- relighting


def test_relight_prompt_acceleration_and_loras(relight, dirs, tmp_path):
    kwargs = relight.pipeline_kwargs(edit_call([gradient()], prompt="warm sunset light from the left."))
    assert kwargs["prompt"] == f2.RELIGHT_PROMPT.format(prompt="warm sunset light from the left")
    with pytest.raises(InputError, match="prompt"):
        relight(edit_call([gradient()], prompt="  "), Steps())
    with pytest.raises(InputError, match="acceleration"):
        relight(edit_call([gradient()], acceleration="high"), Steps())

    base = relight(edit_call([gradient()]), Steps()).images[0]
    lora = make_lora(dirs["dev"], tmp_path / "lora")
    lit = relight(edit_call([gradient()], loras=[LoraSpec(str(lora), 1.0)]), Steps())
    assert mean_abs(base, lit.images[0]) > 1
    assert not getattr(relight.pipe.transformer, "peft_config", None)
    assert np.array_equal(pixels(base), pixels(relight(edit_call([gradient()]), Steps()).images[0]))


def count_attention_calls(engine, monkeypatch) -> list[int]:
    counter = [0]
    attn = engine.pipe.transformer.transformer_blocks[0].attn
    original = attn.processor

    def counting(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(attn, "processor", counting)
    return counter


def test_regular_acceleration_skips_transformer_work(relight, monkeypatch):
    counter = count_attention_calls(relight, monkeypatch)
    plain = relight(edit_call([gradient()], num_inference_steps=8), Steps())
    computed_plain, counter[0] = counter[0], 0
    fast = relight(edit_call([gradient()], num_inference_steps=8, acceleration="regular"), Steps())
    assert computed_plain == 8
    # 2 warm-up steps, then every other step is forecast: 2 + 3 computed of 8.
    assert counter[0] == 5
    assert fast.info["acceleration"] == "regular" and fast.info["steps_run"] == 8
    assert 0 < mean_abs(plain.images[0], fast.images[0])
    assert not relight.pipe.transformer.is_cache_enabled


def test_cancel_stops_and_removes_cache_hooks(relight):
    steps = Steps(cancel_at=3)
    with pytest.raises(JobCanceledError):
        relight(edit_call([gradient()], num_inference_steps=8, acceleration="regular"), steps)
    assert steps.seen == [(1, 8), (2, 8), (3, 8)]
    assert not relight.pipe.transformer.is_cache_enabled


# --------------------------------------------------------------------------- FLUX.2 [klein]


def test_klein_turbo_and_default_steps(klein_t2i, dirs):
    base_default = klein_t2i.pipeline_kwargs(call(num_inference_steps=None))
    base_turbo = klein_t2i.pipeline_kwargs(call(num_inference_steps=None, options=Flux2Options(turbo=True)))
    assert base_default["num_inference_steps"] == f2.KLEIN_STEPS[(False, False)] == 50
    assert base_turbo["num_inference_steps"] == f2.KLEIN_STEPS[(False, True)] == 28
    distilled = load("flux2-klein.text-to-image", dirs["klein-distilled"])
    assert distilled.pipeline_kwargs(call(num_inference_steps=None))["num_inference_steps"] == 8
    turbo = distilled(call(num_inference_steps=None, options=Flux2Options(turbo=True)), Steps())
    assert turbo.info["steps_run"] == 4 and turbo.info["turbo"] is True
    # Explicit steps win over turbo.
    assert distilled.pipeline_kwargs(call(num_inference_steps=6, options=Flux2Options(turbo=True)))["num_inference_steps"] == 6
    # Step-distilled [klein] ignores guidance; there is no second branch to steer.
    a = distilled(call(guidance_scale=1.0), Steps())
    b = distilled(call(guidance_scale=4.0, negative_prompt="blurry"), Steps())
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert b.info["classifier_free_guidance"] is False


def test_klein_base_guidance_and_negative_prompt(klein_t2i):
    plain = klein_t2i(call(guidance_scale=1.0), Steps())
    assert plain.info["classifier_free_guidance"] is False
    guided = klein_t2i(call(guidance_scale=4.0), Steps())
    negative = klein_t2i(call(guidance_scale=4.0, negative_prompt="blurry, dark"), Steps())
    assert guided.info["classifier_free_guidance"] and negative.info["negative_prompt"]
    assert mean_abs(plain.images[0], guided.images[0]) > 0.3
    assert mean_abs(guided.images[0], negative.images[0]) > 0.3
    # Without guidance the negative branch does not run, so the negative prompt cannot matter.
    unguided_negative = klein_t2i(call(guidance_scale=1.0, negative_prompt="blurry, dark"), Steps())
    assert np.array_equal(pixels(plain.images[0]), pixels(unguided_negative.images[0]))
    batch = klein_t2i(call(guidance_scale=4.0, negative_prompt="blurry, dark", num_images=2), Steps())
    # The batch's first image is the single call's image: same noise, same prompts. Batched float32
    # matmuls may round differently from single ones, so a pixel can land one level off.
    off = np.abs(pixels(batch.images[0]) - pixels(negative.images[0]))
    assert off.max() <= 1 and (off > 0).mean() < 0.001
    assert mean_abs(batch.images[0], batch.images[1]) > 1


def test_klein_multi_reference_editing(klein_edit):
    red, blue, grad = solid((220, 30, 30)), solid((30, 30, 220)), gradient()
    outputs = {}
    for name, refs in {"r": [red], "b": [blue], "rg": [red, grad], "rgb": [red, grad, blue]}.items():
        result = klein_edit(edit_call(refs, guidance_scale=1.0, options=Flux2Options(turbo=True)), Steps())
        assert result.info["references"] == len(refs) and result.images[0].size == (64, 64)
        outputs[name] = result.images[0]
    assert mean_abs(outputs["r"], outputs["b"]) > 0.3
    assert mean_abs(outputs["r"], outputs["rg"]) > 0.3
    assert mean_abs(outputs["rg"], outputs["rgb"]) > 0.3
    with pytest.raises(InputError, match="1 to 3"):
        klein_edit(edit_call([red, grad, blue, red]), Steps())
    with pytest.raises(InputError, match="1 to 3"):
        klein_edit(edit_call([]), Steps())
    matched = klein_edit(edit_call([gradient(96, 64)], options=Flux2Options(match_input_image=True)), Steps())
    assert matched.images[0].size == (96, 64)


def test_klein_regular_acceleration_with_guidance(klein_edit):
    plain = klein_edit(edit_call([gradient()], num_inference_steps=6, negative_prompt="dark"), Steps())
    fast = klein_edit(edit_call([gradient()], num_inference_steps=6, negative_prompt="dark",
                                acceleration="regular"), Steps())
    assert fast.info["acceleration"] == "regular" and mean_abs(plain.images[0], fast.images[0]) > 0
    assert not klein_edit.pipe.transformer.is_cache_enabled


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize(
    "key",
    ["flux2.text-to-image", "flux2.edit", "flux2.relight", "flux2-klein.text-to-image", "flux2-klein.edit"],
)
def test_missing_weights(key, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights for flux-2 not found"):
        resolve_factory(key)(str(tmp_path / "absent"), device="cpu", dtype="auto", model_id="flux-2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError):
        resolve_factory(key)(str(tmp_path / "empty"), device="cpu", dtype="auto", model_id="flux-2")
