"""Every pretext loss equals an independent plain-PyTorch computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from .model_fixtures import demo_batch, small_config, small_pretrainer

REL = 1e-5


@pytest.fixture(scope="module")
def run(demo_shards, demo_tokenizer):
    """One forward of a small pretrainer on a real demo batch, with every
    head's inputs captured by forward hooks."""
    from opt_scale.data.tokenizer import Tokenizer
    cfg = small_config(Tokenizer(str(demo_tokenizer)).vocab_size)
    net = small_pretrainer(cfg).eval()
    batch = demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=6)
    captured = {}

    def grab(name):
        def hook(module, args, kwargs, output):
            captured[name] = (args, kwargs, output)
        return hook

    for name in ("mlm", "mvm", "mam", "text_decoder", "image_decoder", "matching", "contrastive"):
        getattr(net, name).register_forward_hook(grab(name), with_kwargs=True)
    with torch.no_grad():
        out = net(batch)
    return cfg, net, batch, captured, out


def rel_err(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / max(abs(b), 1e-12)


def masked_head_reference(head, hidden, labels):
    h = head.norm(F.gelu(head.transform(hidden)))
    logits = h @ head.projection().t() + head.bias
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), labels.reshape(-1), ignore_index=-100)


def test_mlm_loss_and_labels(run):
    cfg, net, batch, cap, out = run
    (hidden, labels), _, _ = cap["mlm"]
    text_shown = batch["modality_keep"][:, 0:1]
    assert torch.equal(labels, batch["mlm_labels"].masked_fill(~text_shown, -100))
    assert (labels != -100).sum() > 0
    assert rel_err(out["loss/mlm"], masked_head_reference(net.mlm, hidden, labels)) < REL


def test_mvm_predicts_the_vq_code_of_each_masked_patch(run):
    cfg, net, batch, cap, out = run
    (hidden, labels), _, _ = cap["mvm"]
    codes = net.vq.codes(batch["pixels"])
    mask = batch["mvm_mask"] & batch["modality_keep"][:, 1:2]   # masked patches of the shown images
    assert mask.any() and torch.equal(labels[mask], codes[mask])
    assert (labels[~mask] == -100).all()
    assert rel_err(out["loss/mvm"], masked_head_reference(net.mvm, hidden, labels)) < REL


def test_mam_infonce_against_a_loop(run):
    cfg, net, batch, cap, out = run
    (hidden, targets, mask), _, _ = cap["mam"]
    assert torch.equal(mask, batch["mam_mask"] & batch["modality_keep"][:, 2:3]) and mask.sum() > 1
    pred = net.mam.project(hidden[mask]).double()
    true = targets[mask].double()
    tau = cfg.tasks.mam.temperature
    total = 0.0
    for i in range(len(pred)):
        sims = [F.cosine_similarity(pred[i], true[j], dim=0) / tau for j in range(len(true))]
        total += -(sims[i] - torch.logsumexp(torch.stack(sims), 0))
    assert rel_err(out["loss/mam"], total / len(pred)) < REL


def decoder_reference(dec, inputs, targets, memory, lengths, smoothing):
    h = dec.hidden(inputs, memory, lengths)
    logits = (h @ dec.tokens.weight.t() + dec.out_bias).double()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                           label_smoothing=smoothing)


def test_dtr_rebuilds_the_caption_teacher_forced(run):
    cfg, net, batch, cap, out = run
    (inputs, targets, memory, lengths), _, _ = cap["text_decoder"]
    B = batch["text_ids"].shape[0]
    assert memory.shape[0] == B
    for i in range(B):
        n = int(batch["text_len"][i])
        assert torch.equal(inputs[i, :n - 1], batch["text_ids"][i, :n - 1])
        assert torch.equal(targets[i, :n - 1], batch["text_ids"][i, 1:n])
        assert (targets[i, n - 1:] == -100).all()
    assert cfg.model.text_decoder.label_smoothing == 0.1
    ref = decoder_reference(net.text_decoder, inputs, targets, memory, lengths, 0.1)
    assert rel_err(out["loss/dtr"], ref) < REL


def test_dir_predicts_all_codes_after_bos(run):
    cfg, net, batch, cap, out = run
    (inputs, targets, memory, lengths), _, _ = cap["image_decoder"]
    codes = net.vq.codes(batch["pixels"])
    assert torch.equal(targets, codes)
    assert (inputs[:, 0] == net.image_decoder.bos).all() and torch.equal(inputs[:, 1:], codes[:, :-1])
    ref = decoder_reference(net.image_decoder, inputs, targets, memory, lengths, 0.0)
    assert rel_err(out["loss/dir"], ref) < REL


def test_matching_five_way_cross_entropy(run):
    cfg, net, batch, cap, out = run
    (cls, labels, similarities, shown), _, (loss, acc, logits) = cap["matching"]
    assert similarities.shape == shown.shape == (len(labels), 3)
    assert torch.equal(labels, batch["match_label"]) and logits.shape == (len(labels), 5)
    assert rel_err(out["loss/matching"], F.cross_entropy(logits.double(), labels)) < REL
    assert float(acc) == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_contrastive_alignment_against_explicit_infonce(run):
    cfg, net, batch, cap, out = run
    (towers, present, uid), _, _ = cap["contrastive"]
    assert cfg.tasks.contrastive.pool == "max"
    head = net.contrastive
    emb = {}
    for m, (tokens, valid) in towers.items():
        pooled = torch.stack([tokens[i][valid[i]].max(0).values for i in range(len(tokens))])
        emb[m] = F.normalize(head.proj[m](pooled).double(), dim=-1)
    scale = float(head.log_scale.detach().exp())
    total = 0.0
    for a, b in (("text", "image"), ("text", "audio"), ("image", "audio")):
        sims = scale * emb[a] @ emb[b].t()
        n = len(sims)
        # Two narratives of one image are not each other's negatives.
        twin = (uid[:, None] == uid[None, :]) & ~torch.eye(n, dtype=torch.bool)
        sims = sims.masked_fill(twin, float("-inf"))
        i2t = -sum(sims[i, i] - torch.logsumexp(sims[i], 0) for i in range(n)) / n
        t2i = -sum(sims[i, i] - torch.logsumexp(sims[:, i], 0) for i in range(n)) / n
        total += (i2t + t2i) / 2
    assert present.all()
    assert rel_err(out["loss/contrastive"], total / 3) < REL


def test_total_is_the_weighted_sum(run):
    cfg, net, batch, cap, out = run
    t = cfg.tasks
    weights = {"mlm": t.mlm.weight, "mvm": t.mvm.weight, "mam": t.mam.weight, "dtr": t.dtr.weight,
               "dir": t.dir.weight, "matching": t.matching.weight, "contrastive": t.contrastive.weight}
    expected = sum(w * float(out[f"loss/{k}"]) for k, w in weights.items())
    assert math.isclose(float(out["loss"]), expected, rel_tol=1e-6)


def test_every_parameter_gets_a_gradient(demo_shards, demo_tokenizer):
    """No tower or head is dead weight: one backward reaches every parameter."""
    from opt_scale.data.tokenizer import Tokenizer
    cfg = small_config(Tokenizer(str(demo_tokenizer)).vocab_size)
    net = small_pretrainer(cfg)
    out = net(demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=6))
    out["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_model_losses_equal_on_the_triton_kernels_and_the_default_cpu_paths(demo_shards, demo_tokenizer,
                                                                           monkeypatch):
    """The whole model through the Triton kernels (interpreter) gives the
    default CPU paths' losses (SDPA attention, chunked masked loss)."""
    from opt_scale.data.tokenizer import Tokenizer
    cfg = small_config(Tokenizer(str(demo_tokenizer)).vocab_size)
    net = small_pretrainer(cfg).eval()
    batch = demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=3)
    with torch.no_grad():
        default = net(batch)
        monkeypatch.setenv("OPT_SCALE_ATTENTION_BACKEND", "triton")
        monkeypatch.setenv("OPT_SCALE_MASKED_LOSS_BACKEND", "triton")
        fused = net(batch)
    for name, value in default.items():
        if name.startswith("loss"):
            assert rel_err(fused[name], value) < 1e-4, name
