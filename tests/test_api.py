"""The Python API (opt_scale.load): the loader's preprocessing, embeddings
that rank exactly as `opt-eval retrieval --rerank 0` does, captions and
images from any subset of modalities."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import opt_scale
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import resolve_shards

from .conftest import run_cli
from .test_eval_cli import DIRECTIONS

N = 12


@pytest.fixture(scope="module")
def export(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "export"
    run_cli(["opt-export", str(trained_run), "--out", str(out)], timeout=300)
    return out


@pytest.fixture(scope="module")
def sample_files(demo_shards, tmp_path_factory):
    """The first N samples of the demo shards as plain files, as a user has them."""
    root = tmp_path_factory.mktemp("files")
    rows = []
    for shard in resolve_shards(str(demo_shards / "demo-index.json")):
        for raw in iter_samples(shard.url):
            ext = next(e for e in ("flac", "wav", "ogg") if e in raw)
            key = raw["__key__"]
            (root / f"{key}.jpg").write_bytes(raw["jpg"])
            (root / f"{key}.{ext}").write_bytes(raw[ext])
            rows.append({"key": key, "image": root / f"{key}.jpg", "audio": root / f"{key}.{ext}",
                         "text": raw["txt"].decode().strip(), "image_id": json.loads(raw["json"])["image_id"]})
            if len(rows) == N:
                return rows
    return rows


def test_embeddings_from_files_rank_as_opt_eval_does(export, sample_files, demo_shards, tmp_path):
    model = opt_scale.load(export)
    emb = {"text": model.encode_text([r["text"] for r in sample_files]),
           "image": model.encode_image([r["image"] for r in sample_files]),
           "audio": model.encode_audio([r["audio"] for r in sample_files])}
    for m, e in emb.items():
        assert e.shape == (N, model.net.contrastive.cfg.dim) and e.dtype == torch.float32, m
        assert torch.allclose(e.norm(dim=1), torch.ones(N), atol=1e-5), m
    # The same vectors opt-eval encodes from the shards.
    from opt_scale.eval.data import iter_eval_batches
    from opt_scale.eval.retrieval import encode_set
    data = encode_set(model.net, iter_eval_batches(str(demo_shards / "demo-index.json"), model.config.model,
                                                   model.tokenizer, 5, N), "cpu")
    assert data.keys == [r["key"] for r in sample_files]
    for m in emb:
        assert torch.allclose(emb[m], data.embeddings[m], atol=1e-5), m
    # And the recalls opt-eval prints for its embedding protocol.
    out = tmp_path / "r.json"
    run_cli(["opt-eval", "retrieval", "--checkpoint", str(export), "--shards", str(demo_shards / "demo-index.json"),
             "--max-samples", str(N), "--rerank", "0", "--json", str(out)], timeout=300)
    expected = json.loads(out.read_text())["by_protocol"]["embedding"]
    ids = [r["image_id"] for r in sample_files]
    keys = [r["key"] for r in sample_files]
    for d in DIRECTIONS:
        query, target = d.split("->")
        sims = sum(emb[m] @ emb[target].T for m in query.split("+"))
        same = ids if "image" in d else keys
        correct = torch.tensor([[same[q] == same[c] for c in range(N)] for q in range(N)])
        ranked = correct.gather(1, sims.argsort(1, descending=True))
        first = ranked.float().argmax(1)
        got = {f"R@{k}": 100 * float((first < k).float().mean()) for k in (1, 5, 10)}
        assert got == pytest.approx(expected[d], abs=1e-4), d


def test_every_input_kind_and_any_subset_of_modalities(export, sample_files):
    model = opt_scale.load(export)
    row = sample_files[0]
    by_path = model.encode_image(row["image"])  # one input, not a list
    assert by_path.shape[0] == 1
    data = row["image"].read_bytes()
    assert torch.equal(model.encode_image([data]), by_path)
    pil = Image.open(io.BytesIO(data))
    assert torch.allclose(model.encode_image([pil]), by_path, atol=0.05)  # PIL decodes without the JPEG draft
    wave, rate = sf.read(row["audio"], dtype="float32")
    by_file = model.encode_audio([row["audio"]])
    assert torch.allclose(model.encode_audio([(wave, rate)]), by_file, atol=1e-6)
    assert torch.allclose(model.encode_audio([(torch.from_numpy(wave), rate)]), by_file, atol=1e-6)
    # 48 kHz stereo: downmixed and resampled to the 16 kHz the model was trained on.
    from scipy.signal import resample_poly
    stereo = np.stack([resample_poly(wave, 3, 1), resample_poly(wave, 3, 1)], axis=1).astype(np.float32)
    cos = float((model.encode_audio([(stereo, 48000)]) * by_file).sum())
    assert cos > 0.95
    with pytest.raises(ValueError, match="no inputs"):
        model.encode_text([])

    images, audios = [r["image"] for r in sample_files[:2]], [r["audio"] for r in sample_files[:2]]
    for kwargs in ({"image": images}, {"audio": audios}, {"image": images, "audio": audios}):
        captions = model.caption(beam=1, **kwargs)
        assert len(captions) == 2 and all(isinstance(c, str) and c for c in captions), kwargs
    with pytest.raises(ValueError, match="pair them"):
        model.caption(image=images, audio=audios[:1])
    with pytest.raises(ValueError, match="needs image"):
        model.caption()
    pictures = model.generate_image(["a red circle"], n=2, seed=3)
    size = model.config.model.vq_image_size
    assert len(pictures) == 2 and all(p.size == (size, size) and p.mode == "RGB" for p in pictures)
    assert [np.asarray(p).tobytes() for p in pictures] == \
        [np.asarray(p).tobytes() for p in model.generate_image(["a red circle"], n=2, seed=3)]


def test_load_takes_a_run_directory(trained_run, export):
    from_run, from_export = opt_scale.load(trained_run), opt_scale.load(export)
    text = ["a small red circle"]
    assert torch.allclose(from_run.encode_text(text), from_export.encode_text(text), atol=1e-6)


def test_the_readme_example_runs(export, sample_files):
    """The README's "From Python" block, as written, on a tiny trained model and real files."""
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"### From Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    row = sample_files[0]
    code = (block.replace('"runs/demo/eval/export"', repr(str(export)))
                 .replace('"photo.jpg"', repr(str(row["image"]))).replace('"voice.ogg"', repr(str(row["audio"]))))
    assert code != block and "opt_scale.load" in code
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["t"].shape == scope["i"].shape == scope["a"].shape
