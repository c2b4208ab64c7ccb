from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from winnow.flows.cli import app
from winnow.pipeline.config import Config, ConfigError, load_config
from winnow.pipeline.score_config import load_score_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


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
        (lambda d: d["scorers"]["clip_score"].update(layer=3), "unknown key 'scorers.clip_score.layer'"),
        (lambda d: d["scorers"]["clip_score"].update(clip="big"), "clip_score.clip: CLIP 'big' is not"),
        (lambda d: d.update(clip={"big": {"model": "ViT-Nope"}}), "clip.big: unknown open_clip architecture"),
        (lambda d: d.update(clip=["ViT-B-32"]), "clip: expected a mapping"),
        (lambda d: d["scorers"]["aesthetic"].update(head="https://x.org/h.pth"), "aesthetic.head: .*sha256"),
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


def named(data):
    """The config with its scorers' (equal) inline CLIP specs moved into the clip section."""
    spec = data["scorers"]["clip_score"]["clip"]
    data["clip"] = {"small": spec}
    for params in data["scorers"].values():
        params["clip"] = "small"


def test_named_clip_is_the_same_run_as_the_inline_spec(make_config, tmp_path):
    inline = load_config(make_config())
    config = load_config(edit(make_config(), named))
    assert config.result_hash() == inline.result_hash()  # the run id hashes the scorers as given
    clip_score, aesthetic = config.scorers["clip_score"], config.scorers["aesthetic"]
    assert clip_score.clip is aesthetic.clip is config.clip["small"]  # one model, one embedding
    assert clip_score == inline.scorers["clip_score"] and aesthetic == inline.scorers["aesthetic"]
    # A dumped config (a run's manifest) validates back to the same run.
    dumped = config.model_dump(mode="json", exclude={"runner"})  # its ray-only keys: not here
    assert Config.model_validate(dumped).result_hash() == config.result_hash()
    # winnow score reads the sections with the same validation.
    scoring = load_score_config(edit(make_config(), named))
    assert scoring.scorers == config.scorers and scoring.clip == config.clip


def test_scorer_defaults_are_not_hashed(make_config):
    """A parameter left unset is hashed as if it did not exist, so adding a parameter with a
    default to a scorer keeps existing run ids (``pretrained`` stands in for such a parameter)."""
    shapes = {"model": "bundled:shapes-clip"}
    config = load_config(edit(make_config(), lambda d: d["scorers"]["clip_score"].update(clip=shapes)))
    assert config.scorers["clip_score"].clip.pretrained is None
    assert config.model_dump(mode="json")["scorers"]["clip_score"] == {"clip": shapes}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate_and_name_public_weights(path):
    assert "shared" not in path.read_text()  # the test artifacts beside the checkout are no user's
    config = load_config(path)
    clips = {id(params.clip) for params in config.scorers.values() if hasattr(params, "clip")}
    assert len(clips) == 1 and config.clip  # one named CLIP, shared by every open_clip scorer
