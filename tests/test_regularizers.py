"""Our batched regularizers give the same gradients as torch-pruning 1.6.1's per-group loops."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch_pruning as tp
from torch import nn

from prune_runner.errors import UserError
from prune_runner.models import build_model
from prune_runner.pruning.regularizers import REGULARIZERS, build_regularizer

torch.set_num_threads(1)
SIZE = 8  # input side, pixels: tiny so that tracing and steps stay fast


class TinyResNet(nn.Module):
    """Residual adds couple conv outputs across blocks; a strided block has a 1x1 shortcut conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a1, self.b1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.a2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.d1 = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12)
        self.c2, self.d2 = nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.short = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.b2(self.a2(torch.relu(self.b1(self.a1(x))))))
        x = torch.relu(self.short(x) + self.d2(self.c2(torch.relu(self.d1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


class TinyVGG(nn.Module):
    """conv -> flatten -> linear: the linear's input indices map through a flatten (16 ch x 4 px)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.hidden = nn.Linear(16 * 2 * 2, 20)
        self.fc = nn.Linear(20, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.hidden(self.features(x).flatten(1))))


class TinyMobile(nn.Module):
    """Inverted residual with a depthwise conv (a handler the library's regularize() leaves alone)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(
            nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8),
        )
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.fc(self.head(x).mean((2, 3)))


class TinyDense(nn.Module):
    """Concatenation: the later BN/conv see channels of two roots at offsets."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.grow, self.bn1 = nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.BatchNorm2d(12)
        self.trans, self.bn2 = nn.Conv2d(12, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = torch.cat([x, self.grow(torch.relu(x))], 1)
        x = torch.relu(self.bn2(self.trans(torch.relu(self.bn1(x)))))
        return self.fc(x.mean((2, 3)))


def resnet20():
    return build_model("resnet20", num_classes=10)  # an error here fails the test: it is code under test


MODELS = {"resnet": TinyResNet, "vgg": TinyVGG, "mobile": TinyMobile, "dense": TinyDense, "resnet20": resnet20}


def randomized(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    model.double()  # float64 so that only the summation order differs from the library, not rounding
    with torch.no_grad():
        for p in model.parameters():  # BN weights of both signs and spread, so that gamma varies
            p.copy_(torch.randn_like(p) * 0.3)
    return model


def library_pruner(cls, model, normalizer=None, **kwargs):
    """Fresh dict args every time: BasePruner's mutable defaults are shared between pruners.
    normalizer=None: gamma is scale-invariant, and the default 'mean' only adds float32 rounding."""
    pruner = cls(
        model, example_inputs=torch.randn(1, 3, SIZE, SIZE, dtype=torch.float64),
        importance=tp.importance.GroupMagnitudeImportance(p=2, normalizer=normalizer), ignored_layers=[model.fc],
        in_channel_groups={}, out_channel_groups={}, num_heads={}, channel_groups={}, **kwargs,
    )
    model.train()  # building a pruner leaves the model in eval mode
    return pruner


def set_grads(model: nn.Module, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    grads = {}
    for name, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        grads[name] = p.grad.clone()
    return grads


def grads_of(model: nn.Module) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_grads(ours: dict, theirs: dict, original: dict, rtol: float = 1e-6):
    """The added regularization terms agree to 1e-6 relative (the library computes its importance and
    gamma in float32, so a tighter match would test rounding)."""
    changed = 0
    for name in theirs:
        added_ours, added_theirs = ours[name] - original[name], theirs[name] - original[name]
        torch.testing.assert_close(added_ours, added_theirs, rtol=rtol, atol=1e-9, msg=name)
        changed += not torch.equal(theirs[name], original[name])
    assert changed > 0  # the comparison is not vacuous


def pair(name, lib_cls, **lib_kwargs):
    """(library model, library pruner, our model, pruner on our model) on identical weights."""
    theirs = randomized(name)
    ours = copy.deepcopy(theirs)
    return theirs, library_pruner(lib_cls, theirs, **lib_kwargs), ours, library_pruner(lib_cls, ours, **lib_kwargs)


def assert_close_to_library(ours, theirs, original, rtol=1e-6):
    assert_same_grads(grads_of(ours), grads_of(theirs), original, rtol)


@pytest.mark.parametrize("name", list(MODELS))
def test_group_norm_matches_library(name):
    theirs, lib, ours, ours_pruner = pair(name, tp.pruner.GroupNormPruner, reg=0.1)
    reg = build_regularizer("group_norm", ours, ours_pruner)
    original = set_grads(theirs)
    set_grads(ours)
    lib.regularize(theirs, alpha=2**4)  # the library's default call
    reg.apply(0.1)
    assert_close_to_library(ours, theirs, original)


def test_group_norm_bias_option_matches_library():
    theirs, lib, ours, ours_pruner = pair("vgg", tp.pruner.GroupNormPruner, reg=0.1)
    original = set_grads(theirs)
    set_grads(ours)
    lib.regularize(theirs, bias=True)
    build_regularizer("group_norm", ours, ours_pruner, bias=True).apply(0.1)
    assert_close_to_library(ours, theirs, original)
    assert not torch.equal(ours.hidden.bias.grad, original["hidden.bias"])


def test_group_norm_matches_library_with_mean_normalizer():
    """With the importance's default normalizer='mean' the library rounds its float32 gamma differently."""
    theirs, lib, ours, ours_pruner = pair("resnet", tp.pruner.GroupNormPruner, reg=0.1, normalizer="mean")
    original = set_grads(theirs)
    set_grads(ours)
    lib.regularize(theirs)
    build_regularizer("group_norm", ours, ours_pruner).apply(0.1)
    assert_close_to_library(ours, theirs, original, rtol=1e-5)


def test_group_norm_alpha_is_honoured():
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model)
    outs = []
    for alpha in (2.0, 4.0):
        set_grads(model)
        build_regularizer("group_norm", model, pruner, alpha=alpha).apply(0.1)
        outs.append(model.a1.weight.grad.clone())
    assert not torch.allclose(outs[0], outs[1])


@pytest.mark.parametrize("name", ["resnet", "vgg", "mobile", "dense"])
def test_growing_reg_matches_library_and_fixes_batchnorm(name):
    options = {"reg": 0.05, "delta_reg": 0.1}
    theirs, lib, ours, ours_pruner = pair(name, tp.pruner.GrowingRegPruner, normalizer="mean", **options)
    reg = build_regularizer("growing_reg", ours, ours_pruner, **options)
    for _ in range(2):
        lib.update_reg()
        reg.update_reg()
    original = set_grads(theirs)
    set_grads(ours)
    lib.regularize(theirs)
    reg.apply(1.0)
    mine, lib_grads = grads_of(ours), grads_of(theirs)
    bn_weights = {n + ".weight" for n, m in ours.named_modules() if isinstance(m, nn.BatchNorm2d)}
    conv_linear = {n: g for n, g in lib_grads.items() if n not in bn_weights}
    assert_same_grads(mine, conv_linear, original)
    for n in bn_weights:  # the library's `grad.data[idxs].add_` writes to a copy: a no-op
        assert torch.equal(lib_grads[n], original[n]), n
    assert all(not torch.equal(mine[n], original[n]) for n in bn_weights)


@pytest.mark.parametrize("name", ["resnet", "mobile", "resnet20"])
@pytest.mark.parametrize("group_lasso", [False, True])
def test_slim_and_group_slim_match_library(name, group_lasso):
    theirs, lib, ours, ours_pruner = pair(name, tp.pruner.BNScalePruner, group_lasso=group_lasso)
    reg = build_regularizer("group_slim" if group_lasso else "slim", ours, ours_pruner)
    original = set_grads(theirs)
    set_grads(ours)
    lib.regularize(theirs, reg=0.01)
    reg.apply(0.01)
    assert_close_to_library(ours, theirs, original)


def test_group_slim_runs_where_library_crashes():
    """The library's group lasso adds 1e-9 to None for a group without BatchNorm (a linear layer), and
    adds a root-sized gamma to a whole BN weight that a concatenation shares between groups."""
    for name, error in (("vgg", TypeError), ("dense", RuntimeError)):
        theirs, lib, ours, ours_pruner = pair(name, tp.pruner.BNScalePruner, group_lasso=True)
        set_grads(theirs)
        with pytest.raises(error):
            lib.regularize(theirs, reg=0.01)
        original = set_grads(ours)
        build_regularizer("group_slim", ours, ours_pruner).apply(0.01)
        for module_name, module in ours.named_modules():
            if isinstance(module, (nn.BatchNorm2d, nn.Linear)):  # BNs act, linears are left alone
                changed = not torch.equal(module.weight.grad, original[module_name + ".weight"])
                assert changed == isinstance(module, nn.BatchNorm2d), module_name


def test_group_slim_on_concatenation_by_hand():
    """bn1 sees 8 channels of root `stem` and 4 of root `grow`: each slice gets its own group's gamma."""
    model = randomized("dense")
    pruner = library_pruner(tp.pruner.BNScalePruner, model, group_lasso=True)
    original = set_grads(model)
    build_regularizer("group_slim", model, pruner).apply(0.01)
    w0, w1, w2 = model.bn0.weight.detach(), model.bn1.weight.detach(), model.bn2.weight.detach()
    stem_gamma = 0.01 / torch.sqrt((w0**2 + w1[:8] ** 2) / 2 + 1e-9)  # group of root `stem`: bn0, bn1[:8]
    grow_gamma = 0.01 / torch.sqrt(w1[8:] ** 2 + 1e-9)  # group of root `grow`: bn1[8:]
    expected = original["bn1.weight"] + torch.cat([stem_gamma * w1[:8], grow_gamma * w1[8:]])
    torch.testing.assert_close(model.bn1.weight.grad, expected)
    torch.testing.assert_close(model.bn2.weight.grad, original["bn2.weight"] + 0.01 * w2 / w2.abs())


def test_growing_reg_state_round_trip():
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GrowingRegPruner, model)
    reg = build_regularizer("growing_reg", model, pruner, reg=0.05, delta_reg=0.1)
    reg.update_reg()
    reg.update_reg()
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = build_regularizer("growing_reg", model, pruner, reg=0.05, delta_reg=0.1)
    assert not torch.equal(fresh.reg, reg.reg)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.reg, reg.reg, rtol=0, atol=0)
    fresh.refresh()  # an epoch start keeps the state when the structure is unchanged
    torch.testing.assert_close(fresh.reg, reg.reg, rtol=0, atol=0)
    assert fresh.stats()["reg_max"] > 0.05


def test_epoch_end_grows_growing_reg_only_when_it_grows_per_epoch():
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GrowingRegPruner, model)
    per_epoch = build_regularizer("growing_reg", model, pruner, reg=0.05, delta_reg=0.1)  # update_every 0
    per_epoch.epoch_end()
    assert float(per_epoch.reg.max()) > 0.05
    per_step = build_regularizer("growing_reg", model, pruner, reg=0.05, delta_reg=0.1, update_every=3)
    per_step.epoch_end()
    assert torch.all(per_step.reg == 0.05)
    group_norm = build_regularizer("group_norm", model, pruner)
    group_norm.epoch_end()  # nothing grows: a no-op every regularizer offers


@pytest.mark.parametrize("name", ["resnet", "vgg", "dense"])
def test_refresh_after_pruning_matches_fresh_library_pruner(name):
    model = randomized(name)
    pruner = library_pruner(tp.pruner.GroupNormPruner, model, reg=0.1, pruning_ratio=0.5)
    reg = build_regularizer("group_norm", model, pruner)
    channels = reg.n_channels
    calls = {"n": 0}
    groups_fn = reg.groups_fn
    reg.groups_fn = lambda: (calls.__setitem__("n", calls["n"] + 1), groups_fn())[1]
    pruner.step()
    reg.refresh()
    assert reg.n_channels < channels and calls["n"] == 1
    theirs = copy.deepcopy(model)
    lib = library_pruner(tp.pruner.GroupNormPruner, theirs, reg=0.1)
    original = set_grads(theirs)
    set_grads(model)
    lib.regularize(theirs)
    reg.apply(0.1)
    reg.apply(0.0)  # per-step work never re-walks the groups
    assert calls["n"] == 1
    assert_close_to_library(model, theirs, original)


def test_growing_reg_restarts_after_pruning():
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GrowingRegPruner, model, pruning_ratio=0.5)
    reg = build_regularizer("growing_reg", model, pruner, reg=0.05, delta_reg=0.1, update_every=1)
    set_grads(model)
    reg.apply(1.0)  # update_every=1: grows before adding
    assert float(reg.reg.max()) > 0.05
    pruner.step()
    reg.refresh()
    assert reg.reg.shape == (reg.n_channels,) and torch.all(reg.reg == 0.05)


def test_stats_importance_and_user_errors():
    model = randomized("mobile")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model)
    reg = build_regularizer("slim", model, pruner)
    imp = reg.importance()
    assert imp.shape == (reg.n_channels,) and torch.all(imp > 0)
    stats = reg.stats()
    assert stats["group_norm_mean"] == pytest.approx(float(imp.mean())) and stats["channels"] == reg.n_channels
    # slim's near-zero fraction counts BN scales: three of them below 1e-2, among all the BN scales it drives
    total = sum(w.numel() for w in reg.bn_weights)
    with torch.no_grad():
        for w in reg.bn_weights:
            w.fill_(1.0)
        assert reg.stats()["frac_below_1e-2"] == 0.0
        reg.bn_weights[0][:3] = -1e-3  # a magnitude: the sign does not matter
    assert reg.stats()["frac_below_1e-2"] == pytest.approx(3 / total)
    with pytest.raises(UserError, match="alpha"):
        build_regularizer("slim", model, pruner, alpha=3)
    with pytest.raises(UserError, match="group_norm"):
        REGULARIZERS.get("l1")
    state = reg.state_dict()
    with pytest.raises(UserError):
        build_regularizer("growing_reg", model, pruner).load_state_dict(state)


def test_bad_option_value_is_a_user_error():
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model)
    with pytest.raises(UserError, match="alpha"):
        build_regularizer("group_norm", model, pruner, alpha="big")
    with pytest.raises(UserError, match="reg"):
        build_regularizer("growing_reg", model, pruner, reg=-1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["group_norm", "growing_reg", "slim", "group_slim"])
def test_apply_never_syncs_with_the_host_on_cuda(name):
    model = randomized("dense")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model)  # traced on CPU; .cuda() keeps the params
    model.cuda()
    reg = build_regularizer(name, model, pruner, **({"update_every": 1} if name == "growing_reg" else {}))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        reg.apply(0.01)
        reg.apply(0.01)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_sparsity_values_are_what_each_regularizer_shrinks():
    """sparsity.png plots these: BN scales for slim / group_slim, group L2 norms for group_norm."""
    model = randomized("resnet")
    pruner = library_pruner(tp.pruner.GroupNormPruner, model)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    slim, group_slim, norm = (build_regularizer(n, model, pruner) for n in ("slim", "group_slim", "group_norm"))
    assert torch.equal(slim.sparsity_values(), torch.cat([m.weight.detach().abs() for m in bns]))
    assert group_slim.sparsity_values().shape == (group_slim.n_channels,)
    assert torch.equal(norm.sparsity_values(), norm.importance())
    with torch.no_grad():  # BN scales at zero: all that slimming measures is zero, the conv weights remain
        for m in bns:
            m.weight.zero_()
    assert slim.sparsity_values().max() == 0 and group_slim.sparsity_values().max() == 0
    assert norm.sparsity_values().min() > 0
    assert "BatchNorm" in slim.SPARSIFIES and "BatchNorm" in group_slim.SPARSIFIES
