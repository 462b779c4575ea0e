"""REST: the real ``mlflow models serve --env-manager local`` answers a JSON request on loopback (its
default bind address), validates request parameters, and never answers with a stack trace or a path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.export import log_to_training_run, make_export, raw_rows
from support.servers import free_port, stop_group, wait_answer
from toptune.serve.predict import load_predictor, prepare_rows

pytestmark = pytest.mark.slow  # a real `mlflow models serve` process


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def listen_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on ``port``."""
    import psutil

    return {
        c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def assert_no_trace(body: dict, root: Path) -> None:
    """No stack trace, no source or file path in a response body."""
    text = json.dumps(body)
    assert "stack_trace" not in body and "Traceback" not in text and ".py" not in text, body
    assert str(root) not in text and "site-packages" not in text, body


def test_rest_server_classifies_two_rows(tmp_path, monkeypatch, tiny_qwen3):
    exported = make_export(tmp_path, tiny_qwen3)
    info = log_to_training_run(tmp_path, exported["merged"], monkeypatch)
    rows = raw_rows(2)  # id, product, channel, review and the label column `sentiment` (ignored)
    predictor = load_predictor(exported["merged"], device="cpu")
    expected = predictor.predict(prepare_rows(rows, predictor.serving))["label"].tolist()

    bin_dir = Path(sys.executable).parent
    port, log = free_port(), tmp_path / "serve.log"
    # The server runs `uvicorn` from PATH: put this environment's scripts first.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    # No -h: the server binds its default, loopback only.
    cmd = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        info["model_uri"],
        "--env-manager",
        "local",
        "-p",
        str(port),
    ]
    with open(log, "w") as out:
        # Own process group: the CLI execs uvicorn in a child; stopping the group stops both.
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_answer(url + "/ping", proc, log, "mlflow models serve")
        status, body = post(
            url + "/invocations", {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
        )
        assert status == 200, body
        preds = body["predictions"]
        assert [p["id"] for p in preds] == ["r00000", "r00001"]
        assert [p["label"] for p in preds] == expected
        assert all(abs(sum(v for k, v in p.items() if k.startswith("prob_")) - 1) < 1e-4 for p in preds)
        # A bad row is the client's fault: 400 naming the row and column (default export.bad_rows=error).
        bad = rows.assign(review=["", "Fine."])
        status, body = post(
            url + "/invocations", {"dataframe_split": json.loads(bad.to_json(orient="split", index=False))}
        )
        assert status == 400 and "column 'review': empty text" in body.get("message", ""), body
        status, body = post(
            url + "/invocations",
            {"dataframe_split": json.loads(bad.to_json(orient="split", index=False)), "params": {"bad_rows": "drop"}},
        )
        assert status == 200 and [p["id"] for p in body["predictions"]] == ["r00001"], body
        assert listen_addresses(port) == {"127.0.0.1"}
        split = json.loads(rows.to_json(orient="split", index=False))
        for params, name in (
            ({"batch_size": -1}, "params.batch_size=-1"),
            ({"batch_size": 0}, "params.batch_size=0"),
            ({"bad_rows": "skip"}, "params.bad_rows='skip'"),
        ):
            status, body = post(url + "/invocations", {"dataframe_split": split, "params": params})
            assert status == 400 and name in body.get("message", ""), (params, body)
            assert_no_trace(body, tmp_path)
        status, body = post(url + "/invocations", {"dataframe_split": {"columns": ["id"], "data": "not rows"}})
        assert status == 400, body
        assert_no_trace(body, tmp_path)
    finally:
        stop_group(proc, 20)
