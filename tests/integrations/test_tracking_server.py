"""The shared tracking server: MLflow's own server with basic auth, started by `make mlflow-server`'s script
on a free loopback port, and `kedro run --env server` against it (real server, real Kedro sessions)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server import get_app_client

from support.project import make_project, nested
from support.servers import free_port, stop_group, wait_answer
from toptune.integrations import tracking
from toptune.integrations.tracking import RUN_HTTP_LIMITS, TrackingServerError

pytestmark = pytest.mark.slow  # a real tracking server, Kedro sessions and subprocesses against it

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mlflow_server.py"
STARTUP_TIMEOUT_S = 180
ADMIN = ("admin", "admin-pass-0123")
ALICE = ("alice", "alice-pass-0123")
BOB = ("bob", "bob-pass-01234")
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
QUICK = {"data.sample_rows": 120, "training.progress": False}


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, **extra}


def as_user(monkeypatch, user: tuple[str, str] | None) -> None:
    for var, value in zip(CREDENTIALS, user or (None, None), strict=True):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server (one worker), its admin, and two users the admin created through MLflow's auth API."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port, log = free_port(), home / "server.log"
    cmd = [sys.executable, str(SCRIPT), "--port", str(port), "--workers", "1", "--home", str(home)]
    env = script_env(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN[1])
    with open(log, "w") as out:
        # Own process group: the script becomes `mlflow server`, which starts uvicorn in a child.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_answer(url + "/health", proc, log, "the tracking server", STARTUP_TIMEOUT_S)
        with pytest.MonkeyPatch.context() as mp:
            as_user(mp, ADMIN)
            users = get_app_client("basic-auth", tracking_uri=url)
            for name, password in (ALICE, BOB):
                users.create_user(name, password)
        yield {"url": url, "home": home}
    finally:
        stop_group(proc, 30)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in RUN_HTTP_LIMITS:  # the hook sets them for the process: restored after each test
        monkeypatch.delenv(var, raising=False)
    yield make_project(tmp_path)
    mlflow.set_tracking_uri(None)  # kedro-mlflow set the server's URI for the whole process


@pytest.fixture
def tiny(tiny_qwen3):
    return {**QUICK, "model.name_or_path": str(tiny_qwen3)}


def run_in_server_env(project: Path, params: dict) -> None:
    """``kedro run --env server --pipeline data`` in this process: a real session, real kedro-mlflow."""
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env="server", runtime_params=nested(params)) as session:
        session.run(pipeline_names=["data"])


def server_runs(url: str) -> list:
    with pytest.MonkeyPatch.context() as mp:
        as_user(mp, ADMIN)
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("toptune")
        return [] if exp is None else client.search_runs([exp.experiment_id])


def test_start_script_refuses_missing_and_shipped_admin_passwords(tmp_path):
    for password, expected in (
        (None, "MLFLOW_AUTH_ADMIN_PASSWORD is not set"),
        ("password1234", "admin password MLflow used to ship"),
        ("short-pw", "MLflow wants at least 12"),
    ):
        env = script_env(**({} if password is None else {"MLFLOW_AUTH_ADMIN_PASSWORD": password}))
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--port", str(free_port()), "--home", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
        assert list(tmp_path.iterdir()) == []  # refused before anything was written or started


def test_run_with_credentials_lands_on_the_server(server, project, tiny, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    as_user(monkeypatch, ALICE)
    run_in_server_env(project, tiny)

    (r,) = server_runs(server["url"])
    assert r.info.status == "FINISHED"
    with pytest.MonkeyPatch.context() as mp:  # alice's run created the experiment: she manages it
        as_user(mp, ADMIN)
        owner = get_app_client("basic-auth", tracking_uri=server["url"]).get_user_permission(
            "alice", "experiment", r.info.experiment_id
        )
    assert owner.permission == "MANAGE"
    assert r.data.params["data.label_column"] == "sentiment" and r.data.params["data.sample_rows"] == "120"
    assert r.data.metrics["data.rows_valid"] == 120
    client = MlflowClient(server["url"])  # alice reads her run back through the server
    assert [a.path for a in client.list_artifacts(r.info.run_id, "data")] == ["data/label_map.json"]
    # The artifact went through the server (proxied) into its own folder; nothing was tracked locally.
    stored = list((server["home"] / "mlflow-server-artifacts").rglob("label_map.json"))
    assert len(stored) == 1 and stored[0].read_bytes() == (project / "data/02_intermediate/label_map.json").read_bytes()
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()
    assert {os.environ[k] for k in RUN_HTTP_LIMITS} == set(RUN_HTTP_LIMITS.values())


@pytest.mark.parametrize(
    "user, cause",
    [
        (None, "the server refused the credentials (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            (ALICE[0], "not-her-password"),
            "the server refused the credentials (401): wrong password for user 'alice', or no such user",
        ),
    ],
)
def test_missing_or_wrong_credentials_are_refused_before_any_node(server, project, tiny, monkeypatch, user, cause):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    as_user(monkeypatch, user)
    before = len(server_runs(server["url"]))
    with pytest.raises(TrackingServerError) as refused:
        run_in_server_env(project, tiny)
    assert refused.value.message == f"MLflow tracking server {server['url']}: {cause}"
    assert len(server_runs(server["url"])) == before
    assert not (project / "data/04_feature/tokenised").exists()  # no node ran


def test_second_user_cannot_write_to_the_first_users_experiment(server, project, tiny, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    as_user(monkeypatch, ALICE)
    client = MlflowClient(server["url"])
    exp = client.get_experiment_by_name("toptune")
    exp_id = exp.experiment_id if exp else client.create_experiment("toptune")  # alice's: she may manage it
    before = len(server_runs(server["url"]))

    as_user(monkeypatch, BOB)
    assert client.get_experiment(exp_id).name == "toptune"  # the server's default permission: READ
    with pytest.raises(MlflowException, match="Permission denied"):
        client.create_run(exp_id)
    with pytest.raises(TrackingServerError) as refused:
        run_in_server_env(project, tiny)
    assert refused.value.message == (
        f"MLflow tracking server {server['url']}: permission denied (403): user 'bob' "
        "may not write to experiment 'toptune' (its creator or an admin can grant EDIT)"
    )
    assert len(server_runs(server["url"])) == before
    assert not (project / "data/04_feature/tokenised").exists()

    as_user(monkeypatch, ALICE)  # the remedy the message names: her EDIT grant lets bob write
    get_app_client("basic-auth", tracking_uri=server["url"]).grant_user_permission("bob", "experiment", exp_id, "EDIT")
    as_user(monkeypatch, BOB)
    client.set_terminated(client.create_run(exp_id).info.run_id)
    assert len(server_runs(server["url"])) == before + 1


def silent_listener() -> tuple[socket.socket, int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, s.getsockname()[1]


def test_unreachable_server_fails_naming_the_uri(project, tiny, monkeypatch):
    as_user(monkeypatch, ALICE)
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    with pytest.raises(TrackingServerError) as refused:
        run_in_server_env(project, tiny)
    assert refused.value.message.startswith(f"MLflow tracking server {closed}: unreachable: connection refused")

    monkeypatch.setattr(tracking, "PROBE_READ_TIMEOUT_S", 1)  # the default 10 s is for a busy server
    listener, port = silent_listener()
    with listener:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        with pytest.raises(TrackingServerError) as refused:
            run_in_server_env(project, tiny)
    assert (
        refused.value.message
        == f"MLflow tracking server http://127.0.0.1:{port}: unreachable: connected, but no answer within 1 s"
    )

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(TrackingServerError, match="MLFLOW_TRACKING_URI is not set"):
        run_in_server_env(project, tiny)


def test_kedro_cli_prints_one_line_without_traceback(project):
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": closed}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kedro"), "run", "--env", "server"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert out.strip().splitlines()[-1].startswith(f"Error: MLflow tracking server {closed}: unreachable"), out[-3000:]


class DyingRelay:
    """A real TCP relay to the server that dies (closes its port and every open connection) once the
    server has answered a request whose bytes hold ``trigger``: a server that goes away mid-run."""

    def __init__(self, upstream_port: int, trigger: bytes):
        self.trigger, self.upstream, self.armed, self.conns = trigger, upstream_port, threading.Event(), []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if to_server and self.trigger in data:
                    self.armed.set()
                elif not to_server and self.armed.is_set():
                    return self.die()
        except OSError:
            pass

    def die(self) -> None:
        for s in [self.listener, *self.conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_server_lost_mid_run_fails_naming_the_uri(server, project, tiny, monkeypatch):
    # The relay dies right after the server stored the first node's artifact (label_map.json, uploaded
    # through the server): the node's next MLflow write finds no server, and the run ends with one line.
    relay = DyingRelay(int(server["url"].rsplit(":", 1)[1]), b"/mlflow-artifacts/artifacts/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", relay.url)
    as_user(monkeypatch, ALICE)
    before = {r.info.run_id for r in server_runs(server["url"])}
    with pytest.raises(TrackingServerError) as lost:
        run_in_server_env(project, tiny)
    assert lost.value.message.startswith(f"MLflow tracking server {relay.url}: unreachable: connection refused")
    (r,) = [r for r in server_runs(server["url"]) if r.info.run_id not in before]
    assert r.info.status == "RUNNING" and "data.rows_valid" not in r.data.metrics  # it died mid-run
    assert (project / "data/02_intermediate/label_map.json").is_file()  # the first node ran
    assert mlflow.active_run() is None


def test_mlflow_gives_up_after_the_bounded_retries(monkeypatch):
    # A server that died mid-run: every connection is accepted and dropped. With the run's limits
    # MLflow's client tries 1 + MLFLOW_HTTP_REQUEST_MAX_RETRIES times, not its default 1 + 7.
    for var, value in RUN_HTTP_LIMITS.items():
        monkeypatch.setenv(var, value)
    accepted = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def drop_all() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.close()

    threading.Thread(target=drop_all, daemon=True).start()
    try:
        with pytest.raises(MlflowException, match="Max retries exceeded"):
            MlflowClient(f"http://127.0.0.1:{listener.getsockname()[1]}").get_experiment_by_name("toptune")
    finally:
        listener.close()
    assert len(accepted) == 1 + int(RUN_HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
