import json

import pandas as pd
import pytest

from winnow.pipeline.prompts import PromptFileError, read_prompts


def test_txt_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# my prompts\na red circle\n\n  a blue square  \n")
    prompts = read_prompts(path, negative_prompt="blurry")
    assert [p.text for p in prompts] == ["a red circle", "a blue square"]
    assert all(p.negative == "blurry" and p.meta == {} for p in prompts)


def test_csv_prompt_column_any_case_and_extra_columns(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('PROMPT,Negative_Prompt,style\n"a cat, sitting",ugly,photo\na dog,,sketch\n')
    cat, dog = read_prompts(path, negative_prompt="default")
    assert (cat.text, cat.negative, cat.meta) == ("a cat, sitting", "ugly", {"style": "photo"})
    assert (dog.negative, dog.meta) == ("default", {"style": "sketch"})
    assert json.loads(cat.meta_json) == {"style": "photo"}


def test_jsonl_and_parquet(tmp_path):
    rows = [{"prompt": "a", "tag": 1}, {"prompt": "b", "tag": 2}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    for name in ("p.jsonl", "p.parquet"):
        prompts = read_prompts(tmp_path / name)
        assert [(p.text, p.meta) for p in prompts] == [("a", {"tag": "1"}), ("b", {"tag": "2"})]


def test_partiprompts_loads_with_its_columns(shared):
    path = shared / "data/prompts/PartiPrompts.tsv"
    if not path.exists():
        pytest.skip(f"{path} not present")
    prompts = read_prompts(path)
    assert len(prompts) == 1632
    assert len({p.id for p in prompts}) == 1632
    assert set(prompts[0].meta) == {"Category", "Challenge", "Note"}
    # TSV has no quoting: a prompt that starts with a quote keeps it.
    assert any(p.text.startswith('"G I G G L E"') for p in prompts)


def test_ids_are_stable_and_repeats_get_distinct_ids(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x\ny\nx\n")
    b.write_text("y\nx\n")
    pa_, pb = read_prompts(a), read_prompts(b)
    assert pa_[0].id == pb[1].id and pa_[1].id == pb[0].id
    assert len({p.id for p in pa_}) == 3


def test_limit(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\nb\nc\n")
    assert len(read_prompts(path, limit=2)) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.csv", "text,style\na,b\n", "no 'prompt' column"),
        ("p.csv", "prompt,style\n,b\n", "row 1 has an empty"),
        ("p.jsonl", '{"prompt": "a"}\n{not json\n', "not a readable .jsonl"),
        ("p.yaml", "- a\n", "unsupported prompt file type"),
        ("p.txt", "\n# nothing\n", "no prompts"),
        ("p.parquet", "not parquet", "not a readable .parquet"),
    ],
)
def test_bad_files_give_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message) as err:
        read_prompts(path)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        read_prompts(tmp_path / "nope.txt")
