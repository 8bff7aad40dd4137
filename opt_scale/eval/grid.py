"""Text-to-image samples as one PNG grid: a row per prompt, its caption above."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from opt_scale.model.generation import OPTGenerator


def image_grid(gen: OPTGenerator, prompts: list[str], per_prompt: int, top_k: int, temperature: float = 1.0,
               seed: int = 0, scale: int = 2) -> Image.Image:
    g = torch.Generator(device=gen.device).manual_seed(seed)
    rows = []
    for prompt in prompts:
        images = gen.text_to_image([prompt] * per_prompt, top_k=top_k, temperature=temperature, generator=g)
        row = np.concatenate([im.permute(1, 2, 0).cpu().numpy() for im in images], axis=1)
        rows.append((prompt, row))
    h, w = rows[0][1].shape[:2]
    label = 14
    canvas = Image.new("RGB", (w * scale, len(rows) * (h * scale + label)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (prompt, row) in enumerate(rows):
        y = r * (h * scale + label)
        draw.text((2, y + 1), prompt[: w * scale // 6], fill="black")
        canvas.paste(Image.fromarray(row).resize((w * scale, h * scale), Image.Resampling.NEAREST), (0, y + label))
    return canvas
