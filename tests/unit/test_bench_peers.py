"""How the benchmark starts and feeds its peers: the access-log switch reaches slipway and both MLflow peers
alike; slipway's two body forms carry the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import (
    MlflowModels,
    SlipwayBento,
    asgi_limit_peer,
    mlflow_onnx_peer,
    mlflow_sklearn_peer,
    slipway_body,
    slipway_peer,
)


@pytest.mark.parametrize("access_log", [True, False])
def test_the_access_log_switch_reaches_every_peer_alike(tmp_path: Path, access_log: bool) -> None:
    bento = SlipwayBento(home=tmp_path / "bentoml", bento_tag="b:1", model_tag="m:1", model_dir=tmp_path / "m")
    models = MlflowModels(tracking_uri="sqlite:///x.db", sklearn_uri="models:/s/1", onnx_uri="models:/o/1")
    slipway = slipway_peer(bento, 1, 2, tmp_path, access_log=access_log)
    logged = slipway_peer(
        bento, 2, 2, tmp_path, inference_log=f"sqlite:///{tmp_path / 'log.db'}", access_log=access_log
    )
    onnx = mlflow_onnx_peer(models, 3, 2, tmp_path, access_log=access_log)
    sklearn = mlflow_sklearn_peer(models, 4, 2, tmp_path, access_log=access_log)

    # slipway reads SLIPWAY_ACCESS_LOG (serving.options); `mlflow models serve` runs uvicorn's CLI, which reads
    # UVICORN_ACCESS_LOG. Each peer's notes say which, so the report shows it.
    assert {slipway.env["SLIPWAY_ACCESS_LOG"], logged.env["SLIPWAY_ACCESS_LOG"]} == {"1" if access_log else "0"}
    assert {onnx.env["UVICORN_ACCESS_LOG"], sklearn.env["UVICORN_ACCESS_LOG"]} == {str(access_log).lower()}
    assert f"SLIPWAY_ACCESS_LOG={int(access_log)}" in slipway.notes
    assert f"UVICORN_ACCESS_LOG={str(access_log).lower()}" in onnx.notes


def test_a_postgresql_log_reaches_the_server_and_its_password_stays_out_of_the_notes(tmp_path: Path) -> None:
    bento = SlipwayBento(home=tmp_path / "bentoml", bento_tag="b:1", model_tag="m:1", model_dir=tmp_path / "m")
    url = "postgresql+psycopg2://bench:s3cret@127.0.0.1:5432/slipway_bench_1"
    logged = slipway_peer(bento, 2, 2, tmp_path, inference_log=url)
    assert logged.env["SLIPWAY_INFERENCE_LOG_URL"] == url
    assert "s3cret" not in " ".join(logged.notes) and "bench:***@127.0.0.1" in " ".join(logged.notes)


def test_the_benchmark_gives_the_log_a_database_of_its_own_and_drops_it(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    from bench.serving import inference_log_store
    from tests.postgres import POSTGRES_URL, admin_connection

    admin_connection().close()  # fails naming the server when there is none
    with inference_log_store(POSTGRES_URL, tmp_path) as url:
        engine = create_engine(url)
        with engine.connect() as connection:
            name = connection.execute(text("SELECT current_database()")).scalar_one()
        engine.dispose()
        assert name.startswith("slipway_bench_")
    connection = admin_connection()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,))
            assert cursor.fetchone()[0] == 0
    finally:
        connection.close()
    with inference_log_store(None, tmp_path) as default:
        assert default == f"sqlite:///{tmp_path / 'inference_log.db'}"


@pytest.mark.parametrize("rows", [1, 3])
def test_slipways_body_forms_carry_the_same_rows_through_its_request_model(tmp_path: Path, rows: int) -> None:
    from serving.schema import request_columns, request_model
    from serving.spec import ServingSpec

    features = [{"name": "mean radius", "dtype": "float"}, {"name": "size_band", "dtype": "string"}]
    spec = ServingSpec.model_validate(
        {"model_name": "m", "model_version": "1", "task": "regression", "features": features}
        | {"label_output": "y", "score_output": "y", "sha256": "0" * 64}
    )
    records = [{"mean radius": 1.5 + i, "size_band": f"b{i}"} for i in range(rows)]
    request_type = request_model(spec, max_rows=10)
    bodies = {form: slipway_body(form)(records) for form in ("records", "columns", "auto")}
    assert next(iter(bodies["columns"])) == "columns" and next(iter(bodies["records"])) == "records"
    # auto: records for one row, columns for a batch (SLIPWAY_AUTO_FORMS)
    assert next(iter(bodies["auto"])) == ("records" if rows == 1 else "columns")
    as_columns = [
        {k: list(v) for k, v in request_columns(request_type.model_validate(body)).items()} for body in bodies.values()
    ]
    assert (
        as_columns == [{"mean radius": [1.5 + i for i in range(rows)], "size_band": [f"b{i}" for i in range(rows)]}] * 3
    )
    # the ASGI limit is sent what slipway is sent
    bento = SlipwayBento(home=tmp_path / "bentoml", bento_tag="b:1", model_tag="m:1", model_dir=tmp_path / "m")
    limit = asgi_limit_peer(tmp_path / "m", 1, 2, tmp_path, "columns")
    assert limit.body(records) == slipway_peer(bento, 2, 2, tmp_path, form="columns").body(records)
    with pytest.raises(ValueError, match="unknown body form 'split'"):
        slipway_body("split")
