"""Same input => same shards, whatever the workers, jobs or scan chunking; plan rules."""

import json
from types import SimpleNamespace
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from opt_scale.data_prep.input_scan import key_digest128, scan_inputs
from opt_scale.data_prep.planning import TRAIN, HoldoutSpec, make_plan
from opt_scale.data_prep.tokenizer_training import train_tokenizer

from .conftest import build_outputs, prep_build_args, run_cli


def test_two_workers_rebuild_is_byte_identical(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "w2"
    run_cli(prep_build_args(prep_raw, out, "--workers", "2"))
    assert build_outputs(out) == build_outputs(prep_reference.dir)


def test_two_jobs_build_disjoint_shards_and_the_merged_index_is_byte_identical(prep_raw, prep_reference, tmp_path):
    out = tmp_path / "jobs"
    run_cli(prep_build_args(prep_raw, out, "--num-jobs", "2", "--job-index", "1", "--workers", "2"))
    first = {p.name for p in out.rglob("*.tar")}
    assert not (out / "shard-index.json").exists() and not (out / "failures.jsonl").exists()  # jobs never race on them
    run_cli(prep_build_args(prep_raw, out, "--num-jobs", "2", "--job-index", "0"))
    second = {p.name for p in out.rglob("*.tar")} - first
    assert first and second and not first & second
    proc = run_cli(["opt-shards", "index", str(out), "--max-failure-rate", "0.6"])
    assert "heldout:" in proc.stdout
    assert build_outputs(out) == build_outputs(prep_reference.dir)


# ---------------------------------------------------------------- planning on a synthetic input

def _write_jsonl(path, rng, n_images=60, first_image=0):
    """Images with 1-4 narratives each, in shuffled order, plus invalid lines, a duplicate, a blank line."""
    lines = []
    for i in range(first_image, first_image + n_images):
        image_id = f"{i * 7919:016x}"
        for a in range(int(rng.integers(1, 5))):
            lines.append({"dataset_id": "open_images", "image_id": image_id, "annotator_id": a,
                          "caption": f"image {i} by {a}", "voice_recording": f"r/{image_id}_{a}.ogg",
                          "traces": [[{"x": 0.1, "y": 0.2, "t": 0.3}] * int(rng.integers(1, 40))]})
    order = rng.permutation(len(lines))
    text = [json.dumps(lines[k]) for k in order]
    text.insert(30, json.dumps(lines[order[3]]))                      # a duplicate of line 4
    text.insert(12, "")                                               # blank: skipped
    text.insert(5, '{"broken": ')                                     # invalid JSON
    text.insert(2, json.dumps({**lines[order[20]], "caption": ""}))   # invalid, before its valid twin
    path.write_text("\n".join(text) + "\n")
    return lines[order[20]]


@pytest.fixture(scope="module")
def synthetic_inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    rng = np.random.default_rng(5)
    twin_a = _write_jsonl(d / "a.jsonl", rng)
    twin_b = _write_jsonl(d / "b.jsonl", rng, n_images=30, first_image=1000)
    # twins: the records whose invalid copy precedes them
    return SimpleNamespace(files=[str(d / "a.jsonl"), str(d / "b.jsonl")], twins=[twin_a, twin_b])


def _plan_signature(plan):
    return [(t.split, t.index, plan.table.file_index[t.rows].tolist(), plan.table.line_no[t.rows].tolist())
            for t in plan.tasks]


def test_scan_is_the_same_whatever_the_chunking_or_process_pool(synthetic_inputs):
    names = ("eval",)
    whole = scan_inputs(synthetic_inputs.files, names)
    tiny_chunks = scan_inputs(synthetic_inputs.files, names, chunk_bytes=997)
    with ProcessPoolExecutor(2) as pool:
        pooled = scan_inputs(synthetic_inputs.files, names, map_fn=pool.map, chunk_bytes=4096)
    for other in (tiny_chunks, pooled):
        for field in ("file_index", "line_no", "offset", "length", "valid", "key_digest", "holdout_rank"):
            assert np.array_equal(getattr(whole, field), getattr(other, field)), field
        assert other.blank_lines == whole.blank_lines == 2
    assert whole.line_no[:6].tolist() == [1, 2, 3, 4, 5, 6] and 15 not in whole.line_no[whole.file_index == 0]
    # ~60 bytes per line whatever the line length: the pre-pass scales to the ~700k-line release.
    per_line = sum(a.nbytes for a in (whole.file_index, whole.line_no, whole.offset, whole.length, whole.valid,
                                      whole.key_digest, whole.image_digest, whole.holdout_rank)) / len(whole)
    assert per_line < 80


def test_duplicates_first_valid_line_wins(synthetic_inputs):
    table = scan_inputs(synthetic_inputs.files)
    plan = make_plan(table, 10, [], "p")
    dup_rows = np.flatnonzero(plan.duplicate_of >= 0)
    assert len(dup_rows) == 2  # the inserted copy in each file
    for row in dup_rows:
        first = plan.duplicate_of[row]
        assert first < row and table.valid[first]
        assert np.array_equal(table.key_digest[first], table.key_digest[row])
        assert table.line_no[row] == 34 and table.line_no[first] == 5
    # The invalid copy on line 3 claims nothing: its valid twin, later on, is kept (no duplicate).
    assert (~table.valid).sum() == 4 and table.line_no[~table.valid].tolist() == [3, 7, 3, 7]
    for twin in synthetic_inputs.twins:
        digest = np.array(key_digest128(f"{twin['image_id']}_{twin['annotator_id']}"), dtype=np.uint64)
        (row,) = np.flatnonzero(table.valid & (table.key_digest == digest).all(axis=1))
        assert table.line_no[row] > 3 and plan.duplicate_of[row] == -1


def test_holdout_takes_whole_images_and_does_not_depend_on_shard_size(synthetic_inputs):
    table = scan_inputs(synthetic_inputs.files, ("eval", "small"))
    holdouts = [HoldoutSpec.parse("eval:25"), HoldoutSpec.parse("small:7")]
    plans = [make_plan(table, spc, holdouts, "p") for spc in (3, 8, 1000)]
    for plan in plans[1:]:
        assert np.array_equal(plan.split_of, plans[0].split_of)
    plan = plans[0]
    image = table.image_digest
    for k, spec in enumerate(holdouts, start=1):
        held = (plan.split_of == k)
        usable = table.valid & (plan.duplicate_of < 0)
        assert (held & usable).sum() >= spec.count
        held_images = np.unique(image[held])
        rest = table.valid & ~held
        assert not np.isin(image[rest], held_images).any()  # no image on both sides
        # Minimal: dropping the last-ranked held image would fall short of COUNT.
        ranks = table.holdout_rank[held, k - 1]
        last = ranks.max()
        assert (held & usable & (table.holdout_rank[:, k - 1] != last)).sum() < spec.count
    assert {t.split for t in plan.tasks} == {TRAIN, "eval", "small"}
    assert sorted(np.concatenate([t.rows for t in plan.tasks]).tolist()) == list(range(len(table)))


def test_holdout_asking_for_more_than_the_input_holds_is_an_error(synthetic_inputs):
    table = scan_inputs(synthetic_inputs.files, ("big",))
    with pytest.raises(ValueError, match="only"):
        make_plan(table, 10, [HoldoutSpec("big", 10_000)], "p")


def test_job_split_is_disjoint_and_covers_every_shard(synthetic_inputs):
    plan = make_plan(scan_inputs(synthetic_inputs.files, ("eval",)), 4, [HoldoutSpec("eval", 20)], "p")
    for jobs in (1, 3, 7, 100):
        parts = [plan.tasks_for_job(k, jobs) for k in range(jobs)]
        names = [(t.split, t.index) for part in parts for t in part]
        assert sorted(names) == sorted((t.split, t.index) for t in plan.tasks) and len(set(names)) == len(names)


def test_tokenizer_training_is_deterministic(prep_reference, tmp_path):
    index = str(prep_reference.dir / "shard-index.json")
    a = train_tokenizer(index, 96, str(tmp_path / "a" / "sp.model"))
    b = train_tokenizer(index, 96, str(tmp_path / "b" / "sp.model"))
    assert open(a, "rb").read() == open(b, "rb").read()
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a)
    assert sp.get_piece_size() > 20 and sp.encode("a cup of coffee")


def _tiny_build_inputs(root):
    """Three narratives of one key (image, annotator): the first two parse but fail on their media
    (no recording; an empty one), the third builds; then a fourth copy, and one other narrative."""
    import io

    import soundfile as sf
    from PIL import Image
    for d in ("ann", "img", "rec"):
        (root / d).mkdir()
    Image.new("RGB", (40, 30), (200, 80, 10)).save(root / "img" / "00000000000000aa.jpg")
    Image.new("RGB", (40, 30), (10, 80, 200)).save(root / "img" / "00000000000000bb.jpg")
    wav = io.BytesIO()
    sf.write(wav, np.sin(np.arange(8000, dtype=np.float32) / 5), 16000, format="WAV")
    (root / "rec" / "good.wav").write_bytes(wav.getvalue())
    (root / "rec" / "other.wav").write_bytes(wav.getvalue())
    (root / "rec" / "empty.wav").write_bytes(b"")
    base = {"dataset_id": "open_images", "image_id": "00000000000000aa", "annotator_id": 3, "caption": "an orange"}
    lines = [{**base, "voice_recording": "missing.wav"}, {**base, "voice_recording": "empty.wav"},
             {**base, "voice_recording": "good.wav", "caption": "the kept copy"},
             {**base, "voice_recording": "good.wav", "caption": "a later copy"},
             {**base, "image_id": "00000000000000bb", "voice_recording": "other.wav"}]
    (root / "ann" / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.mark.parametrize("samples_per_shard, num_jobs", [(8, 1), (1, 1), (1, 2)])
def test_the_first_copy_that_builds_wins_over_earlier_copies_that_fail(tmp_path, samples_per_shard, num_jobs):
    from opt_scale.data.shard_reader import iter_samples
    from opt_scale.data_prep.build import BuildOptions, build
    from opt_scale.data_prep.index import merge_index
    _tiny_build_inputs(tmp_path)
    out = tmp_path / "out"
    for job in range(num_jobs):  # in separate shards and jobs, the copies cannot see each other's outcome
        build(BuildOptions([str(tmp_path / "ann" / "a.jsonl")], str(tmp_path / "img"), str(tmp_path / "rec"),
                           str(out), prefix="t", samples_per_shard=samples_per_shard, image_short_side=16,
                           num_jobs=num_jobs, job_index=job, progress=False))
    if num_jobs > 1:
        merge_index(out, "t")
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["line"], f["reason"]) for f in failures] == [(1, "missing_audio"), (2, "bad_audio"), (4, "duplicate")]
    assert failures[2]["detail"].endswith("a.jsonl:3")           # names the copy that was kept
    captions = {s["__key__"]: s["txt"].decode() for p in sorted(out.glob("t-*.tar")) for s in iter_samples(str(p))}
    assert captions == {"00000000000000aa_3": "the kept copy", "00000000000000bb_3": "an orange"}
