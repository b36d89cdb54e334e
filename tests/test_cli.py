"""The ``dtruntime`` CLI run as a subprocess (``python -m dtruntime``).

``checkpoints`` against real files written by CheckpointManager (local and on a moto S3
server), ``status``/``stop``/``checkpoint`` against a contract-shaped observer
(tests/fake_observer.py); the live-job runs are in test_cli_live.py. Every error case
checks the exit code and that stderr is one ``dtruntime: error:`` line, no traceback.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import threading
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from dtruntime import CheckpointManager
from dtruntime.checkpoint import layout

from .cluster import ROOT, free_port
from .fake_observer import FakeObserver, dashboard, worker

TIMEOUT = 60


def dtruntime(*args: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full_env.pop("DTRUNTIME_SECRET", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "dtruntime", *args], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtruntime: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _write_steps(path: str, steps: list[int], **options) -> None:
    with CheckpointManager(path, keep_last_n=10, compression="none", **options) as manager:
        for step in steps:
            manager.save_bytes(os.urandom(2000) + bytes(step), step, epoch=step // 10).result(TIMEOUT)


def _part_path(root: Path, step: int) -> Path:
    [part] = [p for p in (root / layout.step_dir(step)).iterdir() if p.name.startswith("part-")]
    return part


# ------------------------------------------------------------------------- checkpoints, local


def test_checkpoints_lists_and_verify_names_the_corrupted_step(tmp_path):
    _write_steps(str(tmp_path), [10, 20, 30])
    part = _part_path(tmp_path, 20)
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))

    listing = dtruntime("checkpoints", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    assert f"3 committed checkpoint(s) under {tmp_path}" in listing.stdout
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[2:]}
    assert set(rows) == {"10", "20", "30"} and all(row[-1] == "ok" for row in rows.values())
    assert rows["30"][1] == "1" and rows["30"][4] == "none"  # ranks, codec

    verified = dtruntime("checkpoints", str(tmp_path), "--verify")
    assert_one_line_error(verified, 1, "1 committed step(s)", "do not verify: 20")
    states = {line.split()[0]: line.split()[-1] for line in verified.stdout.splitlines()[2:5]}
    assert states == {"10": "verified", "20": "BAD", "30": "verified"}
    assert "step 20: checkpoint step 20 rank 0:" in verified.stdout and "(corrupt)" in verified.stdout

    as_json = dtruntime("checkpoints", str(tmp_path), "--verify", "--json")
    assert as_json.returncode == 1
    doc = json.loads(as_json.stdout)
    assert [(s["step"], s["ok"], s["verified"]) for s in doc["committed"]] == [
        (10, True, True), (20, False, False), (30, True, True)]
    assert doc["committed"][0]["metadata"] == {"epoch": 1} and doc["committed"][0]["stored_bytes"] == 2010


def test_checkpoints_reports_a_damaged_manifest_and_in_flight_steps(tmp_path):
    _write_steps(str(tmp_path), [1, 2])
    manifest = tmp_path / layout.manifest_key(2)
    manifest.write_bytes(manifest.read_bytes()[:-5])  # truncated: the trailer is gone
    stray = tmp_path / layout.step_dir(3) / "part-00000-none-00000000.bin"
    stray.parent.mkdir()
    stray.write_bytes(b"x")

    result = dtruntime("checkpoints", str(tmp_path))
    assert_one_line_error(result, 1, "have unreadable manifests: 2")
    assert "step 2:" in result.stdout and "trailer" in result.stdout
    assert "in flight (no manifest yet, or abandoned): 3 (1 part(s))" in result.stdout


def test_checkpoints_of_an_empty_store_and_usage_errors(tmp_path):
    empty = dtruntime("checkpoints", str(tmp_path))
    assert empty.returncode == 0 and f"no committed checkpoints under {tmp_path}" in empty.stdout
    assert_one_line_error(dtruntime("checkpoints", str(tmp_path / "nope")), 2, "is not a directory")
    assert_one_line_error(dtruntime("checkpoints", str(tmp_path), "-o", "novalue"), 2, "KEY=VALUE")
    assert_one_line_error(dtruntime("checkpoints", "s3://"), 2, "names no bucket")
    missing = dtruntime("checkpoints")
    assert missing.returncode == 2 and "required" in missing.stderr and "Traceback" not in missing.stderr


# ------------------------------------------------------------------------- checkpoints, S3


def test_checkpoints_on_s3_through_a_moto_server(moto_endpoint):
    import fsspec

    options = {"key": "testing", "secret": "testing", "endpoint_url": moto_endpoint}
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    fs.mkdir(bucket)
    url = f"s3://{bucket}/run"
    _write_steps(url, [5, 6], storage_options=options)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}

    ok = dtruntime("checkpoints", url, "--verify", "--endpoint-url", moto_endpoint, env=env)
    assert ok.returncode == 0, ok.stderr
    assert f"2 committed checkpoint(s) under {url}" in ok.stdout
    assert [line.split()[-1] for line in ok.stdout.splitlines()[2:]] == ["verified", "verified"]

    [part] = [k for k in fs.find(f"{bucket}/run/{layout.step_dir(6)}") if "/part-" in k]
    fs.pipe_file(part, b"not the bytes the manifest names")
    bad = dtruntime("checkpoints", url, "--verify", "--endpoint-url", moto_endpoint, env=env)
    assert_one_line_error(bad, 1, "do not verify: 6")
    assert "manifest says 2006 (truncated or corrupt)" in bad.stdout
    # Without --verify the listing reads manifests only: both steps are listed as committed.
    listed = dtruntime("checkpoints", url, "-o", f"endpoint_url={moto_endpoint}", env=env)
    assert listed.returncode == 0 and [line.split()[0] for line in listed.stdout.splitlines()[2:]] == ["5", "6"]


# ------------------------------------------------------------------------- status and run control


def _doc() -> dict:
    workers = [worker(0), worker(1), worker(2, "lost"), worker(3, straggler=True)]
    return dashboard(workers, leader_rank=0, term=5)


def test_status_prints_leader_workers_barriers_and_checkpoints():
    with FakeObserver(_doc()) as server:
        result = dtruntime("status", server.url)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert f"job at {server.url}: answered by worker-0 (rank 0)" in out
        assert "leader worker-0 (rank 0), term 5, world 4, ready" in out
        assert "workers: 3 alive, 1 lost, 1 straggling" in out
        rows = {re.search(r"worker-\d\*?", line).group(0): line for line in out.splitlines() if "127.0.0.1:2965" in line}
        assert set(rows) == {"worker-0*", "worker-1", "worker-2", "worker-3"}
        assert rows["worker-2"].startswith("!") and " lost " in rows["worker-2"]
        assert rows["worker-3"].startswith("!") and " straggling " in rows["worker-3"]
        assert not rows["worker-1"].startswith("!")
        assert "epoch_3 (1.50 s): waiting for worker-2" in out
        assert re.search(r"^\s+100\s+120\.6 KiB\s+310\.5 MiB/s\s+2025-12-01 23:58:20$", out, re.M), out
        assert "checkpoints pending: 120" in out

        as_json = dtruntime("status", server.url.replace("http://", "") + "/", "--json")
        assert as_json.returncode == 0 and json.loads(as_json.stdout) == _doc()


def test_status_watch_refreshes_until_interrupted():
    with FakeObserver(_doc()) as server:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        watch = subprocess.Popen([sys.executable, "-m", "dtruntime", "status", server.url, "--watch", "0.2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            frames = 0
            for line in watch.stdout:  # bounded: the watch prints a frame every 0.2 s
                frames += line.startswith("-- ")
                if frames == 3:
                    break
            watch.send_signal(signal.SIGINT)
            assert watch.wait(timeout=TIMEOUT) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
                watch.wait(timeout=10)
        assert frames == 3


def test_checkpoint_and_stop_post_the_run_controls_with_the_token():
    with FakeObserver(_doc(), token="feedface") as server:
        refused = dtruntime("checkpoint", server.url)
        assert_one_line_error(refused, 1, "answered 401", "missing or wrong bearer token", "--token")
        done = dtruntime("checkpoint", server.url, "--token", "feedface")
        assert done.returncode == 0 and done.stdout.strip() == "checkpoint-now submitted as task t1"
        stopped = dtruntime("stop", server.url, "--token", "feedface")
        assert stopped.returncode == 0 and stopped.stdout.strip() == "stop submitted as task t2"
        level = dtruntime("log-level", server.url, "debug", "--token", "feedface")
        assert level.returncode == 0, level.stderr
        assert [body for _, body, _ in server.posts] == [
            {"name": "checkpoint-now"}, {"name": "checkpoint-now"}, {"name": "stop"},
            {"name": "log-level", "args": {"level": "DEBUG"}}]
        assert server.posts[1][2]["Authorization"] == "Bearer feedface"


def test_unreachable_and_non_dtruntime_urls_exit_3_and_bad_urls_exit_2():
    port = free_port()
    assert_one_line_error(dtruntime("status", f"127.0.0.1:{port}"), 3, "cannot reach", "connection refused")
    assert_one_line_error(dtruntime("stop", f"http://127.0.0.1:{port}"), 3, "cannot reach")
    assert_one_line_error(dtruntime("status", "ftp://127.0.0.1:21"), 2, "not an http(s) URL")
    assert_one_line_error(dtruntime("status", "http://127.0.0.1:99999"), 2, "invalid port")
    with FakeObserver(_doc()) as server:  # no dtruntime API under that path: 404
        assert_one_line_error(dtruntime("status", server.url + "/elsewhere"), 3, "answered 404", "dtruntime peer")
    with _html_server() as url:  # something that answers HTML where JSON belongs
        assert_one_line_error(dtruntime("status", url), 3, "did not answer JSON")
    bad_watch = dtruntime("status", "127.0.0.1:1", "--watch", "-1")
    assert bad_watch.returncode == 2 and "positive number" in bad_watch.stderr
    assert_one_line_error(dtruntime("token"), 2, "DTRUNTIME_SECRET is not set")


@contextlib.contextmanager
def _html_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>not dtruntime</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_status_from_a_follower_says_whom_to_ask_about_its_own_waits():
    doc = _doc()
    doc["barriers"] = [{"barrier_id": "epoch_4", "source": "self", "arrived": ["worker-1"], "waiting_for": [],
                        "age_s": 0.3}]
    with FakeObserver(doc) as server:
        result = dtruntime("status", server.url)
    assert result.returncode == 0, result.stderr
    assert "epoch_4 (300 ms): this worker waits; ask the leader worker-0 whom for" in result.stdout
