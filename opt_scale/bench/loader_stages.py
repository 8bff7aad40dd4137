"""Where a loader's time goes: CPU ms per sample of each stage, one core, in-process."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from .loader_inputs import LoaderSetup
from .report import print_table

STAGE_SAMPLES = 32


def cpu_ms_per_item(fn: Callable, items: Sequence, repeats: int = 3) -> float:
    """Median over ``repeats`` passes of CPU ms per item (CPU time: robust to other jobs)."""
    fn(items[0])  # first-call set-up (caches, lazy imports) is not a per-sample cost
    passes = []
    for _ in range(repeats):
        started = time.process_time()
        for item in items:
            fn(item)
        passes.append((time.process_time() - started) / len(items) * 1000)
    return round(sorted(passes)[len(passes) // 2], 3)


def stage_costs(setup: LoaderSetup, naive: bool = True) -> list[dict]:
    from opt_scale.data.features import log_mel
    from opt_scale.data.shard_reader import iter_samples
    from opt_scale.data.sources import resolve_shards

    from .naive_loader import decode_original_image, decode_original_wave, read_original, read_records
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    decoder, collator, tokenizer = setup.decoder(), setup.collator(), setup.tokenizer()
    shard = resolve_shards(str(setup.shards_index))[0].url
    raws = list(iter_samples(shard, limit=STAGE_SAMPLES))
    audio_ext = "flac" if "flac" in raws[0] else "wav"
    waves = [decoder.read_wave(r[audio_ext]) for r in raws]
    captions = [r["txt"].decode("utf-8").strip() for r in raws]
    samples = [decoder(r) for r in raws]
    draws = [collator.draw(s, 0) for s in samples]
    batch = min(setup.batch_size, len(samples))  # the stage table reads STAGE_SAMPLES samples

    def read_shard(_) -> None:
        for _raw in iter_samples(shard, limit=STAGE_SAMPLES):
            pass

    rows = [
        ("read tar", cpu_ms_per_item(read_shard, [None]) / STAGE_SAMPLES),
        ("JPEG decode + crop/resize", cpu_ms_per_item(lambda r: decoder.decode_image(r["jpg"]), raws)),
        (f"{audio_ext.upper()} decode (<= {decoder.max_samples / 16000:g} s)",
         cpu_ms_per_item(lambda r: decoder.read_wave(r[audio_ext]), raws)),
        ("log-mel", cpu_ms_per_item(lambda w: log_mel(w, decoder.n_mels), waves)),
        ("tokenize", cpu_ms_per_item(lambda c: tokenizer.encode(c, decoder.max_text_len), captions)),
        ("masks (per-sample draws)", cpu_ms_per_item(lambda s: collator.draw(s, 0), samples)),
        ("collate (pad + stack)", cpu_ms_per_item(
            lambda i: collator.assemble(samples[i:i + batch], draws[i:i + batch]),
            range(0, len(samples) - batch + 1, batch)) / batch),
    ]
    table = [{"pipeline": "sharded", "stage": name, "cpu_ms_per_sample": round(ms, 3)} for name, ms in rows]
    shared = {"log-mel", "tokenize", "masks (per-sample draws)", "collate (pad + stack)"}
    sharded_total = sum(ms for _, ms in rows)
    table.append({"pipeline": "sharded", "stage": "sum", "cpu_ms_per_sample": round(sharded_total, 3)})
    if naive:
        records = read_records(setup.inputs)[:STAGE_SAMPLES]
        originals = [read_original(setup.inputs, r) for r in records]
        naive_rows = [
            ("read original files", cpu_ms_per_item(lambda r: read_original(setup.inputs, r), records)),
            ("full-size JPEG decode + crop/resize",
             cpu_ms_per_item(lambda o: decode_original_image(o["jpg"], decoder.image_size), originals)),
            ("Vorbis decode (whole) + resample to 16 kHz",
             cpu_ms_per_item(lambda o: decode_original_wave(o["ogg"], decoder.max_samples), originals)),
        ]
        naive_rows += [(name, ms) for name, ms in rows if name in shared]
        table += [{"pipeline": "naive", "stage": name, "cpu_ms_per_sample": round(ms, 3)} for name, ms in naive_rows]
        table.append({"pipeline": "naive", "stage": "sum",
                      "cpu_ms_per_sample": round(sum(ms for _, ms in naive_rows), 3)})
    torch.set_num_threads(threads)
    print_table(table, ["pipeline", "stage", "cpu_ms_per_sample"],
                title=f"CPU ms per sample by stage, one core, in-process ({STAGE_SAMPLES} samples)")
    return table
