"""timm models by name (`model=timm/<name>`, the `timm` extra): the pruning hints for timm's layers, the one-line
refusals and failures, and runs through the whole pipeline on digits. Random init throughout: nothing is
downloaded. `make test` runs one model through the pipeline; `make test-slow` runs six, of six timm families."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("timm")

import timm  # noqa: E402
from conftest import doc_commands  # noqa: E402
from inprocess import run_inprocess, tiny_config  # noqa: E402

from prune_runner.cli import preflight  # noqa: E402
from prune_runner.errors import UserError  # noqa: E402
from prune_runner.models import build_model, get_model_spec  # noqa: E402
from prune_runner.models.support import ModelNotSupportedError  # noqa: E402
from prune_runner.pruning import (  # noqa: E402
    MacCounter,
    build_pruner,
    get_method,
    progressive_prune,
    pruning_hints,
    sync_after_pruning,
)
from prune_runner.pruning.library import hide_unwrapped_warning  # noqa: E402
from prune_runner.run.checkpoint import load_checkpoint, model_payload, rebuild_model, save_checkpoint  # noqa: E402
from prune_runner.validate import validate  # noqa: E402

# timm module (family) -> a small model of it, and the input side it runs at on digits (8x8 images, upscaled)
SIX = {
    "resnet": ("timm/resnet10t", 16),
    "mobilenetv3": ("timm/mobilenetv3_small_050", 16),
    "efficientnet": ("timm/efficientnet_b0", 16),
    "convnext": ("timm/convnext_atto", 32),  # stride 32: 32 px leave it one pixel
    "deit": ("timm/deit_tiny_patch16_224", 32),  # 2x2 patches of 16 px plus the class token
    "regnet": ("timm/regnetx_002", 16),
}
# digits: training images kept, pretraining epochs
QUICK = {"dataset.train_limit": 128, "schedule.pretrain.epochs": 1, "prune.speed_up": 1.5,
         "prune.bn_stats_batches": 8}


def test_the_six_models_are_of_six_timm_families():
    for family, (name, _) in SIX.items():
        assert name.removeprefix("timm/") in timm.list_models(module=family), (family, name)


def test_input_size_comes_from_timms_pretrained_config():
    assert get_model_spec("timm/resnet10t").input_size == timm.get_pretrained_cfg("resnet10t").input_size[-1]
    assert get_model_spec("timm/deit_tiny_patch16_224").input_size == 224
    assert get_model_spec("timm/resnet10t").family == "timm"


def prune_and_reload(name: str, side: int, method: str, tmp_path, target: float = 1.5):
    """Prune a random-init model to `target`, save it and rebuild it from the checkpoint: (model, rebuilt, x)."""
    torch.manual_seed(0)
    model = build_model(name, 10, input_size=side)
    x = torch.randn(2, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Unwrapped parameters detected": the hints name them all
        pruner = build_pruner(model, x[:1], get_method(method), 10, steps=8)
    model.eval()
    result = progressive_prune(model, pruner, MacCounter(model, x[:1]), target)
    assert result["speed_up"] >= target
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model_payload(model, name, 10, side, pruner.pruning_history()))
    rebuilt, _ = rebuild_model(load_checkpoint(path), path)
    return model, rebuilt.eval(), x


def test_vit_attention_heads_keep_their_count_and_shrink_alike(tmp_path):
    model, rebuilt, x = prune_and_reload("timm/deit_tiny_patch16_224", 32, "l2", tmp_path)
    attn = model.blocks[0].attn
    assert attn.num_heads == 3  # deit_tiny: 3 heads of 64
    assert attn.head_dim < 64 and attn.qkv.out_features == 3 * attn.num_heads * attn.head_dim
    assert attn.proj.in_features == attn.num_heads * attn.head_dim
    assert model.pos_embed.shape[-1] == model.cls_token.shape[-1] == model.patch_embed.proj.out_channels
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 10)
        assert torch.allclose(rebuilt(x), out, atol=1e-5)
        with FlopCounterMode(display=False) as flops:  # convolutions and Linear layers, not attention's matmuls
            model(x[:1])
    tokens = (32 // 16) ** 2 + 1
    matmuls = len(model.blocks) * 2 * tokens * tokens * attn.num_heads * attn.head_dim  # QK^T and AV
    macs = MacCounter(model, x[:1]).count(model)[0]  # the counter the runner builds once, on the pruned model
    assert macs == flops.get_total_flops() // 2 + matmuls


def test_convnext_layer_scale_follows_its_channels(tmp_path):
    model, rebuilt, x = prune_and_reload("timm/convnext_atto", 32, "group_norm", tmp_path)
    block = model.stages[0].blocks[0]
    assert block.gamma.shape[0] == block.conv_dw.out_channels < 40  # convnext_atto's first stage: 40 channels
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)


def one_step(name: str, side: int = 32, method: str = "l1"):
    """A fresh model pruned by one step of a 10-step schedule (a tenth of each prunable group's channels) and run:
    (model, its unpruned twin). torch-pruning may not warn: the hints name every parameter outside a layer."""
    torch.manual_seed(0)
    model, twin = build_model(name, 10, input_size=side), build_model(name, 10, input_size=side)
    x = torch.randn(2, 3, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pruner = build_pruner(model, x[:1], get_method(method), 10, steps=10)
    pruner.step()
    sync_after_pruning(model)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
    return model, twin


def widths(model, *names):
    layers = dict(model.named_modules())
    return [layers[n].weight.shape[0] for n in names]


def test_poolformer_scale_follows_its_channels():
    # metaformer.Scale: a (C,) vector outside any prunable layer, viewed as its cached shape (C, 1, 1)
    model, twin = one_step("timm/poolformer_s12")
    scale, before = model.stages[0].blocks[0].layer_scale1, twin.stages[0].blocks[0].layer_scale1
    assert scale.shape == (scale.scale.numel(), 1, 1) and scale.scale.numel() < before.scale.numel()


def test_an_rms_norm_takes_its_width_from_its_pruned_weight():
    # timm.layers.RmsNorm (deepseek_vit's RmsNormFp32, ViTs built with norm_layer=RmsNorm) is not nn.LayerNorm:
    # torch-pruning prunes its weight as a vector, and the normalized_shape it caches must follow
    from timm.layers import RmsNorm
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=10,
                              norm_layer=RmsNorm)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        pruner = build_pruner(model, x[:1], get_method("group_norm"), 10, steps=10)
    pruner.step()
    sync_after_pruning(model)
    norm = model.blocks[0].norm1
    assert norm.normalized_shape == (norm.weight.numel(),) and norm.weight.numel() < 64
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)


def test_levit_keeps_its_qkv_rows_and_the_width_into_its_downsampling():
    # levit.Attention's qkv rows are [head][q|k|v] (v wider): they stay; AttentionDownsample's queries pass through a
    # reshape torch-pruning cannot follow, so the width entering it (128 in stage 0) stays; the MLPs shrink
    model, twin = one_step("timm/levit_128s")
    kept = ["stages.0.blocks.0.attn.qkv.linear", "stages.1.downsample.attn_downsample.kv.linear",
            "stages.0.blocks.0.mlp.ln2.linear"]  # the last: out-channels = the stage-0 width
    assert widths(model, *kept) == widths(twin, *kept)
    assert widths(model, "stages.0.blocks.0.mlp.ln1.linear") < widths(twin, "stages.0.blocks.0.mlp.ln1.linear")


def test_mobilevitv2_separable_attention_keeps_its_query_key_value_rows():
    # mobilevit.LinearSelfAttention: qkv_proj's rows are a 1-channel query, keys and values (split by embed_dim)
    model, twin = one_step("timm/mobilevitv2_050")
    attn = "stages.2.1.transformer.0.attn"
    assert widths(model, f"{attn}.qkv_proj") == widths(twin, f"{attn}.qkv_proj")
    assert model.get_submodule(attn).embed_dim == twin.get_submodule(attn).embed_dim
    assert widths(model, "stages.2.1.transformer.0.mlp.fc1") < widths(twin, "stages.2.1.transformer.0.mlp.fc1")


def test_attention_that_derives_its_head_width_from_its_input_stays_whole():
    # convit.GPSA reshapes v to (C // num_heads) per head, C its input's width: its layers and that width stay
    model, twin = one_step("timm/convit_tiny")
    attn = ["blocks.0.attn.qk", "blocks.0.attn.v", "blocks.0.attn.proj", "blocks.0.attn.pos_proj"]
    assert widths(model, *attn) == widths(twin, *attn)
    assert widths(model, "blocks.0.mlp.fc1") < widths(twin, "blocks.0.mlp.fc1")


class _FreeGain(torch.nn.Module):
    """A per-channel gain (1, C, 1, 1) held outside any layer, as many timm blocks hold theirs."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 10)
        self.gain = torch.nn.Parameter(torch.linspace(1, 2, 8).view(1, 8, 1, 1))

    def forward(self, x):
        return self.head((self.bn(self.conv(x)) * self.gain).mean((2, 3)))


def test_a_parameter_outside_any_layer_is_named_to_torch_pruning_not_warned_about():
    """Issue 28: torch-pruning's three-line "Unwrapped parameters detected ... please provide an unwrapped_parameters
    argument" warning named parameters a prune-run user cannot name. The hints name them, with the dim that
    follows the channels, so it is not printed, and the gain is pruned with its channels."""
    model = _FreeGain()
    assert pruning_hints(model, 10)["unwrapped_parameters"] == [(model.gain, 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pruner = build_pruner(model, torch.zeros(1, 3, 8, 8), get_method("l1"), 10, steps=4)
        pruner.step()
    assert model.gain.shape == (1, model.conv.out_channels, 1, 1) and model.conv.out_channels < 8
    model(torch.zeros(2, 3, 8, 8))


def test_a_scalar_parameter_is_left_whole_and_not_warned_about():
    """What torch-pruning still lists after the hints is a parameter of one element, which it leaves whole: the
    warning is hidden (pruning/library.py), also where a block's filters have been reset."""
    model = _FreeGain()
    model.gain = torch.nn.Parameter(torch.tensor(1.5))
    assert pruning_hints(model, 10)["unwrapped_parameters"] is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hide_unwrapped_warning()
        build_pruner(model, torch.zeros(1, 3, 8, 8), get_method("l1"), 10, steps=4).step()
    assert [str(w.message) for w in caught] == [] and model.gain.shape == () and model.conv.out_channels < 8
    model(torch.zeros(2, 3, 8, 8))


def test_efficientvit_m0_is_refused_at_once(tmp_path):
    # its cascaded group attention: torch-pruning's group search does not end (the walk; tests/test_preflight.py)
    with pytest.raises(ModelNotSupportedError, match=r"^model timm/efficientvit_m0 is not supported: torch-pruning "
                                                     r"1.6.1's dependency search does not end on its cascaded group"):
        validate(tiny_config(tmp_path, "timm/efficientvit_m0", "l1"))


@pytest.mark.parametrize("name,where", [
    ("timm/mixer_s16_224", r"blocks\.\d+\.mlp_tokens\.fc\d \(Linear\)"),  # torch-pruning's importance fails
])
def test_a_model_torch_pruning_cannot_take_apart_is_one_line(name, where):
    model = build_model(name, 10, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ModelNotSupportedError) as err:
        pruner = build_pruner(model, x, get_method("l2"), 10, steps=8)
        progressive_prune(model, pruner, MacCounter(model, x), 1.5, describe=f"model {name} with method l2")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"model {name} with method l2 cannot be pruned: torch-pruning 1.6.1 fails at layer ")
    assert re.search(where, message), message


@pytest.mark.parametrize("model,method,reason", [
    ("timm/convnext_atto", "slim", "no BatchNorm layers"),
    ("timm/deit_tiny_patch16_224", "obdc", "2-D Linear inputs only"),
])
def test_an_unsupported_pair_is_refused_before_the_run(tmp_path, model, method, reason):
    expected = f"model {model} with method {method} is not supported: .*{reason}"
    with pytest.raises(ModelNotSupportedError, match=expected):
        validate(tiny_config(tmp_path, model, method))
    validate(tiny_config(tmp_path, "timm/regnetx_002", method))  # has BatchNorm, and Linear on pooled features only


class _DataDependent(torch.nn.Module):
    """A model whose forward reads a value out of a tensor (no meta kernel can), or fails for another reason."""

    def __init__(self, fails_with=None):
        super().__init__()
        self.bn, self.fc, self.fails_with = torch.nn.BatchNorm2d(3), torch.nn.Linear(3, 10), fails_with

    def forward(self, x):
        if self.fails_with is not None:
            raise self.fails_with
        x = self.bn(x).mean((2, 3))
        return self.fc(x) * float(x.detach().abs().max())  # .item() on a meta tensor: RuntimeError


@pytest.fixture
def fresh_layer_structure():
    from prune_runner.models.timm_models import layer_structure

    layer_structure.cache_clear()
    yield layer_structure
    layer_structure.cache_clear()


def test_a_model_the_meta_device_cannot_run_is_said_and_not_refused(monkeypatch, fresh_layer_structure):
    monkeypatch.setattr(timm, "create_model", lambda arch, **kw: _DataDependent())
    with pytest.warns(UserWarning, match=r"^timm model 'resnet10t' cannot run on the meta device \(RuntimeError: "
                                         r"Tensor.item\(\) cannot be called on meta tensors\), so whether its "
                                         r"Linear layers see token tensors is unknown"):
        assert fresh_layer_structure("timm/resnet10t") == (True, False)


def test_another_error_in_the_meta_forward_is_not_swallowed(monkeypatch, fresh_layer_structure):
    monkeypatch.setattr(timm, "create_model", lambda arch, **kw: _DataDependent(ValueError("a bug in the model")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either: the error itself
        with pytest.raises(ValueError, match="a bug in the model"):
            fresh_layer_structure("timm/resnet10t")


def test_the_token_check_reads_the_models_layers(fresh_layer_structure):
    assert fresh_layer_structure("timm/deit_tiny_patch16_224") == (False, True)  # LayerNorm; Linear on tokens
    assert fresh_layer_structure("timm/regnetx_002") == (True, False)  # BatchNorm; Linear on pooled features


def test_the_command_line_spelling(tmp_path):
    from inprocess import compose

    assert preflight(["model=timm/resnet10t,timm/regnetx_002", "-m"]) == ["model=timm/resnet10t,timm/regnetx_002", "-m"]
    assert compose({"model": "timm/resnet10t"}).model.name == "timm/resnet10t"  # a `model` group option now
    with pytest.raises(UserError, match=r"^unknown timm model 'resnet10x' \(model=timm/resnet10x\); closest: "
                                        r"timm/resnet10t.*timm.list_models\(\) lists them all$"):
        preflight(["model=timm/resnet10x"])


def test_the_docs_commands_compose():
    commands = doc_commands("docs/how-to/models.md", "timm models")
    assert [c[0] for c in commands] == ["model=timm/resnet18", "model=timm/deit_tiny_patch16_224"]
    for words in commands:
        preflight(words)


def test_pretrained_weights_without_a_network_are_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what a machine without network sees
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    with pytest.raises(UserError, match=r"^could not load pretrained weights for timm model 'resnet10t' .*set "
                                        r"model.pretrained=false or give a base_checkpoint$"):
        build_model("timm/resnet10t", 10, pretrained=True)


def run_timm(tmp_path, name: str, side: int, **overrides):
    run_dir = tmp_path / "run"
    records, text = run_inprocess(run_dir, **{"model.name": name, "model.input_size": side, **QUICK, **overrides})
    results = json.loads((run_dir / "results.json").read_text())
    assert results["choices"]["model"] == name and results["speed_up"] >= 1.5, results
    assert results["provenance"]["timm"] == timm.__version__
    # the final accuracy is fine-tuning's, measured again on the model the eval stage loaded back
    assert results["final"]["acc"] == pytest.approx(records["finetune"]["metrics"]["acc"], abs=1e-9)
    assert results["acc_delta"] == pytest.approx(results["final"]["acc"] - records["pretrain"]["metrics"]["acc"])
    assert records["finetune"]["metrics"]["macs"] < records["pretrain"]["metrics"]["macs"]
    return results, text


def test_a_timm_model_through_the_pipeline(tmp_path):
    run_timm(tmp_path, *SIX["mobilenetv3"])


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SIX))
def test_six_timm_models_through_the_pipeline(tmp_path, family):
    run_timm(tmp_path, *SIX[family])
