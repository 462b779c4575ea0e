"""Fail fast on a remote MLflow tracking server: reachable and accepting the credentials, before any node runs.

MLflow's client retries a failed request 7 times with exponential back-off (minutes), and kedro-mlflow first
talks to the server in its own ``after_context_created``. ``TrackingServerHooks`` probes the server before
that, once, with a short timeout and no retry, and bounds MLflow's retries for the rest of the run, so a
server that dies mid-run fails in seconds too. Every failure, before the run or during it, is one line
naming the URI and the cause.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from urllib.parse import urlsplit, urlunsplit

import click
import requests
from kedro.config import MissingConfigException
from kedro.framework.hooks import hook_impl
from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

PROBE_CONNECT_TIMEOUT_S = 2
"""Seconds the probe waits for a connection (one try, no retry): an absent server fails here."""

PROBE_READ_TIMEOUT_S = 10
"""Seconds the probe waits for the answer: a busy server's first password check can take seconds."""

RUN_HTTP_LIMITS = {
    # MLflow's defaults (7 retries, back-off factor 2, 120 s) keep a failing request going for ~4 minutes;
    # these give up after 3 tries and ~3 s of back-off (urllib3 waits 0 s, then factor × 2 s, + jitter).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",  # seconds to connect or between bytes, not a whole upload's time
}
"""MLflow's HTTP limits for a run on a tracking server; a value already in the environment wins."""

MLFLOW_CONFIG_PATTERNS = ["mlflow*", "mlflow*/**", "**/mlflow*"]
"""Where ``mlflow.yml`` is found, the patterns kedro-mlflow registers (this hook runs before it)."""


class TrackingServerError(click.ClickException):
    """The tracking server cannot take this run: one line naming the URI and the cause.

    A ``ClickException``: ``kedro run`` prints it as one ``Error: …`` line (exit code 1) instead of a
    traceback; a Python caller of ``KedroSession.run`` gets an ordinary exception."""


def redact(uri: str) -> str:
    """``uri`` without a password in it (``http://bob:secret@host`` → ``http://bob:***@host``)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def tracking_uri(mlflow_conf: dict) -> str | None:
    """The URI kedro-mlflow will use: ``server.mlflow_tracking_uri``, else ``MLFLOW_TRACKING_URI``."""
    return (mlflow_conf.get("server") or {}).get("mlflow_tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")


def experiment_name(mlflow_conf: dict, default: str) -> str:
    """The experiment kedro-mlflow will open: ``tracking.experiment.name``, else the package's name."""
    return ((mlflow_conf.get("tracking") or {}).get("experiment") or {}).get("name") or default


def credentials_hint() -> str:
    """Which MLflow credential variables are set, for an authentication failure."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return f"wrong password for user {user!r}, or no such user"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return "the token in MLFLOW_TRACKING_TOKEN was refused"
    return "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


def http_failure(status: int, experiment: str, action: str) -> str:
    """The cause of an HTTP failure status, in words (``action``: what was refused, "read" or "write to")."""
    if status == 401:
        return f"the server refused the credentials (401): {credentials_hint()}"
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "this user")
        return (
            f"permission denied (403): user {user!r} may not {action} experiment {experiment!r} "
            "(its creator or an admin can grant EDIT)"
        )
    return f"answered HTTP {status}"


def unreachable(error: BaseException, timeout: tuple[float, float]) -> str:
    """The cause of a request that got no answer, in words (requests' own message is a paragraph).

    ``timeout``: the request's (connect, read) seconds. With no retry left, urllib3 reports a read timeout
    as a ``ConnectionError`` saying "Read timed out"."""
    text = str(error)
    if isinstance(error, requests.ConnectTimeout):
        return f"unreachable: no connection within {timeout[0]:g} s"
    if "Read timed out" in text or isinstance(error, requests.Timeout):
        return f"unreachable: connected, but no answer within {timeout[1]:g} s"
    if "refused" in text.lower():
        return "unreachable: connection refused (is the server running? `make mlflow-server`)"
    return f"unreachable: {type(error).__name__}"


def probe(uri: str, experiment: str) -> str | None:
    """One authenticated request to the server (``experiments/get-by-name``): None when the run can go on,
    else the cause. Credentials are MLflow's own (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``, token…)."""
    try:
        response = http_request(
            get_default_host_creds(uri),
            "/api/2.0/mlflow/experiments/get-by-name",
            "GET",
            max_retries=0,
            timeout=(PROBE_CONNECT_TIMEOUT_S, PROBE_READ_TIMEOUT_S),
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
    except MlflowException as error:  # MLflow wraps requests' error, which it leaves as the context
        return unreachable(error.__context__ or error, (PROBE_CONNECT_TIMEOUT_S, PROBE_READ_TIMEOUT_S))
    if response.status_code == 200:
        return None
    if response.status_code == 404 and "RESOURCE_DOES_NOT_EXIST" in response.text:
        return None  # kedro-mlflow creates the experiment
    if response.status_code == 404:
        return "answered HTTP 404: not an MLflow tracking server?"
    return http_failure(response.status_code, experiment, "read")


def bound_http_retries() -> None:
    """MLflow's retries and timeout for the rest of the run (``RUN_HTTP_LIMITS``, unless set already)."""
    for name, value in RUN_HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def mlflow_config(context) -> dict:
    """The environment's ``mlflow.yml`` as kedro-mlflow reads it ({} when there is none)."""
    loader = context.config_loader
    loader.config_patterns.setdefault("mlflow", MLFLOW_CONFIG_PATTERNS)
    try:
        return dict(loader["mlflow"])
    except MissingConfigException:
        return {}


def export_named_credentials(context, mlflow_conf: dict) -> None:
    """What kedro-mlflow does a moment later, done before the probe: ``server.credentials`` names an entry
    of credentials.yml whose keys become environment variables (the ``server`` environment names none)."""
    name = (mlflow_conf.get("server") or {}).get("credentials")
    if name:
        try:
            os.environ.update(context.config_loader["credentials"].get(name) or {})
        except MissingConfigException:
            pass


def failure(uri: str, error: MlflowException, experiment: str) -> TrackingServerError:
    """A refusal or a lost connection in a call of MLflow's client, as one line naming the URI."""
    status = error.get_http_status_code()  # MLflow maps a refusal's status to an error code and back
    if isinstance(error.__context__, requests.RequestException):
        seconds = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])  # set by bound_http_retries()
        cause = unreachable(error.__context__, (seconds, seconds))
    elif status in (401, 403):
        cause = http_failure(status, experiment, "write to")
    else:
        cause = error.message.splitlines()[0]
    return TrackingServerError(f"MLflow tracking server {redact(uri)}: {cause}")


def lost_server(error: BaseException | None) -> MlflowException | None:
    """The MLflow error in ``error``'s chain that says the server went away or refused (None if none)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, MlflowException) and (
            isinstance(error.__context__, requests.RequestException) or error.get_http_status_code() in (401, 403)
        ):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class TrackingServerHooks:
    """Checks an http(s) tracking server before kedro-mlflow uses it, and names the URI in every failure.

    The hooks are pluggy wrappers: the code before ``yield`` runs before every plain hook of the same name
    (kedro-mlflow's included: pluggy calls the plugin's hooks, registered after the project's, first), and a
    failure inside kedro-mlflow's hooks comes back through ``yield``.
    """

    def __init__(self) -> None:
        self._uri: str | None = None
        self._experiment = ""

    @hook_impl(wrapper=True)
    def after_context_created(self, context) -> Generator[None, None, None]:
        conf = mlflow_config(context)
        uri = tracking_uri(conf)
        if uri is None:
            raise TrackingServerError(
                f"no MLflow tracking URI: mlflow.yml of environment {context.env!r} has "
                "server.mlflow_tracking_uri: null and MLFLOW_TRACKING_URI is not set"
            )
        self._uri = uri if urlsplit(uri).scheme in ("http", "https") else None
        if self._uri is not None:
            self._experiment = experiment_name(conf, context._package_name or "toptune")
            export_named_credentials(context, conf)
            cause = probe(uri, self._experiment)
            if cause is not None:
                raise TrackingServerError(f"MLflow tracking server {redact(uri)}: {cause}")
            bound_http_retries()
        return (yield from self._naming_the_server())

    @hook_impl(wrapper=True)
    def before_pipeline_run(self) -> Generator[None, None, None]:
        # kedro-mlflow creates the run here: a refusal (403: another user's experiment) names the URI too.
        return (yield from self._naming_the_server())

    @hook_impl(wrapper=True)
    def on_pipeline_error(self, error: Exception) -> Generator[None, None, None]:
        # The server went away mid-run (a node's MLflow dataset, a tag): one line naming it, not a traceback.
        lost = lost_server(error) if self._uri is not None else None
        try:
            result = yield  # kedro-mlflow marks the run FAILED, and fails too when the server is gone
        except MlflowException:
            if lost is None:
                raise
            result = None
        if lost is not None and self._uri is not None:
            raise failure(self._uri, lost, self._experiment) from error
        return result

    def _naming_the_server(self) -> Generator[None, None, None]:
        try:
            return (yield)
        except MlflowException as error:
            if self._uri is None:
                raise
            raise failure(self._uri, error, self._experiment) from error
