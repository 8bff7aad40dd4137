"""opt-shards download against a local HTTP server serving a miniature release in the real layout.

The server (a real ThreadingHTTPServer on 127.0.0.1) serves Localized Narratives annotation parts
and voice recordings under the Google Cloud Storage paths, with GCS's ``x-goog-hash: md5=...``
header, and Open Images JPEGs under the S3 paths, without one; it injects faults per path (404,
500 then success, a stall past the client's timeout, a truncated body, a too-short Content-Length,
a redirect) and counts the requests it serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from opt_scale.data_prep.cli import main
from opt_scale.data_prep.download import IMAGE_BYTES_ESTIMATE, RECORDING_BYTES_ESTIMATE, SPLIT_FILES
from opt_scale.data_prep.http_fetch import RateLimiter

from .conftest import BIN, REPO, run_cli

TRAIN_PARTS = SPLIT_FILES["train"]


class Release(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.once: dict[str, list[str]] = {}     # path -> faults served one per request, then none
        self.always: dict[str, str] = {}         # path -> fault served every time
        self.requests: Counter = Counter()       # (method, path) -> count
        self.lock = threading.Lock()
        self.stall_seconds = 1.2
        self.slow_body_seconds = 0.0             # pause half way through each media body
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def fault(self, method: str, path: str) -> str:
        with self.lock:
            self.requests[(method, path)] += 1
            if path in self.always:
                return self.always[path]
            pending = self.once.get(path)
            return pending.pop(0) if pending else ""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        self.serve(body=True)

    def serve(self, body: bool) -> None:
        srv: Release = self.server
        fault = srv.fault(self.command, self.path)
        try:
            if fault in ("404", "500", "503") or self.path not in srv.files:
                self.send_error(int(fault or 404))
                return
            if fault == "redirect":
                self.send_response(302)
                self.send_header("Location", "/moved" + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if fault == "stall":
                time.sleep(srv.stall_seconds)
            data = srv.files[self.path]
            length = {"truncate": len(data) + 100, "short_length": len(data) - 100}.get(fault, len(data))
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            if self.path.startswith("/ln/"):
                md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
            self.end_headers()
            if not body:
                return
            if srv.slow_body_seconds and not self.path.startswith("/ln/annotations/"):
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                time.sleep(srv.slow_body_seconds)
                self.wfile.write(data[len(data) // 2:])
            else:
                self.wfile.write(data)  # all of it, whatever Content-Length said
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) or was killed
            pass


@pytest.fixture(scope="module")
def release(demo_raw):
    """13 narratives (two of one image) over the 10 train parts; 12 images, 13 recordings."""
    (ann,) = (demo_raw / "annotations").glob("*.jsonl")
    records = [json.loads(line) for line in ann.read_text().splitlines()[:12]]
    extra = dict(records[0], annotator_id=records[0]["annotator_id"] + 1000)
    extra["voice_recording"] = records[0]["voice_recording"].replace(".ogg", "_second.ogg")
    records.append(extra)
    files, media = {}, {}
    for i, part in enumerate(TRAIN_PARTS):
        files[f"/ln/annotations/{part}"] = "".join(json.dumps(r) + "\n" for r in records[i::10]).encode()
    for r in records:
        source = r["voice_recording"].replace("_second.ogg", ".ogg")
        media[f"audio/{r['voice_recording']}"] = (demo_raw / "recordings" / source).read_bytes()
        media[f"images/{r['image_id']}.jpg"] = (demo_raw / "images" / f"{r['image_id']}.jpg").read_bytes()
    for rel, data in media.items():
        kind, _, name = rel.partition("/")
        files[f"/ln/voice-recordings/{name}" if kind == "audio" else f"/oi/train/{name}"] = data
    files.update({f"/moved{p}": data for p, data in list(files.items())})
    expected = {**media, **{f"annotations/{p}": files[f"/ln/annotations/{p}"] for p in TRAIN_PARTS}}
    return records, files, expected


@pytest.fixture
def server(release):
    srv = Release(release[1])
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url_path(rel: str) -> str:
    kind, _, name = rel.partition("/")
    return {"audio": "/ln/voice-recordings/", "images": "/oi/train/", "annotations": "/ln/annotations/"}[kind] + name


def download_args(srv: Release, out: Path, *extra: str) -> list[str]:
    return ["download", "--out", str(out), "--annotations", "train",
            "--annotations-url", f"{srv.url}/ln/annotations/", "--recordings-url", f"{srv.url}/ln/voice-recordings/",
            "--images-url", f"{srv.url}/oi/", "--connections", "4", "--retries", "3", "--backoff", "0.05",
            "--timeout", "0.5", "--max-per-second", "0", "--no-progress", *extra]


def files_under(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != "failures.jsonl"}


def media_gets(srv: Release) -> set[str]:
    return {path for (method, path), n in srv.requests.items() if method == "GET" and not path.startswith(
        ("/ln/annotations/", "/moved/"))}


def test_transient_faults_are_retried_lasting_ones_recorded_and_a_rerun_skips_complete_files(
        server, release, tmp_path, capsys):
    _, _, expected = release
    rels = sorted(r for r in expected if not r.startswith("annotations/"))
    images = [r for r in rels if r.startswith("images/")]
    recordings = [r for r in rels if r.startswith("audio/")]
    missing, server_error, stalled, redirected = recordings[0], images[0], images[1], images[2]
    truncated, short_length, flaky_part = recordings[1], recordings[2], f"annotations/{TRAIN_PARTS[3]}"
    server.always.update({url_path(missing): "404", url_path(redirected): "redirect"})
    server.once.update({url_path(server_error): ["500"], url_path(stalled): ["stall"],
                        url_path(truncated): ["truncate"], url_path(short_length): ["short_length"],
                        url_path(flaky_part): ["503"]})
    out = tmp_path / "raw"

    assert main(download_args(server, out)) == 1
    stdout = capsys.readouterr().out
    assert "1 failed" in stdout and "failures.jsonl" in stdout
    assert files_under(out) == {rel: data for rel, data in expected.items() if rel != missing}
    (failure,) = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["path"] == missing and failure["url"] == server.url + url_path(missing)
    assert failure["reason"] == "http_404"
    gets = {path: n for (method, path), n in server.requests.items() if method == "GET"}
    assert gets[url_path(missing)] == 1  # a 404 is final: no retry
    for rel in (server_error, stalled, truncated, short_length, flaky_part):
        assert gets[url_path(rel)] == 2, rel
    assert gets[url_path(redirected)] == 1 and gets["/moved" + url_path(redirected)] == 1

    server.requests.clear()
    assert main(download_args(server, out)) == 1
    assert "already complete" in capsys.readouterr().out
    assert dict(server.requests) == {("GET", url_path(missing)): 1}  # only the file still missing
    assert files_under(out) == {rel: data for rel, data in expected.items() if rel != missing}


def test_a_download_killed_mid_way_resumes_to_the_same_bytes(server, release, tmp_path, capsys):
    _, _, expected = release
    out = tmp_path / "raw"
    server.slow_body_seconds = 0.3
    args = [str(BIN / "opt-shards"), *download_args(server, out)]
    args[args.index("--connections") + 1] = "2"
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline
            done = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".part")]
            if len(done) >= len(TRAIN_PARTS) + 3 and any(out.rglob("*.part")):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    left = files_under(out)
    partial = [rel for rel in left if rel.endswith(".part")]
    complete = {rel: data for rel, data in left.items() if not rel.endswith(".part")}
    assert partial, "the kill should have caught a file mid-way"
    assert all(expected[rel] == data for rel, data in complete.items())  # nothing partial under a final name
    assert len(complete) < len(expected)

    server.slow_body_seconds = 0.0
    server.requests.clear()
    assert main(download_args(server, out)) == 0
    assert files_under(out) == expected  # byte for byte, and no temporary file left
    assert media_gets(server) == {url_path(rel) for rel in expected if rel not in complete}
    assert (out / "failures.jsonl").read_text() == ""


def test_dry_run_counts_narratives_and_sums_head_sizes_without_fetching_media(server, release, tmp_path, capsys):
    records, _, expected = release
    media = {rel: data for rel, data in expected.items() if not rel.startswith("annotations/")}
    out = tmp_path / "raw"
    assert main(download_args(server, out, "--dry-run")) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert lines["narratives"].split()[0] == str(len(records)) == "13"
    assert lines["images"].split()[0] == "12" and lines["recordings"].split()[0] == "13"
    assert lines["bytes to download"].split()[0] == str(sum(len(d) for d in media.values()))
    assert not media_gets(server)
    assert sum(n for (method, _), n in server.requests.items() if method == "HEAD") == len(media)
    assert sorted(files_under(out)) == sorted(r for r in expected if r.startswith("annotations/"))

    server.requests.clear()
    assert main(download_args(server, out, "--dry-run", "--no-head")) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    estimate = 12 * IMAGE_BYTES_ESTIMATE + 13 * RECORDING_BYTES_ESTIMATE
    assert lines["bytes to download"].split()[0] == str(estimate)
    assert not server.requests  # annotations already complete, no HEAD


def test_job_array_shares_partition_the_media_and_build_reads_the_output(server, release, tmp_path, capsys):
    records, _, expected = release
    out = tmp_path / "raw"
    shares = []
    for job in (0, 1):
        server.requests.clear()
        assert main(download_args(server, out, "--num-jobs", "2", "--job-index", str(job))) == 0
        shares.append(media_gets(server))
        assert (out / f"failures-job{job}-of-2.jsonl").read_text() == ""
    capsys.readouterr()
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert shares[0] | shares[1] == {url_path(rel) for rel in expected if not rel.startswith("annotations/")}
    assert files_under(out) == {**expected, **{p.name: b"" for p in out.glob("failures-*")}}

    from opt_scale.demo import RawInput
    raw = RawInput.from_dir(out)  # what DEMO_INPUT reads
    shards = tmp_path / "shards"
    proc = run_cli(["opt-shards", "build", "--annotations", *raw.annotations, "--images", str(raw.images),
                    "--audio", str(raw.audio), "--out", str(shards), "--samples-per-shard", "16",
                    "--image-short-side", "32", "--max-audio-seconds", "2", "--no-progress"], timeout=120)
    index = json.loads((shards / "shard-index.json").read_text())
    assert index["nsamples"] == len(records), proc.stdout
    assert (shards / "failures.jsonl").read_text() == ""


@pytest.mark.parametrize("extra, says", [
    (["--connections", "0"], "--connections"),
    (["--num-jobs", "2", "--job-index", "2"], "--job-index"),
    (["--annotations", "bogus"], "--annotations"),
    (["--annotations", "../escape.jsonl"], "--annotations"),
    (["--images-url", "ftp://example.org/"], "--images-url"),
    (["--retries", "-1"], "--retries"),
])
def test_bad_flags_are_one_line_and_exit_2(extra, says, tmp_path, capsys):
    args = ["download", "--out", str(tmp_path / "raw"), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("opt-shards: error: ") and says in err[0], err
    assert not (tmp_path / "raw").exists()


def test_rate_limiter_spaces_request_starts_over_all_threads():
    limiter = RateLimiter(40.0)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [limiter.wait() for _ in range(5)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 19 / 40 - 0.01  # 20 starts: the first at once, then one per 1/40 s
