"""Shards from anywhere: paths, brace patterns, globs, pipe: commands, http(s), indexes."""

import functools
import http.server
import json
import threading

import pytest

from opt_scale.bench.events import read_scalars
from opt_scale.data.shard_reader import iter_samples
from opt_scale.data.sources import ShardSpecError, resolve_shards

from .conftest import run_cli, torchrun_args


@pytest.fixture
def http_shards(demo_shards):
    """The demo shard directory served over HTTP on loopback."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo_shards))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def keys(url, **kw):
    return [s["__key__"] for s in iter_samples(url, **kw)]


def test_brace_glob_and_comma_lists_resolve_with_counts(demo_shards):
    brace = resolve_shards(f"{demo_shards}/demo-{{000000..000002}}.tar")
    glob = resolve_shards(f"{demo_shards}/demo-*.tar")
    listed = resolve_shards(f"{demo_shards}/demo-000000.tar,{demo_shards}/demo-00000{{1..2}}.tar")
    index = resolve_shards(str(demo_shards / "demo-index.json"))
    assert [s.num_samples for s in brace] == [16, 16, 16]
    assert brace == glob == listed == index


def test_missing_or_uncountable_shards_are_refused_by_key(demo_shards):
    with pytest.raises(ShardSpecError, match="data.train_shards"):
        resolve_shards(f"{demo_shards}/nope-{{0..1}}.tar")
    with pytest.raises(ShardSpecError, match="dataset index"):
        resolve_shards("http://example.invalid/shard-{000..009}.tar")
    with pytest.raises(ShardSpecError, match="data.train_shards"):
        resolve_shards("")


def test_pipe_and_http_read_the_same_samples_as_local(demo_shards, http_shards, tmp_path):
    local = str(demo_shards / "demo-000001.tar")
    assert keys(f"pipe:cat {local}") == keys(local)
    assert keys(f"{http_shards}/demo-000001.tar", skip=5, limit=4) == keys(local)[5:9]
    index = json.loads((demo_shards / "demo-index.json").read_text())
    for entry in index["shardlist"]:
        entry["url"] = f"pipe:cat {demo_shards / entry['url']}"
    (tmp_path / "pipe-index.json").write_text(json.dumps(index))
    shards = resolve_shards(str(tmp_path / "pipe-index.json"))
    assert [s.url for s in shards][0].startswith("pipe:cat ") and sum(s.num_samples for s in shards) == 48
    remote = resolve_shards(f"{http_shards}/demo-index.json")  # relative urls resolve against the index URL
    assert remote[0].url == f"{http_shards}/demo-000000.tar"


@pytest.mark.distributed
def test_two_ranks_two_workers_train_from_three_http_shards(http_shards, tiny_overrides, tmp_path):
    """3 shards for 2 ranks x 2 workers: 4 slots, fewer shards than slots, over HTTP."""
    overrides = [o for o in tiny_overrides if not o.startswith(("data.train_shards=", "data.num_workers="))]
    overrides += [f"data.train_shards={http_shards}/demo-index.json", "data.num_workers=2", "train.steps=4",
                  "train.log_samples=true"]
    run_cli(torchrun_args(2) + ["--config", "tiny", "--set", *overrides], timeout=600)
    run = tmp_path / "run"
    assert [s for s, _ in read_scalars(run / "tensorboard")["loss/total"]] == [1, 2, 3, 4]
    seen = [k for r in range(2) for line in (run / "samples" / f"rank{r}.jsonl").read_text().splitlines()
            for k in json.loads(line)["keys"]]
    assert len(seen) == len(set(seen)) == 2 * 4 * 4
