"""Using a trained model from Python, in open_clip's spirit.

    import opt_scale
    model = opt_scale.load("runs/demo/eval/export")        # an export, a checkpoint or a run directory
    t = model.encode_text(["a red circle on the left"])    # [N, D], L2-normalised
    i = model.encode_image(["x.jpg"])                      # paths, bytes or PIL images
    a = model.encode_audio(["x.ogg"])                      # paths, bytes or (waveform, sample_rate)
    (t @ i.T).softmax(-1)                                  # the contrastive similarities opt-eval ranks by
    model.caption(image=["x.jpg"]), model.generate_image(["a red circle"])

Inputs go through the training data's own code, so a file gives the model
what the loader would have: images are turned upright by their EXIF
orientation, converted to RGB, cropped to their centre square and resized as
the loader does (for a JPEG, from the same DCT-domain draft); audio of any
rate or channel count is mixed to mono, resampled to 16 kHz with the shard
builder's filter, cut at ``model.audio.max_seconds`` and turned into the
loader's log-mel; text is tokenized with the run's SentencePiece model and
cut at ``model.text.max_len``. A shard's own members therefore embed exactly
as ``opt-eval`` embeds them.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from opt_scale.data.decode import SampleDecoder, centre_square
from opt_scale.data.features import SAMPLE_RATE, log_mel
from opt_scale.model.generation import OPTGenerator

ImageInput = Union[str, Path, bytes, Image.Image]
AudioInput = Union[str, Path, bytes, tuple]  # tuple: (waveform [samples] or [samples, channels], sample_rate)


class OPT:
    """A trained OPT model for inference (see the module docstring).

    ``net`` is the :class:`~opt_scale.tasks.pretrainer.OPTPretrainer` in eval
    mode; ``config`` the run's :class:`~opt_scale.config.RunConfig`."""

    def __init__(self, net, config, tokenizer, batch_size: int = 32):
        self.net = net.eval()
        self.config = config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._decoder = SampleDecoder(config.model, tokenizer)
        self._generator = OPTGenerator(net, tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    # -- inputs, as the loader makes them ---------------------------------

    def preprocess_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [N, L] (padded), lengths [N]."""
        ids = [self.tokenizer.encode(t, self.config.model.text.max_len) for t in _as_list(texts, _one_text)]
        lengths = torch.tensor([len(r) for r in ids])
        out = torch.full((len(ids), int(lengths.max())), self.tokenizer.pad_id, dtype=torch.long)
        for k, row in enumerate(ids):
            out[k, :len(row)] = torch.tensor(row)
        return out, lengths

    def preprocess_image(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """uint8 pixels [N, 3, S, S]."""
        return torch.stack([self._pixels(x) for x in _as_list(images, _one_image)])

    def preprocess_audio(self, audios: Sequence[AudioInput]) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [N, T, n_mels] (padded), frame counts [N]."""
        mels = [self._mel(x) for x in _as_list(audios, _one_audio)]
        lengths = torch.tensor([m.shape[0] for m in mels])
        out = torch.zeros(len(mels), int(lengths.max()), self.config.model.audio.n_mels)
        for k, m in enumerate(mels):
            out[k, :m.shape[0]] = m
        return out, lengths

    def _pixels(self, image: ImageInput) -> torch.Tensor:
        from opt_scale.data_prep.media import exif_orientation
        size = self.config.model.vision.image_size
        if isinstance(image, Image.Image):
            return centre_square(upright_rgb(image), size)
        data = Path(image).read_bytes() if isinstance(image, (str, Path)) else image
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG" and exif_orientation(img) == 1:
            return self._decoder.decode_image(data)  # byte for byte the loader's decode
        return centre_square(upright_rgb(img), size)

    def _mel(self, audio: AudioInput) -> torch.Tensor:
        if isinstance(audio, tuple):
            wave, rate = audio
            wave = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave, dtype=np.float32)
        else:
            data = Path(audio).read_bytes() if isinstance(audio, (str, Path)) else audio
            wave, rate = sf.read(io.BytesIO(data), dtype="float32")
        wave = wave.mean(axis=1, dtype=np.float32) if wave.ndim == 2 else wave
        if int(rate) != SAMPLE_RATE:
            from opt_scale.data_prep.media import resample_to_16k
            wave = resample_to_16k(wave, int(rate))
        wave = wave[:int(self.config.model.audio.max_seconds * SAMPLE_RATE)]
        if len(wave) == 0:
            raise ValueError("an audio input holds no samples")
        return log_mel(wave, self.config.model.audio.n_mels)

    # -- embeddings --------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised contrastive embeddings [N, D] (float32, on the CPU)."""
        return self._embed("text", _batches(_as_list(texts, _one_text), self.batch_size))

    @torch.no_grad()
    def encode_image(self, images: Sequence[ImageInput]) -> torch.Tensor:
        return self._embed("image", _batches(_as_list(images, _one_image), self.batch_size))

    @torch.no_grad()
    def encode_audio(self, audios: Sequence[AudioInput]) -> torch.Tensor:
        return self._embed("audio", _batches(_as_list(audios, _one_audio), self.batch_size))

    def _embed(self, modality: str, batches: Iterable[list]) -> torch.Tensor:
        model, dev, out = self.net.model, self.device, []
        for items in batches:
            if modality == "text":
                ids, lengths = self.preprocess_text(items)
                tokens, valid = model.text(ids.to(dev), lengths.to(dev))
            elif modality == "image":
                tokens, valid = model.vision(self.preprocess_image(items).to(dev))
            else:
                mel, lengths = self.preprocess_audio(items)
                tokens, valid = model.audio(mel.to(dev), lengths.to(dev))
            out.append(self.net.contrastive.embed(modality, tokens, valid).cpu())
        return torch.cat(out)

    def logit_scale(self) -> float:
        """The learned contrastive temperature's inverse (similarities x this = logits)."""
        return float(self.net.contrastive.logit_scale().detach())

    # -- generation ----------------------------------------------------------

    @torch.no_grad()
    def caption(self, image: Sequence[ImageInput] | None = None, audio: Sequence[AudioInput] | None = None,
                beam: int = 3, max_len: int | None = None) -> list[str]:
        """Captions from images, recordings, or both (paired by position)."""
        if image is None and audio is None:
            raise ValueError("caption needs image=..., audio=... or both")
        pixels = None if image is None else self.preprocess_image(image)
        mel = mel_len = None
        if audio is not None:
            mel, mel_len = self.preprocess_audio(audio)
        if pixels is not None and mel is not None and len(pixels) != len(mel):
            raise ValueError(f"caption: {len(pixels)} images but {len(mel)} recordings; pair them one to one")
        n = len(pixels) if pixels is not None else len(mel)
        out: list[str] = []
        for s in range(0, n, self.batch_size):
            part = slice(s, s + self.batch_size)
            out += self._generator.caption(pixels=None if pixels is None else pixels[part],
                                           mel=None if mel is None else mel[part],
                                           mel_len=None if mel_len is None else mel_len[part],
                                           beam=beam, max_len=max_len)
        return out

    @torch.no_grad()
    def generate_image(self, prompts: Sequence[str], n: int = 1, top_k: int = 50, temperature: float = 1.0,
                       seed: int = 0) -> list[Image.Image]:
        """``n`` images per prompt (prompt-major), through the image decoder and the VQ decoder."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        images = []
        for prompt in _as_list(prompts, _one_text):
            for im in self._generator.text_to_image([prompt] * n, top_k=top_k, temperature=temperature,
                                                    generator=g):
                images.append(Image.fromarray(im.permute(1, 2, 0).cpu().numpy()))
        return images


def load(path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32) -> OPT:
    """An :class:`OPT` from an ``opt-export`` directory, a DeepSpeed checkpoint
    or a run directory (its newest complete checkpoint, consolidated in memory)."""
    from opt_scale.eval.load import load_for_eval
    loaded = load_for_eval(path, device)
    return OPT(loaded.net, loaded.config, loaded.tokenizer, batch_size)


def upright_rgb(img: Image.Image) -> Image.Image:
    """Turned upright by its EXIF orientation and converted to RGB, as the shard builder does."""
    from opt_scale.data_prep.media import EXIF_TRANSPOSE, exif_orientation, to_rgb
    orientation = exif_orientation(img)
    return to_rgb(img.transpose(EXIF_TRANSPOSE[orientation]) if orientation in EXIF_TRANSPOSE else img)


def _one_text(x) -> bool:
    return isinstance(x, str)


def _one_image(x) -> bool:
    return isinstance(x, (str, Path, bytes, Image.Image))


def _one_audio(x) -> bool:
    return isinstance(x, (str, Path, bytes)) or (isinstance(x, tuple) and len(x) == 2 and np.isscalar(x[1]))


def _as_list(items, is_one) -> list:
    """One input or a sequence of them, as a non-empty list."""
    items = [items] if is_one(items) else list(items)
    if not items:
        raise ValueError("no inputs given")
    return items


def _batches(items: list, size: int) -> Iterable[list]:
    for s in range(0, len(items), size):
        yield items[s:s + size]
