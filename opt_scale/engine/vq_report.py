"""How well a trained VQ tokenizer draws images it was not trained on.

At the end of ``opt-train --task vq``: reconstruction PSNR and codebook use on
up to 64 images of ``data.eval_shards`` (the training shards when none are
given, and the report says so), and a picture of originals over their
reconstructions, to TensorBoard (``vq/reconstructions``) and as a PNG beside
the tokenizer. A tokenizer whose reconstructions lose shape makes MVM and DIR
targets that carry none: look at the picture.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from opt_scale.data.decode import centre_square
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards
from opt_scale.model.vq import VQTokenizer, psnr

log = logging.getLogger(__name__)

SHOWN = 8


def first_images(shards: str, n: int, size: int) -> torch.Tensor:
    """The first ``n`` images of ``shards`` as uint8 [n, 3, size, size] (undecodable ones skipped)."""
    images = []
    for shard in resolve_shards(shards):
        for raw in iter_samples(shard.url, extensions={"jpg"}):
            try:
                images.append(centre_square(Image.open(io.BytesIO(raw["jpg"])).convert("RGB"), size))
            except (OSError, ValueError):
                continue
            if len(images) == n:
                return torch.stack(images)
    if not images:
        raise ValueError(f"no decodable image in {shards}")
    return torch.stack(images)


@torch.no_grad()
def report_vq(tokenizer: VQTokenizer, shards: str, held_out: bool, image_size: int, png: Path,
              writer=None, step: int = 0, n: int = 64) -> dict:
    tokenizer = tokenizer.eval()
    pixels = first_images(shards, n, image_size)
    codes = tokenizer.codes(pixels)
    recon = tokenizer.decode_codes(codes)                      # [0, 1] at the VQ's resolution
    target = tokenizer.normalize_pixels(pixels)               # [-1, 1] at the VQ's resolution
    result = {"images": len(pixels), "held_out": held_out, "psnr_db": float(psnr(recon * 2 - 1, target)),
              "codes_used": int(codes.unique().numel()), "codebook_size": tokenizer.quantizer.codebook_size}
    shown = torch.cat([(target[:SHOWN] + 1) / 2, recon[:SHOWN]], dim=-2)   # original above reconstruction
    grid = torch.cat(list(shown), dim=-1).clamp(0, 1)                       # side by side
    picture = (grid.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(png)
    if writer is not None:
        writer.add_image("vq/reconstructions", picture, step, dataformats="HWC")
        writer.add_scalar("vq/eval_psnr_db", result["psnr_db"], step)
    which = "held-out" if held_out else "training (no data.eval_shards given)"
    log.info("VQ tokenizer on %d %s images: PSNR %.1f dB, %d of %d codes used; originals over reconstructions: %s",
             result["images"], which, result["psnr_db"], result["codes_used"], result["codebook_size"], png)
    return result
