"""A real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts served by the server itself).

The server is the full `mlflow` package, which pins pyarrow<26 while the project pins 26,
so it lives in a venv of its own: `make mlflow-server` creates .venv-mlflow (pinned by
requirements/mlflow-server.txt; .ci/run does it), KTEST_MLFLOW names another `mlflow`
executable. The trainer keeps using the client (mlflow-skinny) of the main venv.

Started in its own process group so that stopping it also stops the workers it
spawns. Its start is slow (imports + database migrations: ~15 s on a free core,
over a minute on a busy 2-core machine), so tests share one per session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 300
ROOT = Path(__file__).resolve().parents[2]
MLFLOW_ENV = "KTEST_MLFLOW"  # an `mlflow` executable whose package can serve (the full `mlflow`)
VENV_MLFLOW = ROOT / ".venv-mlflow" / "bin" / "mlflow"
REQUIRE_ENV = "KTEST_REQUIRE_IMAGES"  # CI (.ci/run), which runs `make mlflow-server`: missing is an error


def executable() -> tuple[str | None, str]:
    """(the `mlflow` that serves, None if there is none here; where it was looked for, for a skip reason)."""
    if os.environ.get(MLFLOW_ENV):
        return os.environ[MLFLOW_ENV], f"{MLFLOW_ENV}={os.environ[MLFLOW_ENV]}"
    if VENV_MLFLOW.exists():
        return str(VENV_MLFLOW), str(VENV_MLFLOW)
    why = f"no mlflow server: {VENV_MLFLOW} is missing (run `make mlflow-server`) and {MLFLOW_ENV} is unset"
    if os.environ.get(REQUIRE_ENV) == "1":
        raise RuntimeError(f"{REQUIRE_ENV}=1, but {why}")
    return None, why


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, mlflow: str):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The server's own venv, not this one: nothing of the test's environment leaks into its imports.
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.log = (root / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                *(mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
                *("--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"),
                *("--artifacts-destination", str(root / "artifacts")),
            ],
            cwd=root,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self) -> MlflowServer:
        import requests

        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"mlflow server did not answer /health within {START_TIMEOUT} s")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this server started, nothing else
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
