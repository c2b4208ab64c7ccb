import pytest
import yaml
from typer.testing import CliRunner

from winnow.flows.cli import app
from winnow.pipeline.config import ConfigError, load_config


def edit(path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_config_and_overrides(make_config):
    config = load_config(make_config(), {"run.candidates": 5, "select.keep": None})
    assert config.run.candidates == 5 and config.select.keep == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["run"].update(candidtes=3), "unknown key 'run.candidtes'"),
        (lambda d: d["generator"].update(steps="many"), "generator.steps: .*got 'many'"),
        (lambda d: d["generator"].pop("model"), "missing key 'generator.model'"),
        (lambda d: d["scorers"].update(sharpness={}), "unknown scorer 'sharpness'"),
        (lambda d: d["select"].update(floors={"aesthtic": 5}), "aesthtic"),
        (lambda d: d["scorers"]["clip_score"].update(clip=3), "scorers.clip_score"),
        (lambda d: d["run"].update(run_id="../escape"), "run.run_id"),
        (lambda d: d["run"].update(run_id=".."), "run.run_id"),  # would be runs/.. on disk
    ],
)
def test_invalid_configs_give_one_line(make_config, change, message):
    path = edit(make_config(), change)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("prompts: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompts", "nowhere.txt"], "prompt file not found"),
        (["-n", "0"], "run.candidates"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(make_config, args, message, tmp_path):
    out = tmp_path / "never-written"
    result = CliRunner().invoke(app, ["run", str(make_config()), "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (out / "runs").exists()


def test_cli_missing_model(make_config, tmp_path):
    path = edit(make_config(), lambda d: d["generator"].update(model="someone/not-here"))
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "error: model 'someone/not-here' is not on this machine" in result.output
