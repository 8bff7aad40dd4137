"""The streaming loader: equal batch counts per slot, exact epochs, exact resume."""

from collections import Counter

import pytest
import torch

from opt_scale.data.config import DataConfig
from opt_scale.data.loader import DataCursor, TrainLoader
from opt_scale.data.masking import PAIR_LABELS
from opt_scale.data.plan import EpochPlan, Layout
from opt_scale.data.sources import ShardInfo, resolve_shards
from opt_scale.data.tokenizer import Tokenizer
from opt_scale.presets import tiny

from .conftest import run_cli


def make_loader(demo_shards, demo_tokenizer, rank, world, workers, batch=4, cursor=None, block=8):
    cfg = tiny()
    shards = resolve_shards(str(demo_shards / "demo-index.json"))
    return TrainLoader(shards, DataConfig(num_workers=workers, shuffle_block=block, prefetch_factor=2), cfg.model,
                       cfg.tasks, Tokenizer(str(demo_tokenizer)), rank, world, batch, cursor=cursor)


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


def test_same_seed_same_stream_and_masks(demo_shards, demo_tokenizer):
    a = [next(make_loader(demo_shards, demo_tokenizer, 0, 1, 2)) for _ in range(1)][0]
    b = next(make_loader(demo_shards, demo_tokenizer, 0, 1, 2))
    assert a["keys"] == b["keys"]
    assert torch.equal(a["mlm_input_ids"], b["mlm_input_ids"]) and torch.equal(a["match_label"], b["match_label"])


@pytest.mark.parametrize("stop_after", [1, 5, 7])
def test_resume_from_cursor_replays_the_uninterrupted_stream(demo_shards, demo_tokenizer, stop_after):
    full = make_loader(demo_shards, demo_tokenizer, 0, 1, 2)
    reference = [next(full)["keys"] for _ in range(16)]  # crosses into epoch 1
    first = make_loader(demo_shards, demo_tokenizer, 0, 1, 2)
    seen = [next(first)["keys"] for _ in range(stop_after)]
    cursor = DataCursor.from_dict(first.global_cursor([first.local_state()]).to_dict())
    resumed = make_loader(demo_shards, demo_tokenizer, 0, 1, 2, cursor=cursor)
    seen += [next(resumed)["keys"] for _ in range(16 - stop_after)]
    assert seen == reference


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
