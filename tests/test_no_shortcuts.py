"""The pretext tasks cannot read their answers from their inputs.

* DTR decodes the caption from a memory without the caption: its loss has
  exactly zero gradient with respect to the text tower's input embeddings.
* DIR likewise draws the image from a memory without the image: zero
  gradient with respect to the (normalised) pixels.
* MAM hides a masked token's whole receptive field: no output of the audio
  tower changes when the input frames a masked token reads change.
* MVM hides the pixels of a masked patch from the conv stem's neighbours.
"""

import pytest
import torch

from opt_scale.data.masking import IMAGE, TEXT
from opt_scale.model.audio_encoder import AudioEncoder
from opt_scale.model.vision_encoder import VisionEncoder

from .model_fixtures import demo_batch, small_config, small_pretrainer


@pytest.fixture(scope="module")
def setup(demo_shards, demo_tokenizer):
    from opt_scale.data.tokenizer import Tokenizer
    cfg = small_config(Tokenizer(str(demo_tokenizer)).vocab_size)
    batch = demo_batch(demo_shards, demo_tokenizer, cfg, batch_size=6)
    return cfg, batch


def forward_with_inputs(cfg, batch, monkeypatch):
    """One forward; returns (output, the text tower's token embeddings, the
    vision tower's normalised pixels), both leaves of the graph."""
    net = small_pretrainer(cfg)
    captured = {}
    tokens = net.model.text.tokens

    def grab_embeddings(module, args, output):
        output.retain_grad()
        captured["text"] = output
    tokens.register_forward_hook(grab_embeddings)
    original = VisionEncoder.normalise

    def normalise(self, pixels):
        x = original(self, pixels).detach().requires_grad_(True)
        captured["pixels"] = x
        return x
    monkeypatch.setattr(VisionEncoder, "normalise", normalise)
    out = net(batch)
    return out, captured["text"], captured["pixels"]


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x, retain_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def test_dtr_loss_has_no_gradient_wrt_the_caption_embeddings(setup, monkeypatch):
    cfg, batch = setup
    assert not batch["dtr_keep"][:, TEXT].any()  # the text is dropped from every DTR row
    out, text, pixels = forward_with_inputs(cfg, batch, monkeypatch)
    assert torch.count_nonzero(grad_of(out["loss/dtr"], text)) == 0
    # Not vacuous: the caption embeddings are in the graph (MLM reads them),
    # and DTR does read the image.
    assert torch.count_nonzero(grad_of(out["loss/mlm"], text)) > 0
    assert torch.count_nonzero(grad_of(out["loss/dtr"], pixels)) > 0


def test_dir_loss_has_no_gradient_wrt_the_pixels(setup, monkeypatch):
    cfg, batch = setup
    assert not batch["dir_keep"][:, IMAGE].any()
    out, text, pixels = forward_with_inputs(cfg, batch, monkeypatch)
    assert torch.count_nonzero(grad_of(out["loss/dir"], pixels)) == 0
    assert torch.count_nonzero(grad_of(out["loss/mvm"], pixels)) > 0
    assert torch.count_nonzero(grad_of(out["loss/dir"], text)) > 0


def receptive_field(tower: AudioEncoder, mel: torch.Tensor, token: int) -> torch.Tensor:
    """[T] bool: the input frames that reach subsampled token ``token`` (by gradient)."""
    x = mel.clone().requires_grad_(True)
    feats = tower.embed(x, torch.tensor([mel.shape[1]]))
    feats[0, token].sum().backward()
    return x.grad[0].abs().sum(-1) > 0


@pytest.mark.parametrize("conv_layers", [2, 3])
def test_mam_hides_the_whole_receptive_field_of_a_masked_token(setup, conv_layers):
    cfg, _ = setup
    cfg.model.audio.conv_layers = conv_layers
    torch.manual_seed(0)
    tower = AudioEncoder(cfg.model.audio, cfg.model.cross.hidden).eval()
    T = 96
    mel = torch.randn(1, T, cfg.model.audio.n_mels)
    n_tokens = int(tower.token_lengths(torch.tensor([T])))
    masked = n_tokens // 2
    field = receptive_field(tower, mel, masked)
    assert field.sum() > 2 ** conv_layers  # wider than its stride: neighbours overlap
    mask = torch.zeros(1, n_tokens, dtype=torch.bool)
    mask[0, masked] = True
    assert torch.equal(tower.hidden_frames(mask, T)[0], field)  # exactly the field, no more
    changed = mel.clone()
    changed[0, field] += 5 * torch.randn(int(field.sum()), mel.shape[2])
    with torch.no_grad():
        before, _ = tower(mel, torch.tensor([T]), mask)
        after, _ = tower(changed, torch.tensor([T]), mask)
    assert torch.equal(before, after)  # no token, masked or not, sees those frames
    with torch.no_grad():  # ... which the unmasked tower does see
        seen, _ = tower(changed, torch.tensor([T]))
        unseen, _ = tower(mel, torch.tensor([T]))
    assert not torch.equal(seen, unseen)


def test_mvm_hides_masked_patch_pixels_from_neighbours(setup):
    cfg, batch = setup
    torch.manual_seed(0)
    tower = VisionEncoder(cfg.model.vision, cfg.model.cross.hidden).eval()
    assert hasattr(tower, "stem")  # the conv stem, whose kernels cross patch borders
    pixels = batch["pixels"][:1].clone()
    side = cfg.model.vision.image_size // cfg.model.vision.patch_size
    mask = torch.zeros(1, side * side, dtype=torch.bool)
    patch = side * (side // 2) + side // 2
    mask[0, patch] = True
    p = cfg.model.vision.patch_size
    r, c = divmod(patch, side)
    changed = pixels.clone()
    changed[..., r * p:(r + 1) * p, c * p:(c + 1) * p] = 255 - changed[..., r * p:(r + 1) * p, c * p:(c + 1) * p]
    with torch.no_grad():
        assert torch.equal(tower(pixels, mask)[0], tower(changed, mask)[0])
        assert not torch.equal(tower(pixels)[0], tower(changed)[0])
