"""A registered version is an MLflow pyfunc model: MLflow's own loader (in a fresh process) and
`mlflow models serve` give the actions `Policy.act` gives, on a real MLflow and a real SB3 model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rl_lifecycle.models.checks import PARTITION_TAG
from rl_lifecycle.models.policy import Policy, load_registered_policy
from rl_lifecycle.models.pyfunc import MODEL_NAME, MODEL_REQUIREMENTS, POSITION_COLUMN, TARGET_COLUMN
from rl_lifecycle.models.service import train_challenger, training_data
from rl_lifecycle.models.spec import load_model_spec
from rl_lifecycle.models.tracking import CHAMPION, LINEAGE_TAGS, mlflow_server_command, registered_model_name
from rl_lifecycle_tests.test_models import WINDOW, market, registry, tiny_spec  # noqa: F401 (fixtures)

LOAD_AND_PREDICT = """
import json, sys
import mlflow
import pandas as pd

payload = json.load(open(sys.argv[2]))
frame = pd.DataFrame(payload["data"], columns=payload["columns"]).astype({"position": "int64"})
model = mlflow.pyfunc.load_model(sys.argv[1])
print(json.dumps({"actions": model.predict(frame)["target_position"].tolist(),
                  "inputs": model.metadata.get_input_schema().input_names()}))
"""


def _champion(conn, registry, market, tmp_path) -> tuple[Policy, np.ndarray, np.ndarray, dict]:  # noqa: F811
    """A trained, registered version holding `champion`; rows to act on (training vectors and noisy ones)
    with positions held; and the version's lineage tags as registered."""
    trained = train_challenger(conn, registry, market, WINDOW, load_model_spec(str(tiny_spec(tmp_path))))
    registry.set_alias(market, CHAMPION, trained.version.version)
    data = training_data(conn, market, WINDOW)
    rng = np.random.default_rng(3)
    real = data.content.values[:150]
    noisy = real + rng.normal(0.0, 3.0, real.shape) * real.std(axis=0)
    vectors = np.concatenate([real, noisy])
    assert np.isfinite(vectors).all()
    policy = load_registered_policy(registry, market, CHAMPION)
    positions = rng.choice(np.asarray(policy.positions, dtype=np.int8), len(vectors))
    return policy, vectors, positions, trained.version.tags


def _payload(policy: Policy, vectors: np.ndarray, positions: np.ndarray) -> dict:
    """`dataframe_split` JSON (json.dumps writes floats exactly: the same float64 arrive)."""
    rows = [[*map(float, row), int(p)] for row, p in zip(vectors, positions, strict=True)]
    return {"columns": [*policy.feature_names, POSITION_COLUMN], "data": rows}


def test_mlflow_loads_a_registered_champion_in_a_fresh_process_to_the_same_actions(conn, market, registry, tmp_path):  # noqa: F811
    policy, vectors, positions, tags = _champion(conn, registry, market, tmp_path)
    expected = policy.act(vectors, positions, fingerprint=policy.fingerprint).tolist()
    assert len(set(expected)) > 1  # the rows make the policy take more than one position

    # MLflow's loader, in a fresh interpreter that knows only the tracking URI
    payload = tmp_path / "rows.json"
    payload.write_text(json.dumps(_payload(policy, vectors, positions)))
    uri = f"models:/{registered_model_name(market)}@{CHAMPION}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, uri, str(payload)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["actions"] == expected
    assert out["inputs"] == [*policy.feature_names, POSITION_COLUMN]  # the signature names the feature order

    # the lineage tags are those `train_challenger` always wrote: the pyfunc model changes none of them
    version = registry.version(market, CHAMPION)
    assert set(version.tags) == {*LINEAGE_TAGS, PARTITION_TAG} and version.tags == tags
    assert version.source.startswith("models:/m-")  # created from the logged model

    # what MLflow stored with the model: requirements pinned from requirements.lock, an input example
    import mlflow

    logged = registry.client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == version.run_id and logged.name == MODEL_NAME
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=logged.artifact_location, dst_path=str(tmp_path / "model")))
    lock = {line.split("==")[0].lower().replace("_", "-"): line.strip()
            for line in (Path(__file__).parents[1] / "requirements.lock").read_text().splitlines() if "==" in line}
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements == [lock[name.lower().replace("_", "-")] for name in MODEL_REQUIREMENTS]
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    assert example["columns"] == [*policy.feature_names, POSITION_COLUMN]
    assert (local / "artifacts" / "policy" / "model.zip").exists() and (local / "artifacts" / "policy" / "policy.json").exists()

    # the run keeps its raw policy directory too (what older readers and the MLflow UI's run page show)
    names = {a.path for a in registry.client.list_artifacts(version.run_id, "policy")}
    assert names == {"policy/model.zip", "policy/policy.json"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_the_champions_actions(conn, market, registry, tmp_path):  # noqa: F811
    """Served as the docs show it: `rl-lifecycle mlflow ui` (`make mlflow`)'s tracking server, then
    `mlflow models serve` of the champion with that server as its tracking URI."""
    policy, vectors, positions, _ = _champion(conn, registry, market, tmp_path)
    expected = policy.act(vectors, positions, fingerprint=policy.fingerprint).tolist()
    tracking_port, serve_port = _free_port(), _free_port()
    argv, tracking_env = mlflow_server_command(registry, "127.0.0.1", tracking_port)
    # as in an activated venv: `mlflow models serve` runs `uvicorn` from PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{tracking_port}", "PATH": path}
    tracking_log, serve_log = tmp_path / "tracking.log", tmp_path / "serve.log"
    with tracking_log.open("w") as out:
        tracking = subprocess.Popen(argv, env={**tracking_env, "PATH": path}, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    try:
        _wait_until_up(f"http://127.0.0.1:{tracking_port}/health", tracking, tracking_log)
        with serve_log.open("w") as out:
            server = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "models", "serve",
                 "-m", f"models:/{registered_model_name(market)}@{CHAMPION}",
                 "--env-manager", "local", "-p", str(serve_port), "-h", "127.0.0.1", "-w", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            _wait_until_up(f"http://127.0.0.1:{serve_port}/ping", server, serve_log)
            body = json.dumps({"dataframe_split": _payload(policy, vectors, positions)}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{serve_port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                predictions = json.loads(answer.read())["predictions"]
            assert [row[TARGET_COLUMN] for row in predictions] == expected
        finally:
            _stop(server)
    finally:
        _stop(tracking)
