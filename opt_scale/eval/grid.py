"""Text-to-image samples as one PNG grid: a row per prompt, its caption above."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from opt_scale.model.generation import OPTGenerator

Row = tuple[str, np.ndarray]  # (prompt, HWC uint8 strip of its images)


def grid_rows(gen: OPTGenerator, prompts: list[str], per_prompt: int, top_k: int, temperature: float = 1.0,
              seed: int = 0, rank: int = 0, world_size: int = 1) -> list[Row]:
    """The rows of prompts ``rank, rank + world_size, ...``. Each prompt's
    sampling is seeded by ``seed`` and its index, so a row is the same
    whichever rank draws it, and with however many ranks."""
    rows = []
    for index in range(rank, len(prompts), world_size):
        g = torch.Generator(device=gen.device).manual_seed(seed + index)
        images = gen.text_to_image([prompts[index]] * per_prompt, top_k=top_k, temperature=temperature, generator=g)
        rows.append((prompts[index], np.concatenate([im.permute(1, 2, 0).cpu().numpy() for im in images], axis=1)))
    return rows


def gather_rows(rows: list[Row], world_size: int) -> list[Row]:
    """Every rank's :func:`grid_rows` back in prompt order (a collective)."""
    from opt_scale.engine.distributed import all_gather_objects

    from .data import interleave_shares
    return interleave_shares(all_gather_objects(rows)) if world_size > 1 else rows


def compose_grid(rows: list[Row], scale: int = 2) -> Image.Image:
    h, w = rows[0][1].shape[:2]
    label = 14
    canvas = Image.new("RGB", (w * scale, len(rows) * (h * scale + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, row) in enumerate(rows):
        y = r * (h * scale + label)
        draw.text((2, y + 1), prompt[: w * scale // 6], fill="black")
        canvas.paste(Image.fromarray(row).resize((w * scale, h * scale), Image.Resampling.NEAREST), (0, y + label))
    return canvas


def image_grid(gen: OPTGenerator, prompts: list[str], per_prompt: int, top_k: int, temperature: float = 1.0,
               seed: int = 0, scale: int = 2, rank: int = 0, world_size: int = 1) -> Image.Image:
    """The whole grid (with ``world_size`` > 1 a collective: each rank draws
    its share of the rows; every rank gets the grid)."""
    rows = grid_rows(gen, prompts, per_prompt, top_k, temperature, seed, rank, world_size)
    return compose_grid(gather_rows(rows, world_size), scale)
