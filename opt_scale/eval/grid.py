"""Text-to-image samples as one PNG grid: a row per prompt, its caption above.

A prompt taken from the data (``opt-eval generate --prompts-from``) starts
its row with a reference: the sample's own image and its reconstruction
through the VQ tokenizer, which is the best the image decoder's codes can
draw. A grey bar separates them from the samples."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw

from opt_scale.data.decode import centre_square
from opt_scale.model.generation import OPTGenerator

Row = tuple[str, np.ndarray]  # (prompt, HWC uint8 strip of its images)
Prompt = tuple[str, bytes | None]  # (caption, JPEG bytes of its reference image or None)
SEPARATOR_PX = 6


def reference_tiles(gen: OPTGenerator, jpeg: bytes, size: int) -> list[np.ndarray]:
    """The sample's image at the generated images' size and its VQ reconstruction, HWC uint8."""
    pixels = centre_square(Image.open(io.BytesIO(jpeg)).convert("RGB"), size)
    vq = gen.net.vq.to(gen.device)
    rebuilt = (vq.reconstruct(pixels[None].to(gen.device))[0] * 255).round().to(torch.uint8)
    return [pixels.permute(1, 2, 0).numpy(), rebuilt.permute(1, 2, 0).cpu().numpy()]


def grid_rows(gen: OPTGenerator, prompts: list[str | Prompt], per_prompt: int, top_k: int,
              temperature: float = 1.0, seed: int = 0, rank: int = 0, world_size: int = 1) -> list[Row]:
    """The rows of prompts ``rank, rank + world_size, ...``. Each prompt's
    sampling is seeded by ``seed`` and its index, so a row is the same
    whichever rank draws it, and with however many ranks. A prompt with a
    reference image (:data:`Prompt`) starts its row with :func:`reference_tiles`."""
    rows = []
    for index in range(rank, len(prompts), world_size):
        caption, jpeg = prompts[index] if isinstance(prompts[index], tuple) else (prompts[index], None)
        g = torch.Generator(device=gen.device).manual_seed(seed + index)
        images = gen.text_to_image([caption] * per_prompt, top_k=top_k, temperature=temperature, generator=g)
        tiles = [im.permute(1, 2, 0).cpu().numpy() for im in images]
        if jpeg is not None:
            size = tiles[0].shape[0]
            bar = np.full((size, SEPARATOR_PX, 3), 128, dtype=np.uint8)
            tiles = reference_tiles(gen, jpeg, size) + [bar] + tiles
        rows.append((caption, np.concatenate(tiles, axis=1)))
    return rows


def gather_rows(rows: list[Row], world_size: int) -> list[Row]:
    """Every rank's :func:`grid_rows` back in prompt order (a collective)."""
    from opt_scale.engine.distributed import all_gather_objects

    from .data import interleave_shares
    return interleave_shares(all_gather_objects(rows)) if world_size > 1 else rows


def compose_grid(rows: list[Row], scale: int = 2) -> Image.Image:
    """Rows may differ in width (with or without their reference tiles)."""
    h = rows[0][1].shape[0]
    w = max(row.shape[1] for _, row in rows)
    label = 14
    canvas = Image.new("RGB", (w * scale, len(rows) * (h * scale + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, row) in enumerate(rows):
        y = r * (h * scale + label)
        draw.text((2, y + 1), prompt[: w * scale // 6], fill="black")
        canvas.paste(Image.fromarray(row).resize((row.shape[1] * scale, h * scale), Image.Resampling.NEAREST),
                     (0, y + label))
    return canvas


def image_grid(gen: OPTGenerator, prompts: list[str | Prompt], per_prompt: int, top_k: int, temperature: float = 1.0,
               seed: int = 0, scale: int = 2, rank: int = 0, world_size: int = 1) -> Image.Image:
    """The whole grid (with ``world_size`` > 1 a collective: each rank draws
    its share of the rows; every rank gets the grid)."""
    rows = grid_rows(gen, prompts, per_prompt, top_k, temperature, seed, rank, world_size)
    return compose_grid(gather_rows(rows, world_size), scale)
