"""A real Prometheus (Debian's, installed by `make install`) for the tests that read serving metrics through it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.ports import free_port

PROMETHEUS_CONFIG = Path(__file__).resolve().parents[1] / "infra" / "prometheus" / "prometheus.yml"
SERVING_JOB = "slipway-serving"


@contextmanager
def running_prometheus(folder: Path, targets: list[str], interval: str = "1s") -> Iterator[str]:
    """Prometheus with infra/prometheus/prometheus.yml, its serving job's targets replaced by `targets`
    ("host:port") and the intervals shortened; yields its URL once ready, stops it afterwards."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: `make install` installs Debian's prometheus package"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    job = next(j for j in config["scrape_configs"] if j["job_name"] == SERVING_JOB)
    job["static_configs"][0]["targets"] = targets
    config["scrape_configs"] = [job]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = folder / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready after 60 s"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def instant(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query; the test fails naming the query when Prometheus refuses it."""
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10.0)
    payload = response.json()
    assert payload["status"] == "success", f"{expr}: {payload}"
    return list(payload["data"]["result"])
