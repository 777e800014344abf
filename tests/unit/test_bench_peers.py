"""How the benchmark starts its peers: the access-log switch reaches slipway and both MLflow peers alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import MlflowModels, SlipwayBento, mlflow_onnx_peer, mlflow_sklearn_peer, slipway_peer


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_switch_reaches_every_peer_alike(tmp_path: Path, access_log: bool) -> None:
    bento = SlipwayBento(home=tmp_path / "bentoml", bento_tag="b:1", model_tag="m:1", model_dir=tmp_path / "m")
    models = MlflowModels(tracking_uri="sqlite:///x.db", sklearn_uri="models:/s/1", onnx_uri="models:/o/1")
    slipway = slipway_peer(bento, 1, 2, tmp_path, access_log=access_log)
    logged = slipway_peer(bento, 2, 2, tmp_path, inference_log=tmp_path / "log.db", access_log=access_log)
    onnx = mlflow_onnx_peer(models, 3, 2, tmp_path, access_log=access_log)
    sklearn = mlflow_sklearn_peer(models, 4, 2, tmp_path, access_log=access_log)

    # slipway reads SLIPWAY_ACCESS_LOG (serving.options); `mlflow models serve` runs uvicorn's CLI, which reads
    # UVICORN_ACCESS_LOG. Each peer's notes say which, so the report shows it.
    assert {slipway.env["SLIPWAY_ACCESS_LOG"], logged.env["SLIPWAY_ACCESS_LOG"]} == {"1" if access_log else "0"}
    assert {onnx.env["UVICORN_ACCESS_LOG"], sklearn.env["UVICORN_ACCESS_LOG"]} == {str(access_log).lower()}
    assert f"SLIPWAY_ACCESS_LOG={int(access_log)}" in slipway.notes
    assert f"UVICORN_ACCESS_LOG={str(access_log).lower()}" in onnx.notes
