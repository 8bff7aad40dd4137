"""Analytic parameter counts equal the real modules, for every preset (meta device)."""

import pytest
import torch

from opt_scale.model.flops import DEFAULT_VOCAB, part_forward_flops, part_parameters, train_flops_per_sample
from opt_scale.presets import PRESETS
from opt_scale.tasks.pretrainer import OPTPretrainer

PART_MODULES = {
    "text_encoder": ["model.text"], "vision_encoder": ["model.vision"], "audio_encoder": ["model.audio"],
    "cross_encoder": ["model.cross"], "text_decoder": ["text_decoder"], "image_decoder": ["image_decoder"],
    "heads": ["mlm", "mvm", "mam", "matching", "mvm_regress", "contrastive"],
}


def counted(module: torch.nn.Module, paths: list[str], already: set[int]) -> int:
    total = 0
    for path in paths:
        sub = module
        for attr in path.split("."):
            sub = getattr(sub, attr, None)
        if sub is None:
            continue
        for p in sub.parameters():
            if id(p) not in already:
                already.add(id(p))
                total += p.numel()
    return total


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("regress", [False, True])
def test_parameter_formula_matches_modules_on_meta_device(preset, regress):
    cfg = PRESETS[preset]()
    cfg.model.text.vocab_size = DEFAULT_VOCAB
    cfg.tasks.mvm.regress_weight = 0.5 if regress else 0.0
    with torch.device("meta"):  # nothing is allocated, even for xl
        net = OPTPretrainer(cfg.model, cfg.tasks, vq=None)
    seen: set[int] = set()
    formula = part_parameters(cfg.model, mvm_regress=regress, contrastive_dim=cfg.tasks.contrastive.dim)
    for part in ("text_encoder", "vision_encoder", "audio_encoder", "cross_encoder", "text_decoder",
                 "image_decoder", "heads"):
        assert counted(net, PART_MODULES[part], seen) == formula[part], (preset, part)
    assert sum(p.numel() for p in net.parameters()) == sum(formula.values())


def test_xl_is_multi_billion_and_base_matches_the_paper_encoder():
    xl = PRESETS["xl"]().model
    assert sum(part_parameters(xl).values()) > 5e9
    base = PRESETS["base"]().model.cross
    assert (base.layers, base.hidden, base.heads, base.ffn) == (12, 768, 12, 3072)


def test_flops_grow_with_sequence_length_and_depth():
    cfg = PRESETS["tiny"]().model
    f1 = part_forward_flops(cfg)
    cfg.cross.layers *= 2
    f2 = part_forward_flops(cfg)
    assert f2["cross_encoder"] == pytest.approx(2 * f1["cross_encoder"])
    assert f2["text_encoder"] == f1["text_encoder"]
    assert train_flops_per_sample(cfg) == pytest.approx(3 * sum(f2.values()))


def test_print_model_cli_reports_every_part():
    from .conftest import run_cli
    out = run_cli(["opt-train", "--config", "xl", "--print-model"], timeout=120).stdout
    for part in ("text_encoder", "vision_encoder", "audio_encoder", "cross_encoder", "text_decoder",
                 "image_decoder", "heads", "total"):
        assert part in out
