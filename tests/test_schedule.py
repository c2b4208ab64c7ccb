"""Scheduled runs: the deployment's flow run twice back to back, `winnow serve`, `winnow deploy`."""

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.cli.deploy._models import PrefectYamlModel
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from winnow.flows.cli import app
from winnow.flows.schedule import FLOW_NAME, build_deployment, scheduled_curate
from winnow.pipeline.config import ConfigError
from winnow.pipeline.prompt_source import PromptSourceError

POOL = ["a red circle", "a blue square", "a cat", "a dog", "a green triangle"]
RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


@pytest.fixture
def pool_config(make_config) -> Path:
    """A schedule-style config: each run samples 2 new prompts of a pool of 5."""
    path = make_config(POOL, run={"candidates": 2})
    data = yaml.safe_load(path.read_text())
    data["prompts"] = {"pool": data["prompts"]["path"], "sample": 2}
    path.write_text(yaml.safe_dump(data))
    return path


def test_scheduled_runs_back_to_back_use_new_prompts_and_partitions(pool_config, prefect_harness):
    # What the deployment runs, called directly rather than waiting for cron.
    first = scheduled_curate(str(pool_config), {"select.keep": 1})
    second = scheduled_curate(str(pool_config), {"select.keep": 1})
    assert RUN_ID.match(first.run_id) and RUN_ID.match(second.run_id)
    assert first.run_id != second.run_id
    root = first.catalog
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted([first.run_id, second.run_id])
    rows = pd.read_parquet(root / "runs")
    by_run = rows.groupby("run_id")["prompt_id"].agg(set)
    assert len(by_run[first.run_id]) == len(by_run[second.run_id]) == 2
    assert not by_run[first.run_id] & by_run[second.run_id]  # the second run used new prompts
    assert set(rows["prompt"]) <= set(POOL)
    assert (rows.groupby("prompt_id")["kept"].sum() == 1).all()  # the override reached the run
    for run_id in (first.run_id, second.run_id):
        assert (root / f"contact-sheet-{run_id}.png").exists()
        assert (root / f"report-{run_id}.html").exists()

    third = scheduled_curate(str(pool_config), {"select.keep": 1})  # 1 of the 5 is left
    assert third.prompts == 1
    assert any("only 1 new prompts were left (prompts.sample is 2)" in note for note in third.notes)
    with pytest.raises(PromptSourceError, match=r"is exhausted: all 5 of its prompts are already in the"):
        scheduled_curate(str(pool_config), {"select.keep": 1})
    assert len(list((root / "runs").iterdir())) == 3  # the refused run wrote nothing


def test_scheduled_runs_name_themselves(pool_config):
    with pytest.raises(ConfigError, match="each scheduled run names itself"):
        build_deployment(pool_config, "0 3 * * *", overrides={"run.run_id": "fixed"})
    with pytest.raises(ConfigError, match=r"cannot schedule .* on cron '0 25 \* \* \*'"):
        build_deployment(pool_config, "0 25 * * *")


def test_serve_builds_and_registers_the_cron_deployment(pool_config, prefect_harness, monkeypatch):
    served = []
    monkeypatch.setattr("prefect.serve", lambda *deployments, **kw: served.extend(deployments))
    result = CliRunner().invoke(
        app,
        ["serve", str(pool_config), "--cron", "0 3 * * *", "--name", "nightly", "--timezone", "Europe/Paris"],
    )
    assert result.exit_code == 0, result.output
    assert f"serving {FLOW_NAME}/nightly on cron '0 3 * * *' (Europe/Paris)" in result.output
    assert "5 prompts, 5 not in the catalog yet, 2 per run" in result.output
    (deployment,) = served
    assert deployment.name == "nightly" and deployment.flow_name == FLOW_NAME
    assert deployment.concurrency_limit == 1  # overlapping runs would pick the same new prompts
    (schedule,) = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 3 * * *", "Europe/Paris")
    assert deployment.parameters == {"config": str(pool_config.resolve()), "overrides": {}}
    assert load_flow_from_entrypoint(deployment.entrypoint) is scheduled_curate

    # Prefect's API accepts it as is: what `serve` registers, and the UI shows.
    deployment_id = deployment.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
        assert client.read_flow(stored.flow_id).name == FLOW_NAME
    assert stored.name == "nightly" and stored.parameters == deployment.parameters
    assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * *"]
    assert stored.global_concurrency_limit.limit == 1


def test_serve_without_a_prefect_server_says_what_to_do(pool_config):
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["serve", str(pool_config), "--cron", "0 3 * * *"])
    assert result.exit_code == 2
    assert "needs a Prefect server" in result.output and "prefect server start" in result.output


def test_deploy_writes_a_prefect_yaml_entry_and_keeps_the_others(pool_config, monkeypatch):
    monkeypatch.chdir(pool_config.parent)
    existing = (
        "# my project\nname: project\nprefect-version: 3.9.1\ndeployments:\n"
        "- name: other  # keep me\n  entrypoint: etl.py:etl\n  parameters: {}\n"
    )
    Path("prefect.yaml").write_text(existing)
    args = ["deploy", pool_config.name, "--cron", "0 3 * * *", "--name", "nightly", "--pool", "gpu-pool"]
    for action in ("added", "updated"):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert f"{action} deployment nightly in prefect.yaml" in result.output

    text = Path("prefect.yaml").read_text()
    assert text.startswith("# my project\n") and "# keep me" in text
    parsed = PrefectYamlModel.model_validate(yaml.safe_load(text))  # Prefect's own schema
    other, nightly = parsed.deployments
    assert other.name == "other" and other.entrypoint == "etl.py:etl"
    assert nightly.name == "nightly" and nightly.work_pool.name == "gpu-pool"
    assert nightly.parameters == {"config": pool_config.name, "overrides": {}}
    assert [(s.cron, s.timezone) for s in nightly.schedules] == [("0 3 * * *", "UTC")]
    assert nightly.concurrency_limit == 1
    step = nightly.pull[0]["prefect.deployments.steps.set_working_directory"]
    assert step == {"directory": str(pool_config.parent)}
    flow = load_flow_from_entrypoint(nightly.entrypoint)
    assert flow is scheduled_curate and flow.validate_parameters(nightly.parameters) == nightly.parameters

    clash = CliRunner().invoke(app, ["deploy", pool_config.name, "--cron", "0 3 * * *", "--name", "other"])
    assert clash.exit_code == 2 and "already exists for another flow" in clash.output
