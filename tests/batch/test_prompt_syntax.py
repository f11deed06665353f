"""A1111 prompt syntax: the parse table follows A1111's `parse_prompt_attention` (its doctests
first, then its rules case by case); weights are written as the products A1111 computes, in
the order it multiplies them, so equality is exact."""

from __future__ import annotations

import pytest

from sdfleet.batch.prompt_syntax import (
    Fragment,
    NetworkTag,
    PromptSyntaxError,
    extract_extra_networks,
    parse_prompt,
    parse_prompt_attention,
    prompt_problems,
)

R, S = 1.1, 1 / 1.1  # A1111's round and square multipliers
B = ("<BREAK>",)  # a chunk break in the expected lists

PARSE_TABLE: list[tuple[str, list]] = [
    # A1111's own doctests
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * R * R),
            (" ", R),
            ("on", R * S),
            (" a ", R),
            ("hill", 0.5 * R),
            (", sun, ", R),
            ("sky", R * R * R * R),
            (".", R),
        ],
    ),
    # nesting and explicit weights
    ("((word))", [("word", R * R)]),
    ("(((word)))", [("word", R * R * R)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(word: 1.3 )", [("word", 1.3)]),
    ("(word:.5)", [("word", 0.5)]),
    ("(word:+2)", [("word", 2.0)]),
    ("(word:-1)", [("word", -1.0)]),
    ("(word:0)", [("word", 0.0)]),
    ("((word:1.5))", [("word", 1.5 * R)]),
    ("((word):1.5)", [("word", R * 1.5)]),
    ("(a (b) c)", [("a ", R), ("b", R * R), (" c", R)]),
    ("(a, b:1.2), c", [("a, b", 1.2), (", c", 1.0)]),
    # square brackets
    ("[word]", [("word", S)]),
    ("[[word]]", [("word", S * S)]),
    ("[(word)]", [("word", R * S)]),
    ("([word])", [("word", S * R)]),
    ("[word:1.5]", [("word:1.5", S)]),  # a weight only closes a round bracket
    ("(a[b)c]", [("a", R), ("b", R * S), ("c", S)]),  # kinds pair up separately
    # stray closers are text; unclosed openers close at the end, round first, then square
    ("a) b", [("a) b", 1.0)]),
    ("a] b", [("a] b", 1.0)]),
    ("a:1.2) b", [("a:1.2) b", 1.0)]),
    ("[a (b", [("a ", S), ("b", R * S)]),
    ("(a [b", [("a ", R), ("b", R * S)]),
    # colons and escapes
    ("a: b", [("a: b", 1.0)]),
    ("(a:b)", [("a:b", R)]),
    ("(a:1.2.x)", [("a:1.2.x", R)]),  # not a number: the colon is text
    ("\\\\(word)", [("\\", 1.0), ("word", R)]),
    ("a \\ b", [("a  b", 1.0)]),  # a lone backslash is dropped
    ("\\(word:1.3\\)", [("(word:1.3)", 1.0)]),
    ("emoticon \\:\\)", [("emoticon :)", 1.0)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), B, ("b", 1.0)]),
    ("a BREAK", [("a", 1.0), B, ("", 1.0)]),
    ("BREAK b", [("", 1.0), B, ("b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), B, ("", 1.0), B, ("b", 1.0)]),
    ("a break b", [("a break b", 1.0)]),  # only the upper-case word
    ("aBREAK b", [("aBREAK b", 1.0)]),  # only the whole word
    ("a\nBREAK\nb", [("a", 1.0), B, ("b", 1.0)]),
    # empty
    ("", [("", 1.0)]),
    ("()", [("", 1.0)]),
]


def _pairs(fragments: list[Fragment]) -> list:
    return [B if f.is_break else (f.text, f.weight) for f in fragments]


@pytest.mark.parametrize(("prompt", "expected"), PARSE_TABLE, ids=[p for p, _ in PARSE_TABLE])
def test_parse_table_follows_a1111(prompt, expected):
    assert _pairs(parse_prompt_attention(prompt)) == expected


def test_table_has_at_least_30_prompts():
    assert len(PARSE_TABLE) >= 30


def test_break_inside_brackets_stays_a_break():
    # A1111 would multiply its break marker and encode the word BREAK; here it stays a break
    assert _pairs(parse_prompt_attention("(a BREAK b)")) == [("a", R), B, ("b", R)]


def test_weight_that_is_not_a_number_is_refused():
    with pytest.raises(PromptSyntaxError, match="'1.2.3' is not a number"):
        parse_prompt_attention("(word:1.2.3)")
    with pytest.raises(PromptSyntaxError, match="not finite"):
        parse_prompt_attention("(word:" + "9" * 400 + ")")


LORA_TABLE = [
    ("<lora:brand>", "brand", 1.0, 1.0),
    ("<lora:brand:0.8>", "brand", 0.8, 0.8),
    ("<lora:brand:0.8:0.5>", "brand", 0.8, 0.5),
    ("<lora:brand:te=0.3>", "brand", 0.3, 0.3),
    ("<lora:brand:1:unet=0.2>", "brand", 1.0, 0.2),
    ("<lyco:brand:0.7>", "brand", 0.7, 0.7),
    ("<lora:my-style_v2.1:-0.5>", "my-style_v2.1", -0.5, -0.5),
]


@pytest.mark.parametrize(("tag", "name", "te", "unet"), LORA_TABLE)
def test_lora_tags(tag, name, te, unet):
    text, tags = extract_extra_networks(f"a photo, {tag} of a cat")
    assert text == "a photo,  of a cat"
    assert tags == [NetworkTag("lora", name, te, unet, tag)]


def test_lora_tags_are_removed_before_emphasis():
    parsed = parse_prompt("(red:1.2) <lora:a:0.5> car <lora:b>")
    assert [t.name for t in parsed.loras] == ["a", "b"]
    assert _pairs(list(parsed.fragments)) == [("red", 1.2), ("  car ", 1.0)]


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("<hypernet:x:1>", "'hypernet' is not supported"),
        ("<lora:x:abc>", "'abc' is not a finite number"),
        ("<lora:x:nan>", "'nan' is not a finite number"),
        ("<lora:x:inf>", "'inf' is not a finite number"),
        ("<lora: :1>", "write <lora:name>"),
        ("<lora:x:1:2:3>", "write <lora:name>"),
        ("<lora:x:dyn=4>", "write <lora:name>"),
    ],
)
def test_bad_tags_are_refused(prompt, fragment):
    problems = prompt_problems(f"a {prompt} b")
    assert len(problems) == 1 and fragment in problems[0], problems


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("(masterpiece, best", "'(' is never closed (at character 1"),
        ("a [b", "'[' is never closed (at character 3"),
        ("smile :)", "')' closes nothing (at character 8"),
        ("a] b", "']' closes nothing (at character 2"),
        ("b:1.2)", "')' closes nothing (at character 6"),
        ("(word:" + "9" * 400 + ")", "not finite"),
    ],
)
def test_unbalanced_brackets_are_refused(prompt, fragment):
    problems = prompt_problems(prompt)
    assert len(problems) == 1 and fragment in problems[0], problems
    assert "\\(" in problems[0] or "finite" in problems[0]  # says how to fix it


@pytest.mark.parametrize(
    "prompt", ["(a)", "[a]", "(a:1.2) [b]", "\\(x", "(a[b)c]", "<lora:x:0.5> y", ""]
)
def test_good_prompts_have_no_problems(prompt):
    assert prompt_problems(prompt) == []


def test_plain_syntax_keeps_everything_as_text():
    prompt = "(word:1.3) <lora:x:1> [y] BREAK z :)"
    parsed = parse_prompt(prompt, "plain")
    assert parsed.text == prompt and parsed.loras == ()
    assert parsed.fragments == (Fragment(prompt),) and parsed.is_plain
    assert prompt_problems(prompt, "plain") == []


def test_lora_tags_refused_where_not_allowed():
    assert "move it" in prompt_problems("blurry <lora:x:1>", allow_loras=False)[0]


@pytest.mark.parametrize(
    ("prompt", "plain"),
    [("a cat", True), ("a cat, 8k", True), ("a (cat)", False), ("a BREAK b", False)],
)
def test_is_plain(prompt, plain):
    assert parse_prompt(prompt).is_plain is plain
