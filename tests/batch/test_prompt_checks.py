"""Rows' prompts and LoRAs checked and resolved without a model: names, paths, weights, fit."""

from __future__ import annotations

import pytest
import torch

from sdfleet.batch.adapter_files import AdapterFileError, BaseDims, file_hash
from sdfleet.batch.prompt_checks import (
    AdapterContext,
    LoraEntry,
    check_embedding,
    parse_lora_column,
    resolve_lora,
    row_loras,
    row_prompt_issues,
)
from sdfleet.batch.tiny_adapters import save_tensors, to_kohya

TINY = BaseDims(32, (32,))
XL = BaseDims(64, (32, 32))


def _lora(cross: int, te: int, seed: int, te2: bool = False) -> dict:
    """A LoRA-shaped state dict (diffusers layout) with the given widths, no model needed."""
    g = torch.Generator().manual_seed(seed)
    state = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, cross),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (64, 4),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight": (4, te),
        "text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight": (te, 4),
    }
    if te2:
        state["text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = (4, te)
        state["text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = (te, 4)
    return {k: torch.randn(shape, generator=g) for k, shape in state.items()}


@pytest.fixture
def lora_dir(tmp_path):
    folder = tmp_path / "loras"
    save_tensors(_lora(32, 32, 1), folder / "brand.safetensors")
    save_tensors(to_kohya(_lora(32, 32, 2)), folder / "styles" / "soft.safetensors")
    save_tensors(_lora(64, 32, 3, te2=True), folder / "xl_style.safetensors")
    return folder


def ctx(lora_dir=None, **extra) -> AdapterContext:
    return AdapterContext(
        model="builtin:tiny", base=TINY, lora_dir=str(lora_dir) if lora_dir else None, **extra
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("brand", [LoraEntry("brand", 1.0, 1.0)]),
        ("brand:0.8, soft:-0.5", [LoraEntry("brand", 0.8, 0.8), LoraEntry("soft", -0.5, -0.5)]),
        (["brand:0.5", "soft"], [LoraEntry("brand", 0.5, 0.5), LoraEntry("soft", 1.0, 1.0)]),
        ("/x/brand.safetensors", [LoraEntry("/x/brand.safetensors", 1.0, 1.0)]),
        ("/x/brand.safetensors:0.3", [LoraEntry("/x/brand.safetensors", 0.3, 0.3)]),
        (" , brand ,", [LoraEntry("brand", 1.0, 1.0)]),
        ("brand:1:0.25", [LoraEntry("brand", 1.0, 0.25)]),
        ("C:\\loras\\a.safetensors:0.5", [LoraEntry("C:\\loras\\a.safetensors", 0.5, 0.5)]),
    ],
)
def test_lora_column(value, expected):
    assert parse_lora_column(value) == expected


@pytest.mark.parametrize("value", ["brand:nan", "brand:inf", "brand:strong", "brand:1:2:3", 3, [1]])
def test_bad_lora_column(value):
    with pytest.raises(AdapterFileError):
        parse_lora_column(value)


def test_names_resolve_in_lora_dir_recursively(lora_dir):
    use = resolve_lora(LoraEntry("soft", 0.5, 0.5), ctx(lora_dir), None)
    assert use.path == str((lora_dir / "styles" / "soft.safetensors").resolve())
    assert use.sha256 == file_hash(use.path) and use.name == "soft"


def test_row_set_is_job_then_column_then_tags_and_later_wins(lora_dir):
    context = ctx(lora_dir)
    job = (resolve_lora(LoraEntry("brand", 1.0, 1.0), context, None),)
    context = ctx(lora_dir, loras=job)
    uses = row_loras("a mug <lora:soft:0.7> <lora:brand:0.2>", "soft:0.3", context)
    assert [(u.name, u.unet_weight) for u in uses] == [("soft", 0.7), ("brand", 0.2)]
    assert [u.name for u in row_loras("a mug", None, context)] == ["brand"]


def test_paths_are_relative_to_the_given_folder(lora_dir):
    uses = row_loras("x", "loras/brand.safetensors:0.5", ctx(), base_dir=lora_dir.parent)
    assert uses[0].path == str((lora_dir / "brand.safetensors").resolve())


@pytest.mark.parametrize(
    ("prompt", "negative", "column", "where", "fragment"),
    [
        ("a (mug", "", None, "prompt", "never closed"),
        ("a mug", "blurry)", None, "negative_prompt", "closes nothing"),
        ("a mug", "<lora:brand:1>", None, "negative_prompt", "move it"),
        ("a mug <lora:brnd:1>", "", None, "prompt", "did you mean 'brand'"),
        ("a mug", "", "missing", "loras", "not in"),
        ("a mug", "", "xl_style", "loras", "is a LoRA for width 64"),
        ("a mug", "", "brand:nan", "loras", "not a finite number"),
        ("a mug <lora:brand:nan>", "", None, "prompt", "not a finite number"),
        ("a mug", "", "/nope/x.safetensors", "loras", "does not exist"),
    ],
)
def test_row_issues_name_the_column(lora_dir, prompt, negative, column, where, fragment):
    issues = row_prompt_issues(prompt, negative, column, ctx(lora_dir))
    assert len(issues) == 1, issues
    assert issues[0][0] == where and fragment in issues[0][2], issues


def test_a_name_without_lora_dir_says_to_set_it():
    (issue,) = row_prompt_issues("a <lora:brand:1>", "", None, ctx())
    assert "set `lora_dir:`" in issue[2]


def test_plain_syntax_reads_no_tags(lora_dir):
    context = AdapterContext(syntax="plain", base=TINY, lora_dir=str(lora_dir))
    assert row_prompt_issues("a (mug <lora:nope:1>", "x)", None, context) == []
    assert row_loras("a <lora:brand:1>", None, context) == ()


def test_pickled_lora_needs_allow_pickle(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"x": torch.zeros(1)}, path)
    (issue,) = row_prompt_issues("a", "", str(path), ctx())
    assert "allow_pickle" in issue[2]
    assert row_loras("a", str(path), ctx(allow_pickle=True))[0].path == str(path.resolve())


def test_fit_is_skipped_when_the_base_cannot_be_read(lora_dir):
    context = AdapterContext(model="org/hub-model", base=None, lora_dir=str(lora_dir))
    assert row_prompt_issues("a", "", "xl_style", context) == []


def test_embeddings(tmp_path):
    good = save_tensors({"emb_params": torch.zeros(2, 32)}, tmp_path / "glossy.safetensors")
    assert check_embedding(good, "glossy", ctx()).sha256 == file_hash(good)
    with pytest.raises(AdapterFileError, match="needs 32/32"):
        check_embedding(good, "glossy", AdapterContext(model="xl", base=XL))
    with pytest.raises(AdapterFileError, match="one word"):
        check_embedding(good, "(glossy)", ctx())


def test_job_loras_name_the_entry(lora_dir):
    from sdfleet.batch.errors import ConfigError
    from sdfleet.batch.prompt_checks import job_loras

    entries = [LoraEntry("brand", 0.5, 0.5), LoraEntry("loras/soft.safetensors", 1.0, 1.0)]
    with pytest.raises(ConfigError, match=r"loras\[1\]: .*does not exist"):
        job_loras(entries, ctx(lora_dir), lora_dir.parent)
    uses = job_loras(entries[:1] * 2, ctx(lora_dir), lora_dir.parent)
    assert [u.name for u in uses] == ["brand"]


def test_job_embeddings_from_list_and_folder(tmp_path):
    from sdfleet.batch.errors import ConfigError
    from sdfleet.batch.prompt_checks import job_embeddings

    folder = tmp_path / "embeddings"
    save_tensors({"emb_params": torch.zeros(2, 32)}, folder / "glossy.safetensors")
    save_tensors({"emb_params": torch.ones(1, 32)}, folder / "matte.safetensors")
    extra = save_tensors({"emb_params": torch.ones(1, 32)}, tmp_path / "other" / "neon.safetensors")
    uses = job_embeddings(["other/neon.safetensors"], str(folder), ctx(), tmp_path)
    assert [u.name for u in uses] == ["glossy", "matte", "neon"]
    assert uses[2].path == str(extra.resolve())
    with pytest.raises(ConfigError, match=r"embeddings\[0\]: .*did you mean 'glossy'"):
        job_embeddings(["glosy"], str(folder), ctx(), tmp_path)
    with pytest.raises(ConfigError, match="no embedding_dir"):
        job_embeddings(["glossy"], None, ctx(), tmp_path)
    with pytest.raises(ConfigError, match="needs 32/32"):
        job_embeddings([], str(folder), AdapterContext(model="xl", base=XL), tmp_path)


def test_column_text_reads_back(lora_dir):
    from sdfleet.batch.prompt_checks import lora_column_text

    uses = row_loras("a", "brand:0.5, soft:1:0.25", ctx(lora_dir))
    text = lora_column_text(uses)
    assert text == "brand:0.5, soft:1:0.25"
    assert row_loras("a", text, ctx(lora_dir)) == uses


def test_used_embeddings_are_the_words_in_the_prompts(tmp_path):
    from sdfleet.batch.adapters import EmbeddingUse
    from sdfleet.batch.prompt_checks import used_embeddings

    uses = (EmbeddingUse("glossy", "g", "1"), EmbeddingUse("matte", "m", "2"))
    context = ctx(embeddings=uses)
    assert used_embeddings("a glossy mug", "", context) == uses[:1]
    assert used_embeddings("a (glossy:1.2) mug", "matte, blurry", context) == uses
    assert used_embeddings("a glossymug", "unmatted", context) == ()


# ------------------------------------------------------------------------------- sdfleet validate


def test_validate_reports_every_bad_row_with_its_column_and_fix(
    tiny_dir, lora_dir, tmp_path, capsys
):
    import pyarrow.parquet as pq
    import yaml

    from sdfleet.batch.sources import table_from_rows
    from sdfleet.jobs.cli import main
    from sdfleet.jobs.runner import EXIT_CONFIG

    rows = [
        {"id": "ok", "prompt": "a (red:1.2) fox <lora:brand:0.5>", "loras": "soft"},
        {"id": "unknown", "prompt": "a fox <lora:brnad:1>", "loras": None},
        {"id": "missing", "prompt": "a fox", "loras": "gone/x.safetensors"},
        {"id": "other-base", "prompt": "a fox", "loras": "xl_style:0.8"},
        {"id": "not-finite", "prompt": "a fox", "loras": "brand:inf"},
        {"id": "brackets", "prompt": "a ((fox)", "loras": None},
    ]
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")
    job = {"model": "builtin:tiny", "manifest": "m.parquet", "lora_dir": str(lora_dir)}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for row_id, column, fix in [
        ("unknown", "prompt", "did you mean 'brand'"),
        ("missing", "loras", "does not exist"),
        ("other-base", "loras", "use a LoRA trained for this base model"),
        ("not-finite", "loras", "not a finite number"),
        ("brackets", "prompt", "'(' is never closed"),
    ]:
        line = next(x for x in err.splitlines() if f"row {row_id!r}" in x)
        assert f"column '{column}'" in line and fix in line, line
    assert "row 'ok'" not in err


def test_validate_refuses_a_bad_job_lora_naming_the_field(tiny_dir, lora_dir, tmp_path, capsys):
    import yaml

    from sdfleet.jobs.cli import main
    from sdfleet.jobs.runner import EXIT_CONFIG

    job = {
        "model": "builtin:tiny",
        "manifest": "m.parquet",
        "lora_dir": str(lora_dir),
        "loras": [{"name": "xl_style", "scale": 0.5}],
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == EXIT_CONFIG
    assert "loras[0]: " in capsys.readouterr().err
