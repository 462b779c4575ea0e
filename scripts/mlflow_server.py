"""Start MLflow's own tracking server (`make mlflow-server`): sqlite backend, proxied artifacts, basic auth.

Everything it keeps lies under ``--home`` (default: the project root, all of it git-ignored):

    mlflow-server.db            runs, parameters, metrics (the tracking store)
    mlflow-server-auth.db       users and permissions (MLflow's ``basic-auth`` app)
    mlflow-server-artifacts/    artifacts, uploaded through the server (``--serve-artifacts``)
    mlflow-server-auth.ini      the auth app's configuration, rewritten at each start (no password in it)

The admin password comes from ``MLFLOW_AUTH_ADMIN_PASSWORD``, MLflow's own variable: the server reads it
when it creates the admin user, on the first start (an empty ``mlflow-server-auth.db``), and ignores it
once the admin exists (change a password through MLflow's auth API). The admin's name comes from
``MLFLOW_AUTH_ADMIN_USERNAME`` (default ``admin``). Refused here with one line, before anything starts:
no password when the admin must be created, and a password shorter than MLflow's 12 characters or the
admin password older MLflow versions shipped. The script then replaces itself with
``python -m mlflow server`` (the version pinned in pyproject.toml).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PASSWORD_VAR = "MLFLOW_AUTH_ADMIN_PASSWORD"
USERNAME_VAR = "MLFLOW_AUTH_ADMIN_USERNAME"
SHIPPED_ADMIN_PASSWORD = "password1234"  # MLflow's basic_auth.ini up to 3.x (GHSA-gq3w-7jj3-x7gr)
MIN_PASSWORD_LENGTH = 12  # MLflow's policy (mlflow.utils.validation._validate_password)
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default 2)")
    p.add_argument(
        "--home", type=Path, default=ROOT, help="folder for the databases and artifacts (default: the project root)"
    )
    p.add_argument(
        "--default-permission",
        default="READ",
        choices=PERMISSIONS,
        help="what a user may do with another user's experiment (default READ: look, not write)",
    )
    p.add_argument(
        "--auth-cache-seconds",
        type=int,
        default=60,
        help="how long a worker trusts a checked password (default 60; 0: check every request)",
    )
    return p.parse_args(argv)


def password_problem(password: str | None, admin_exists: bool) -> str | None:
    """Why the admin password is refused, in one line; None when it is acceptable."""
    if not password and admin_exists:
        return None  # MLflow would not read it
    if not password:
        return f"{PASSWORD_VAR} is not set: export the admin password (at least {MIN_PASSWORD_LENGTH} characters) first"
    if password == SHIPPED_ADMIN_PASSWORD:
        return f"{PASSWORD_VAR} is the admin password MLflow used to ship ({SHIPPED_ADMIN_PASSWORD!r}): choose your own"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"{PASSWORD_VAR} is {len(password)} characters long: MLflow wants at least {MIN_PASSWORD_LENGTH}"
    return None


def auth_config(home: Path, admin: str, default_permission: str, cache_seconds: int) -> str:
    """The basic-auth app's ini (``MLFLOW_AUTH_CONFIG_PATH``); the password stays in the environment.

    ``auth_cache_ttl_seconds``: MLflow hashes passwords with a deliberately slow function and checks
    every request (a run makes hundreds); with the cache a worker checks a (user, password) once per
    window. The price, as MLflow documents it: after a password change or a user's deletion, the other
    workers accept the old password until the window ends."""
    return (
        f"[mlflow]\ndefault_permission = {default_permission}\n"
        f"database_uri = sqlite:///{home / 'mlflow-server-auth.db'}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {cache_seconds}\n"
    )


def server_command(home: Path, port: int, workers: int) -> list[str]:
    """``mlflow server`` on loopback with a sqlite store, proxied artifacts and the basic-auth app."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow-server.db'}",
        "--serve-artifacts",
        "--artifacts-destination",
        str(home / "mlflow-server-artifacts"),
        "--app-name",
        "basic-auth",
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    home = args.home.resolve()
    problem = password_problem(os.environ.get(PASSWORD_VAR), (home / "mlflow-server-auth.db").is_file())
    if problem:
        sys.exit(f"mlflow-server: {problem}")
    (home / "mlflow-server-artifacts").mkdir(parents=True, exist_ok=True)
    ini = home / "mlflow-server-auth.ini"
    ini.write_text(
        auth_config(home, os.environ.get(USERNAME_VAR) or "admin", args.default_permission, args.auth_cache_seconds)
    )
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    # The auth app signs its sign-up form (CSRF) with this key; one per start is enough for that form.
    env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    # MLflow's GenAI job runner (a runner and 7 huey consumer processes): toptune's runs use none of it.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") or "false"
    print(f"mlflow-server: http://127.0.0.1:{args.port} (data in {home}; stop with Ctrl-C)", flush=True)
    os.execve(sys.executable, server_command(home, args.port, args.workers), env)


if __name__ == "__main__":
    main()
