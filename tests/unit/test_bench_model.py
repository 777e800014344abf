"""The benchmark's models: each is trained from its config and served by ONNX Runtime as the fitted model answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.model import BENCH_MODELS, prepare_model, reference_predictions


@pytest.mark.parametrize("name", sorted(BENCH_MODELS))
def test_each_bench_model_is_its_config_and_onnx_answers_as_the_fitted_model(name: str, tmp_path: Path) -> None:
    # Given a benchmark model's name, when prepared, then it is built from its config's entrypoint and params, and
    # in-process ONNX Runtime gives the fitted model's labels and probabilities on the rows every peer is sent.
    model = prepare_model(tmp_path, name)
    expected = {"example": "HistGradientBoostingClassifier", "mlp": "MLPClassifier"}[name]
    assert type(model.estimator.steps[-1][1]).__name__ == expected
    assert model.description.startswith(f"{name}: examples.breast_cancer:")
    labels, probabilities = reference_predictions(model, 100)
    batch = model.batch(100)
    np.testing.assert_array_equal(labels, model.estimator.predict(batch))
    np.testing.assert_allclose(probabilities, model.estimator.predict_proba(batch), atol=1e-6)


def test_an_unknown_bench_model_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark model 'gbm'; choose from \['example', 'mlp'\]"):
        prepare_model(tmp_path, "gbm")
