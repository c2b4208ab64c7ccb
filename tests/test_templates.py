"""Template parsing and expansion: counts, order, choices, escapes, word lists, bad input."""

import itertools

import pytest

from winnow.pipeline.templates import Choice, TemplateError, expand, parse, resolve


def texts(template: str, folder=None) -> list[str]:
    node = resolve(parse(template), folder)
    return [expand(node, i)[0] for i in range(node.size)]


def test_alternatives_expand_in_product_order():
    got = texts("a {red|green|blue} {cat|dog}")
    want = [f"a {c} {a}" for c, a in itertools.product(["red", "green", "blue"], ["cat", "dog"])]
    assert got == want


def test_nesting_empty_options_and_whitespace():
    assert texts("{a {big|small} cat|a dog}") == ["a big cat", "a small cat", "a dog"]
    # an empty option leaves no double space and no trailing space
    assert texts("a {|very }big {cat|} ") == ["a big cat", "a big", "a very big cat", "a very big"]
    assert texts("{}x") == ["x"]


def test_escapes_are_literal():
    assert texts(r"\{a\|b\} \\ \_\_x\_\_") == [r"{a|b} \ __x__"]


def test_word_lists(tmp_path):
    (tmp_path / "colour.txt").write_text("# comment\nred\n\n  green  \nred\n")
    (tmp_path / "my_animal-2.txt").write_text("cat\ndog\n")
    got = texts("a __colour__ {__my_animal-2__|bird}", tmp_path)
    assert got == ["a red cat", "a red dog", "a red bird", "a green cat", "a green dog", "a green bird"]


def test_choices_record_each_slot(tmp_path):
    (tmp_path / "shape.txt").write_text("circle\nsquare\n")
    node = resolve(parse("a {big {red|blue}|small} __shape__"), tmp_path)
    assert node.size == 6
    text, choices = expand(node, 3)  # (big blue) x (square)
    assert text == "a big blue square"
    assert choices == (
        Choice(3, "big blue"),  # the outer braces start at character 3
        Choice(8, "blue"),
        Choice(26, "square", "shape"),
    )
    assert choices[2].as_meta() == {"at": 26, "value": "square", "list": "shape"}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("a {red|green", "'{' is never closed at character 3"),
        ("a {b {c|d} e", "'{' is never closed at character 3"),
        ("a red} cat", "'}' outside braces (no matching '{') at character 6"),
        ("red|green", "'|' outside braces (write {a|b}, or \\| for a literal bar) at character 4"),
        ("a __colour", "'__' starts a word-list name that has no closing '__' at character 3"),
        ("a __../etc/passwd__", "word-list name '../etc/passwd' is not letters, digits, '_' or '-'"),
        ("a __a b__", "word-list name 'a b' is not"),
        ("trailing \\", "'\\' with nothing after it"),
    ],
)
def test_malformed_templates_give_one_line_with_the_position(template, message):
    with pytest.raises(TemplateError) as err:
        parse(template)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_word_list_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(TemplateError, match=r"unknown word list __nope__: no file .*nope\.txt"):
        resolve(parse("a __nope__"), tmp_path)
    with pytest.raises(TemplateError, match="has no entries"):
        resolve(parse("a __empty__"), tmp_path)
    with pytest.raises(TemplateError, match=r"prompts\.wordlists .* is not set"):
        resolve(parse("a __colour__"), None)
