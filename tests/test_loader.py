"""The streaming loader: equal batch counts per slot, exact epochs, exact resume."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from opt_scale.data.collate import Collator, mel_on_device
from opt_scale.data.config import DataConfig
from opt_scale.data.decode import ABSENT_AUDIO_FRAMES, DecodedSample
from opt_scale.data.loader import DataCursor, TrainLoader
from opt_scale.data.masking import PAIR_LABELS
from opt_scale.data.plan import EpochPlan, Layout
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import ShardInfo, resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.presets import tiny

from .conftest import run_cli


def make_loader(demo_shards, demo_tokenizer, rank, world, workers, batch=4, cursor=None, block=8,
                spec="demo-index.json", **data):
    cfg = tiny()
    shards = resolve_shards(str(demo_shards / spec))
    data_cfg = DataConfig(num_workers=workers, shuffle_block=block, prefetch_factor=2, **data)
    return TrainLoader(shards, data_cfg, cfg.model, cfg.tasks, Tokenizer(str(demo_tokenizer)), rank, world, batch,
                       cursor=cursor)


def test_plan_gives_equal_whole_batches_even_with_fewer_shards_than_slots():
    shards = [ShardInfo(f"s{i}.tar", n) for i, n in enumerate([16, 16, 16])]
    plan = EpochPlan(shards, epoch=0, seed=0, layout=Layout(world_size=2, workers_per_rank=2, batch_size=4))
    runs = [plan.slot_intervals(s) for s in range(4)]
    lengths = [sum(b - a for a, b in r) for r in runs]
    assert lengths == [12, 12, 12, 12]
    covered = [p for r in runs for a, b in r for p in range(a, b)]
    assert len(covered) == len(set(covered)) == 48  # disjoint, nothing lost here


def test_plan_rejects_nothing_silently_when_data_is_too_small():
    shards = [ShardInfo("s.tar", 5)]
    plan = EpochPlan(shards, 0, 0, Layout(2, 2, 4))
    assert plan.per_slot == 0


def test_three_shards_two_ranks_two_workers_yield_equal_batches(demo_shards, demo_tokenizer):
    keys, counts = Counter(), []
    for rank in range(2):
        loader = make_loader(demo_shards, demo_tokenizer, rank, 2, 2)
        n = loader.batches_per_epoch(0)
        batches = [next(loader) for _ in range(n)]
        counts.append(len(batches))
        keys.update(k for b in batches for k in b["keys"])
        assert all(loader.slot_state[s].epoch == 0 for s in loader.slot_state)
    assert counts[0] == counts[1] == 6  # 48 samples / (4 slots x 4) = 3 batches per worker
    assert sum(keys.values()) == 48 and max(keys.values()) == 1  # each sample once per epoch


def test_batches_hold_every_task_input(demo_shards, demo_tokenizer):
    b = next(make_loader(demo_shards, demo_tokenizer, 0, 1, 0))
    B = 4
    assert b["pixels"].shape == (B, 3, 128, 128) and b["pixels"].dtype == torch.uint8
    assert b["mel"].shape[0] == B and b["mel"].shape[2] == 80
    assert (b["mel_len"] <= b["mel"].shape[1]).all()
    assert b["text_ids"].shape == b["mlm_input_ids"].shape == b["mlm_labels"].shape
    # Every row has its MLM labels (the model ignores those of a dropped text, see pretrainer.ignore_unless).
    assert ((b["mlm_labels"] != -100).sum(1) >= 1).all()
    assert b["modality_keep"].any(1).all()                               # never all three dropped
    assert b["mvm_mask"].any(1).all() and b["mam_mask"].any(1).all()     # drawn for every row
    assert not b["dtr_keep"][:, 0].any() and not b["dir_keep"][:, 1].any()  # decoders never see their target
    assert b["image_uid"].dtype == torch.int64 and len(set(b["image_uid"].tolist())) >= 2
    assert ((b["match_u"] >= 0) & (b["match_u"] < 1)).all() and b["match_u"].shape == (B, 2)
    for i, label in enumerate(b["match_label"].tolist()):
        cls, keep = int(b["match_class"][i]), b["match_keep"][i]
        if keep.all():
            assert label == cls
        else:  # one modality left out: the label says whether the remaining pair agrees
            assert keep.sum() == 2
            assert label == PAIR_LABELS[int((~keep).nonzero())][cls]


def test_mel_on_device_ships_waveforms_that_become_the_loaders_own_features(demo_shards, demo_tokenizer):
    """data.mel_on_device: workers ship waveforms; collate.mel_on_device turns
    them into exactly the log-mel the workers would have computed, with the
    same frame counts and masks; a sample without audio keeps its zero frames."""
    on = make_loader(demo_shards, demo_tokenizer, 0, 1, 0, mel_on_device=True)
    off = make_loader(demo_shards, demo_tokenizer, 0, 1, 0)
    for _ in range(2):
        shipped, want = next(on), next(off)
        assert "mel" not in shipped and shipped["wave"].shape[0] == 4
        got = mel_on_device(shipped, 80)
        assert got.keys() == want.keys() and got["keys"] == want["keys"]
        torch.testing.assert_close(got["mel"], want["mel"], rtol=0, atol=1e-5)
        for name in ("mel_len", "mam_mask", "mlm_input_ids", "match_label"):
            assert torch.equal(got[name], want[name]), name
    # A caption-only row (an image-text pair) next to one with audio.
    cfg, tok = tiny(), Tokenizer(str(demo_tokenizer))
    rows = [DecodedSample("a", "x", np.array([tok.bos_id, tok.eos_id]), torch.zeros(3, 128, 128, dtype=torch.uint8),
                          None, wave=torch.randn(16_000) * 0.1),
            DecodedSample("b", "y", np.array([tok.bos_id, tok.eos_id]), torch.zeros(3, 128, 128, dtype=torch.uint8),
                          None, present=np.array([True, True, False]), wave=torch.zeros(0))]
    batch = mel_on_device(Collator(cfg.model, cfg.tasks, tok, 0)(rows, 0), 80)
    assert batch["mel_len"].tolist() == [101, ABSENT_AUDIO_FRAMES]
    assert batch["mel"][1].abs().max() == 0 and batch["mel"][0, :101].abs().min() > 0


def test_same_seed_same_stream_and_masks(demo_shards, demo_tokenizer):
    a = [next(make_loader(demo_shards, demo_tokenizer, 0, 1, 2)) for _ in range(1)][0]
    b = next(make_loader(demo_shards, demo_tokenizer, 0, 1, 2))
    assert a["keys"] == b["keys"]
    assert torch.equal(a["mlm_input_ids"], b["mlm_input_ids"]) and torch.equal(a["match_label"], b["match_label"])


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    """Same samples *and* the same masks, views and labels drawn for them (not only the keys)."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.keys() == b.keys() and a["keys"] == b["keys"], i
        for name, value in a.items():
            if torch.is_tensor(value):
                assert torch.equal(value, b[name]), (i, name)


@pytest.mark.parametrize("stop_after", [1, 5, 7])
def test_resume_from_cursor_replays_the_uninterrupted_stream(demo_shards, demo_tokenizer, stop_after):
    full = make_loader(demo_shards, demo_tokenizer, 0, 1, 2)
    reference = [next(full) for _ in range(16)]  # crosses into epoch 1
    first = make_loader(demo_shards, demo_tokenizer, 0, 1, 2)
    seen = [next(first) for _ in range(stop_after)]
    cursor = DataCursor.from_dict(first.global_cursor([first.local_state()]).to_dict())
    resumed = make_loader(demo_shards, demo_tokenizer, 0, 1, 2, cursor=cursor)
    seen += [next(resumed) for _ in range(16 - stop_after)]
    assert_same_batches(seen, reference)


@pytest.mark.parametrize("batches", [1, 2, 3])  # 1 and 3 stop inside a shuffle block of 8
def test_resume_on_a_different_layout_reads_each_remaining_sample_once(demo_shards, demo_tokenizer, batches):
    two = [make_loader(demo_shards, demo_tokenizer, r, 2, 1) for r in range(2)]
    consumed = Counter(k for ld in two for _ in range(batches) for k in next(ld)["keys"])
    cursor = two[0].global_cursor([ld.local_state() for ld in two])
    one = make_loader(demo_shards, demo_tokenizer, 0, 1, 2, cursor=cursor)
    rest = Counter()
    while True:
        b = next(one)
        if one.epoch > 0:
            break
        rest.update(b["keys"])
    assert not (set(consumed) & set(rest))           # nothing read twice
    assert sum(consumed.values()) == 8 * batches and max(rest.values()) == 1
    left = 48 - 8 * batches                          # re-split over 2 slots, whole batches of 4
    assert sum(rest.values()) == (left // 8) * 8


def test_a_layout_change_at_an_epoch_boundary_keeps_the_next_epochs_progress(demo_shards, demo_tokenizer):
    # 1 rank x 2 workers x 4: 12 batches per epoch, served round-robin, so after 13 one slot is a batch into epoch 1.
    one = make_loader(demo_shards, demo_tokenizer, 0, 1, 2)
    read = [next(one) for _ in range(13)]
    assert one.epoch == 1
    cursor = DataCursor.from_dict(one.global_cursor([one.local_state()]).to_dict())
    two = [make_loader(demo_shards, demo_tokenizer, r, 2, 1, cursor=cursor) for r in range(2)]
    rest = Counter()
    for ld in two:
        while (b := next(ld)) and ld.epoch == 1:
            rest.update(b["keys"])
    assert not set(read[12]["keys"]) & set(rest)     # epoch 1's first batch is not read again
    assert max(rest.values()) == 1 and sum(rest.values()) == (44 // 8) * 8


def test_cursor_for_another_shuffle_block_is_refused(demo_shards, demo_tokenizer):
    ld = make_loader(demo_shards, demo_tokenizer, 0, 1, 0)
    next(ld)
    cursor = ld.global_cursor([ld.local_state()])
    with pytest.raises(ValueError, match="data.shuffle_block is 4"):
        make_loader(demo_shards, demo_tokenizer, 0, 1, 0, cursor=cursor, block=4)


def test_cursor_for_other_shards_is_refused(demo_shards, demo_tokenizer):
    ld = make_loader(demo_shards, demo_tokenizer, 0, 1, 0)
    cursor = ld.global_cursor([ld.local_state()])
    cursor.fingerprint = "0" * 16
    with pytest.raises(ValueError, match="different shard set"):
        make_loader(demo_shards, demo_tokenizer, 0, 1, 0, cursor=cursor)


# ---------------------------------------------------------------- damaged shards

def _cut_shard(shards_dir, dest, keep: int, mid_member: bool = False) -> Path:
    """A copy of the demo shards whose shard 1 is cut after ``keep`` whole samples (at the next header,
    or inside the next sample's first member); the index still promises 16."""
    import shutil
    import tarfile
    shutil.copytree(shards_dir, dest)
    path = dest / "demo-000001.tar"
    with tarfile.open(path) as tar:
        keys, cut = [], None
        for info in tar:
            key = info.name.split(".")[0]
            if key not in keys:
                keys.append(key)
            if len(keys) == keep + 1:
                cut = info.offset_data + 100 if mid_member else info.offset
                break
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    return dest


def _epoch_keys(loader, n_batches):
    batches = [next(loader)["keys"] for _ in range(n_batches)]
    return batches, Counter(k for b in batches for k in b)


@pytest.mark.parametrize("block", [48, 8])  # one block per epoch (as with the default 256), or blocks of 8
def test_a_truncated_shard_gets_distinct_counted_substitutes(demo_shards, demo_tokenizer, tmp_path, block):
    damaged = _cut_shard(demo_shards, tmp_path / "shards", keep=8)
    loader = make_loader(damaged, demo_tokenizer, 0, 1, 0, block=block, max_substituted_fraction=0.2)
    batches, seen = _epoch_keys(loader, 12)
    assert loader.substituted == 8 and loader.epoch == 0
    assert sum(seen.values()) == 48 and len(seen) == 40       # 8 unreadable samples stood in for...
    assert sorted(Counter(seen.values()).items()) == [(1, 32), (2, 8)]  # ...by 8 distinct others, once each
    assert all(len(set(b)) == len(b) for b in batches)      # never twice in one batch


def test_substitutes_resume_exactly(demo_shards, demo_tokenizer, tmp_path):
    damaged = _cut_shard(demo_shards, tmp_path / "shards", keep=5, mid_member=True)
    kw = dict(block=8, max_substituted_fraction=0.5)
    full = make_loader(damaged, demo_tokenizer, 0, 1, 2, **kw)
    reference = [next(full) for _ in range(12)]
    assert full.substituted == 11 and full.epoch == 0  # samples 5-15 of shard 1 are unreadable
    reference += [next(full) for _ in range(2)]
    first = make_loader(damaged, demo_tokenizer, 0, 1, 2, **kw)
    seen = [next(first) for _ in range(5)]
    cursor = DataCursor.from_dict(first.global_cursor([first.local_state()]).to_dict())
    resumed = make_loader(damaged, demo_tokenizer, 0, 1, 2, cursor=cursor, **kw)
    seen += [next(resumed) for _ in range(9)]
    assert_same_batches(seen, reference)


def test_too_many_substitutes_stop_the_run_naming_the_limit(demo_shards, demo_tokenizer, tmp_path):
    from opt_scale.utils.config_tools import ConfigError
    damaged = _cut_shard(demo_shards, tmp_path / "shards", keep=8)
    loader = make_loader(damaged, demo_tokenizer, 0, 1, 0, block=48)  # default limit: 1% of an epoch
    with pytest.raises(ConfigError, match=r"data\.max_substituted_fraction.*opt-shards verify"):
        for _ in range(12):
            next(loader)
    with pytest.raises(ConfigError, match="max_substituted_fraction"):
        DataConfig(max_substituted_fraction=1.5).validate()


@pytest.mark.parametrize("mid_member", [False, True])
def test_a_truncated_shard_without_an_index_is_counted_short_with_a_warning(demo_shards, demo_tokenizer, tmp_path,
                                                                             caplog, mid_member):
    damaged = _cut_shard(demo_shards, tmp_path / "shards", keep=8, mid_member=mid_member)
    with caplog.at_level("WARNING"):
        shards = resolve_shards(str(damaged / "demo-*.tar"))
    assert [s.num_samples for s in shards] == [16, 8, 16]
    assert any("demo-000001.tar" in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)
    loader = make_loader(damaged, demo_tokenizer, 0, 1, 0, block=8, spec="demo-*.tar")
    _, seen = _epoch_keys(loader, 10)
    assert loader.substituted == 0 and len(seen) == 40 and max(seen.values()) == 1


def test_leftover_samples_are_left_out_of_their_epoch_not_carried(demo_shards, demo_tokenizer):
    """48 samples, 1 slot, batches of 5: 9 batches per epoch. The 3 samples past the last whole batch are the
    tail of the epoch's shard order, left out of that epoch; the next epoch, in another shard order, leaves out
    others and is again 9 batches (nothing carried over, so an epoch's plan depends on its number alone)."""
    from opt_scale.data.plan import shard_order
    shards = resolve_shards(str(demo_shards / "demo-index.json"))
    loader = make_loader(demo_shards, demo_tokenizer, 0, 1, 0, batch=5)
    assert loader.batches_per_epoch(0) == loader.batches_per_epoch(1) == 9
    all_keys = set()
    for s in shards:
        all_keys |= {r["__key__"] for r in iter_samples(s.url)}
    left_out = []
    for epoch in (0, 1):
        read = [k for _ in range(9) for k in next(loader)["keys"]]
        assert len(set(read)) == 45 and loader.epoch == epoch
        last_shard = shards[shard_order(len(shards), 0, epoch)[-1]]
        tail = [r["__key__"] for r in iter_samples(last_shard.url)][-3:]
        assert all_keys - set(read) == set(tail)
        left_out.append(set(tail))
    assert left_out[0] != left_out[1]


@pytest.mark.distributed
def test_opt_train_logs_and_summarises_substitutes_and_stops_past_the_limit(demo_shards, demo_tokenizer,
                                                                             tiny_overrides, tmp_path):
    from opt_scale.bench.events import read_scalars

    from .conftest import run_cli
    damaged = _cut_shard(demo_shards, tmp_path / "shards", keep=8)
    overrides = [o for o in tiny_overrides if not o.startswith("data.train_shards=")]
    overrides += [f"data.train_shards={damaged / 'demo-index.json'}", "train.steps=3"]
    # The same stream as the run's one rank and worker (defaults: shuffle_block 256, seed 0).
    loader = make_loader(damaged, demo_tokenizer, 0, 1, 1, block=256, max_substituted_fraction=1.0)
    expected = [0]
    for _ in range(3):
        next(loader)
        expected.append(loader.substituted)
    assert expected[-1] > 0
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *overrides, "data.max_substituted_fraction=1"],
                   timeout=300)
    assert f"substituted      {expected[-1]} samples" in proc.stdout
    scalars = read_scalars(tmp_path / "run" / "tensorboard")["data/substituted_samples"]
    assert scalars == [(step, float(expected[step])) for step in (1, 2, 3)]
    # With the default limit (1% of an epoch) the first stand-in stops the run: one line naming the key.
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *overrides, f"train.out_dir={tmp_path / 'run2'}"],
                   timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("opt-train: error:")]
    assert len(errors) == 1 and "data.max_substituted_fraction=0.01" in errors[0]
    assert "Traceback" not in proc.stderr


def test_too_little_data_for_one_batch_per_slot_is_refused_by_the_loader(demo_shards, demo_tokenizer):
    # 48 samples; 2 ranks x 2 workers x batch 16 need 64.
    with pytest.raises(ValueError, match=r"48 samples.*4 loader slots.*train.micro_batch_size 16"):
        make_loader(demo_shards, demo_tokenizer, rank=0, world=2, workers=2, batch=16)
    make_loader(demo_shards, demo_tokenizer, rank=0, world=2, workers=2, batch=12)  # 48: exactly enough


def test_opt_train_refuses_too_little_data_in_one_line(tiny_overrides):
    proc = run_cli(["opt-train", "--config", "tiny", "--set", *tiny_overrides, "train.micro_batch_size=64",
                    "train.steps=1"], check=False, timeout=120)
    assert proc.returncode != 0
    assert "48 samples" in proc.stderr and "train.micro_batch_size" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------- weighted mixtures (data.train_weights)

def test_a_mixture_takes_whole_shards_in_proportion_and_walks_each_source_evenly():
    from opt_scale.data.sources import ShardMixture
    big = [ShardInfo(f"big-{i}.tar", 1000) for i in range(100)]
    small = [ShardInfo(f"small-{i}.tar", 1000) for i in range(10)]
    mix = ShardMixture([big, small], (1.0, 1.0), seed=3)
    assert mix.shards_per_epoch == [55, 55]  # 110 shards an epoch, half from each: the small set 5.5 times
    uses = Counter()
    for epoch in range(4):
        shards = mix.for_epoch(epoch)
        assert mix.for_epoch(epoch) == shards and len(shards) == 110  # a function of (seed, epoch)
        assert sum(s.url.startswith("small") for s in shards) == 55
        uses.update(s.url for s in shards if s.url.startswith("small"))
    assert set(uses.values()) == {22}  # 4 x 55 draws over 10 shards: every one equally often
    lines = mix.describe()
    assert len(lines) == 2 and "55 of 10 shards" in lines[1] and "(50.0%)" in lines[1]
    assert ShardMixture([big, small]).for_epoch(5) == big + small  # unweighted: every shard once
    fingerprints = {mix.fingerprint(), ShardMixture([big, small]).fingerprint(),
                    ShardMixture([big, small], (1, 3)).fingerprint()}
    assert len(fingerprints) == 3  # a cursor of one never resumes another


def test_mixture_weights_are_checked(demo_shards):
    from opt_scale.data.sources import ShardSpecError, resolve_mixture
    spec = f"{demo_shards / 'demo-000000.tar'},{demo_shards / 'demo-00000{1..2}.tar'}"
    with pytest.raises(ShardSpecError, match="2 comma-separated sources"):
        resolve_mixture(spec, (1.0,))
    with pytest.raises(ShardSpecError, match="finite, >= 0"):
        resolve_mixture(spec, (1.0, float("nan")))
    with pytest.raises(ShardSpecError, match="not all zero"):
        resolve_mixture(spec, (0.0, 0.0))
    mix = resolve_mixture(spec, (3.0, 1.0))
    assert [len(p) for p in mix.epoch_parts(0)] == [2, 1]  # 36 and 12 samples wanted, 16 per shard


@pytest.mark.parametrize("stop_after", [3, 13])
def test_a_mixture_resumes_exactly(demo_shards, demo_tokenizer, stop_after):
    from opt_scale.data.sources import resolve_mixture
    spec = f"{demo_shards / 'demo-000000.tar'},{demo_shards / 'demo-00000{1..2}.tar'}"
    cfg = tiny()
    data = DataConfig(num_workers=2, shuffle_block=8, prefetch_factor=2, train_weights=(3.0, 1.0))

    def loader(cursor=None):
        return TrainLoader(resolve_mixture(spec, data.train_weights), data, cfg.model, cfg.tasks,
                           Tokenizer(str(demo_tokenizer)), 0, 1, 4, cursor=cursor)

    full = loader()
    reference = [next(full) for _ in range(26)]  # two epochs of 12 batches, into the third
    first_epoch = Counter(k for b in reference[:12] for k in b["keys"])
    from_a = sum(n for k, n in first_epoch.items() if any(k == r["__key__"] for r in
                                                            iter_samples(str(demo_shards / "demo-000000.tar"))))
    assert from_a == 32 and max(first_epoch.values()) == 2  # source A's one shard twice, B's once
    first = loader()
    seen = [next(first) for _ in range(stop_after)]
    cursor = DataCursor.from_dict(first.global_cursor([first.local_state()]).to_dict())
    resumed = loader(cursor)
    seen += [next(resumed) for _ in range(26 - stop_after)]
    assert_same_batches(seen, reference)
    with pytest.raises(ValueError, match="different shard set"):  # the same shards, unweighted: another stream
        make_loader(demo_shards, demo_tokenizer, 0, 1, 0, cursor=cursor, spec="demo-index.json")
