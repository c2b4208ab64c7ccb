"""Prompt sources for schedules: pools sampled without repeats, templates expanded or sampled.

The catalog is simulated with parts that hold only the column these sources read
(``prompt_id``); the end-to-end tests in test_schedule.py use real runs.
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from winnow.pipeline.config import Config, ConfigError, load_config
from winnow.pipeline.prompt_source import MAX_EXPANSIONS, PromptSourceError, choose_prompts, describe
from winnow.pipeline.prompts import prompt_id, read_prompts

POOL = [f"prompt number {i}" for i in range(20)]


def config(tmp_path: Path, seed: int = 0, run_id: str | None = None, **prompts) -> Config:
    return Config.model_validate(
        {
            "prompts": prompts,
            "generator": {"model": "unused", "negative_prompt": "blurry"},
            "scorers": {},
            "run": {"out": str(tmp_path / "catalog"), "seed": seed, "run_id": run_id},
        }
    )


def record(cfg: Config, run_id: str, ids: list[str]) -> None:
    """What a finished run leaves behind, as far as prompt sources look: its prompt ids."""
    part = Path(cfg.run.out) / "runs" / run_id / "shard-00000.parquet"
    part.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt_id": ids}), part)


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "pool.txt"
    path.write_text("\n".join(POOL) + "\n")
    return path


def test_pool_sample_has_no_repeats_across_runs_until_exhausted(tmp_path, pool_file):
    cfg = config(tmp_path, pool=str(pool_file), sample=6)
    seen: list[str] = []
    for run in range(3):
        chosen = choose_prompts(cfg)
        assert len(chosen.prompts) == 6 and chosen.note is None
        ids = [p.id for p in chosen.prompts]
        assert not set(ids) & set(seen)
        assert all(p.negative == "blurry" for p in chosen.prompts)
        seen += ids
        record(cfg, f"run{run}", ids)
    last = choose_prompts(cfg)  # 2 of 20 left, 6 asked for
    assert len(last.prompts) == 2 and not {p.id for p in last.prompts} & set(seen)
    assert last.note == f"pool {pool_file}: only 2 new prompts were left (prompts.sample is 6); took them all"
    record(cfg, "run3", [p.id for p in last.prompts])
    with pytest.raises(PromptSourceError) as err:
        choose_prompts(cfg)
    want = f"pool {pool_file} is exhausted: all 20 of its prompts are already in the catalog"
    assert str(err.value) == want


def test_pool_sample_is_reproducible_from_seed_and_catalog(tmp_path, pool_file):
    first = [p.id for p in choose_prompts(config(tmp_path, pool=str(pool_file), sample=5)).prompts]
    again = [p.id for p in choose_prompts(config(tmp_path, pool=str(pool_file), sample=5)).prompts]
    other = [p.id for p in choose_prompts(config(tmp_path, 1, pool=str(pool_file), sample=5)).prompts]
    assert first == again and set(first) != set(other)
    # reordering the pool file changes nothing: the ranking is by (seed, prompt id)
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(reversed(POOL)) + "\n")
    reordered = choose_prompts(config(tmp_path, pool=str(shuffled), sample=5)).prompts
    assert {p.id for p in reordered} == set(first)


def test_a_run_does_not_exclude_its_own_prompts_so_it_resumes(tmp_path, pool_file):
    cfg = config(tmp_path, run_id="nightly-1", pool=str(pool_file), sample=4)
    before = [p.id for p in choose_prompts(cfg).prompts]
    record(cfg, "nightly-1", before[:2])  # half of it finished, then it was killed
    assert [p.id for p in choose_prompts(cfg).prompts] == before


def test_pool_reads_any_prompt_file_format(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_text("prompt,style\na cat,photo\na dog,sketch\na bird,photo\n")
    chosen = choose_prompts(config(tmp_path, pool=str(path), sample=2)).prompts
    assert len(chosen) == 2 and all(p.meta["style"] in ("photo", "sketch") for p in chosen)
    assert {p.id for p in chosen} <= {p.id for p in read_prompts(path, "blurry")}


@pytest.fixture
def words(tmp_path: Path) -> Path:
    folder = tmp_path / "words"
    folder.mkdir()
    (folder / "colour.txt").write_text("red\ngreen\nblue\n")
    (folder / "animal.txt").write_text("cat\ndog\n")
    return folder


def test_template_exhaustive_ids_and_meta(tmp_path, words):
    template = "a __colour__ {small|big} __animal__"
    prompts = choose_prompts(config(tmp_path, template=template, wordlists=str(words))).prompts
    assert len(prompts) == 3 * 2 * 2 == len({p.id for p in prompts})
    first = prompts[0]
    assert first.text == "a red small cat"
    assert first.id == prompt_id("a red small cat", "blurry")  # a content hash, as for prompt files
    assert json.loads(first.meta_json) == {
        "template": template,
        "choices": [
            {"at": 3, "list": "colour", "value": "red"},
            {"at": 14, "value": "small"},
            {"at": 26, "list": "animal", "value": "cat"},
        ],
    }


def test_template_list_and_duplicates(tmp_path):
    prompts = choose_prompts(config(tmp_path, template=["a {cat|dog}", "a {dog|bird}"])).prompts
    assert [p.text for p in prompts] == ["a cat", "a dog", "a bird"]  # "a dog" once
    assert prompts[2].meta["template"] == "a {dog|bird}"


def test_template_sample_reproducible_and_new_each_run(tmp_path, words):
    cfg = config(tmp_path, template="a __colour__ {small|big} __animal__", wordlists=str(words), sample=5)
    first = [p.id for p in choose_prompts(cfg).prompts]
    assert len(first) == 5 and first == [p.id for p in choose_prompts(cfg).prompts]
    record(cfg, "run0", first)
    second = choose_prompts(cfg).prompts
    assert len(second) == 5 and not {p.id for p in second} & set(first)
    assert all(p.meta["template"] and p.meta["choices"] for p in second)


def test_huge_template_is_sampled_by_draws(tmp_path):
    digit = "{" + "|".join("0123456789") + "}"
    template = "code " + digit * 6  # 10^6 expansions: above MAX_EXPANSIONS, so drawn, not listed
    cfg = config(tmp_path, template=template, sample=4, seed=7)
    chosen = choose_prompts(cfg).prompts
    assert len({p.id for p in chosen}) == 4
    assert [p.text for p in chosen] == [p.text for p in choose_prompts(cfg).prompts]
    assert all(len(p.meta["choices"]) == 6 for p in chosen)
    with pytest.raises(PromptSourceError, match=f"more than {MAX_EXPANSIONS:,}.*set prompts.sample"):
        choose_prompts(config(tmp_path, template=template))


def test_template_sample_exhaustion(tmp_path):
    cfg = config(tmp_path, template="a {cat|dog}", sample=5)
    chosen = choose_prompts(cfg)
    assert len(chosen.prompts) == 2 and "only 2 new prompts were left" in chosen.note
    record(cfg, "run0", [p.id for p in chosen.prompts])
    with pytest.raises(PromptSourceError, match=r"prompts\.template is exhausted: all 2 of its prompts"):
        choose_prompts(cfg)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({}, "prompts: set exactly one of path, pool, template (got none)"),
        ({"path": "a", "pool": "b", "sample": 2}, "set exactly one of path, pool, template (got path, pool)"),
        ({"pool": "b.txt"}, "prompts: pool needs sample (prompts per run)"),
        ({"pool": "b.txt", "sample": 2, "limit": 3}, "prompts: limit applies to path only (use sample)"),
        ({"path": "a.txt", "sample": 2}, "prompts: sample applies to pool and template only"),
        ({"template": "a {b|c"}, "prompts: '{' is never closed at character 3 of template 'a {b|c'"),
    ],
)
def test_prompt_section_errors(tmp_path, prompts, message):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"prompts": prompts, "generator": {"model": "m"}, "scorers": {}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_describe(tmp_path, pool_file, words):
    cfg = config(tmp_path, pool=str(pool_file), sample=6)
    record(cfg, "run0", [p.id for p in read_prompts(pool_file, "blurry")[:5]])
    assert describe(cfg) == f"pool {pool_file}: 20 prompts, 15 not in the catalog yet, 6 per run"
    tpl = config(tmp_path, template="a __colour__ __animal__", wordlists=str(words), sample=2)
    assert describe(tpl) == "template: 6 expansions, 2 new ones per run"
