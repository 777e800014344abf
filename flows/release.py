"""The release flow: register -> convert -> optimize -> validate -> build Bento -> promote. Wiring only."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.context import actor, open_context
from tasks import convert, optimize, package, registry, validate
from tasks.errors import GateFailed, SlipwayError
from tasks.train import data_fingerprint, load_training_data, source_commit
from tasks.types import ReleaseSummary


@flow(name="release", log_prints=True)
def release(
    run_id: str | None = None,
    model_uri: str | None = None,
    env: str | None = None,
    config_file: str | None = None,
) -> ReleaseSummary:
    """Take a logged model through every release stage; raise GateFailed (no alias moves) if a gate fails."""
    log = get_run_logger()
    ctx = open_context(env, config_file)
    s, reg = ctx.settings, ctx.registry
    name = s.model.name

    model_uri, run_id = registry.resolve_model_uri(reg, run_id, model_uri)
    holdout = registry.load_holdout(reg, run_id)
    if holdout is None:
        log.warning("run %s has no holdout artifact; evaluating on the configured data source instead", run_id)
        holdout = load_training_data(s.data)
    registry.check_signature(reg, model_uri, holdout, s.data.target)
    native = registry.load_native_model(reg, model_uri)
    schema = convert.infer_schema(holdout, s.data.target, s.model.task, getattr(native, "classes_", None))

    lineage = {
        "run_id": run_id,
        "model_uri": model_uri,
        "holdout_fingerprint": data_fingerprint(holdout),
        "config_hash": ctx.loaded.settings_hash(),
        "git_commit": source_commit(ctx.loaded.config_dir) or "none",
    }
    # One registry change of this model at a time: a second release waits here, then reads what this one left.
    with registry.model_lock(s.home / "locks", name, on_wait=log.info):
        version = registry.register_version(reg, model_uri, name, lineage)
        log.info("registered %s v%s from run %s", name, version.version, run_id)
        workdir = s.home / "releases" / f"{name}-v{version.version}"

        try:
            onnx_model = convert.to_onnx(native, schema, workdir / "model.onnx", s.convert.opset, s.convert.ml_opset)
            native_predictions = optimize.native_predictions(native, holdout, schema)
            candidates = optimize.build(onnx_model, workdir, s.optimize.quantize)
            reports = [*candidates.skipped] + [
                optimize.evaluate(c, onnx_model, holdout, native_predictions, s.gates.parity, s.optimize)
                for c in candidates.built
            ]
            chosen = optimize.choose_candidate(reports)
            registry.tag_version(reg, name, version.version, optimize.optimization_tags(chosen))

            checks = []
            if s.gates.data.enabled:
                checks.append(validate.validate_data(validate.load_suite(ctx.loaded.expectations_path()), holdout))
            checks.append(validate.parity_check(chosen.chosen_parity, chosen.chosen.name))
            champion = registry.load_champion(reg, name, s.promotion.champion_alias)
            checks.append(validate.validate_quality(native, champion, holdout, schema, s.gates.quality))
            checks.append(validate.latency_check(chosen.chosen_timing, s.gates.latency))
            report = validate.gate_report(name, version.version, checks)
            report_path = validate.write_report(report, s.reports_dir)
            registry.record_gate_report(reg, version, report, report_path)
            create_markdown_artifact(
                key=f"gate-report-{_slug(name)}",
                markdown=report.to_markdown(),
                description=f"{name} v{version.version}",
            )
            if not report.passed:
                raise GateFailed(report, str(report_path))

            model_tag = package.save_bento_model(
                chosen.chosen.path,
                schema,
                onnx_model.label_output,
                onnx_model.score_output,
                name,
                version.version,
                s.bentoml_home,
            )
            bento = package.build_bento(model_tag, _slug(name), s.bentoml_home)
            registry.record_release(reg, version, chosen.chosen.path, bento)
        except SlipwayError as exc:
            registry.tag_version(
                reg, name, version.version, {registry.TAG_STATUS: "rejected", "slipway.error": str(exc)[:4000]}
            )
            raise

        decision = registry.decide_promotion(
            report, s.promotion.policy, s.promotion.champion_alias, s.promotion.challenger_alias
        )
        targets = {s.promotion.challenger_alias: version.version} if decision.move_challenger else {}
        if decision.move_champion:
            targets[s.promotion.champion_alias] = version.version
        if targets:
            registry.move_aliases(reg, name, targets, "release", actor(), decision.reason)
        log.info("promotion: %s", decision.reason)
        if decision.move_champion and s.serving.deploy_on_release:
            from flows.deploy import deploy, deploy_remote

            serve = deploy_remote if s.serving.target == "remote" else deploy
            serve(version=version.version, env=env, config_file=config_file)

    return ReleaseSummary(
        model_name=name,
        version=version.version,
        run_id=run_id,
        tracking_uri=s.tracking_uri,
        onnx_variant=chosen.chosen.name,
        onnx_size_bytes=chosen.chosen.size_bytes,
        speedup=chosen.speedup,
        gate_report_path=report_path,
        gate_passed=report.passed,
        checks=report.checks,
        bento_tag=bento.tag,
        aliases=reg.aliases(name),
        promotion=decision,
    )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
