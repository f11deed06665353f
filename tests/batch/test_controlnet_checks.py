"""ControlNet bad input, found before a model loads, each naming the field or row, the value and
the fix; a row that fails in generation is an error row; results and A1111 infotext record the
units."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdfleet.batch.controlnets import ControlNetUse, a1111_controlnet_fields
from sdfleet.batch.errors import ConfigError, ModelError
from sdfleet.batch.manifest import row_problems
from sdfleet.batch.masks import MaskFromBoxes
from sdfleet.batch.model_checks import check_model_files
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.request import RowDefaults
from sdfleet.batch.tiny_conditioning import tiny_controlnet_dir
from sdfleet.jobs.spec import BatchJob, validate_model
from tests.batch import a1111_rules
from tests.batch.test_controlnet import DEFAULTS, picture, png


def job(**unit) -> dict:
    return {"manifest": "m.parquet", "controlnets": [{"model": "cn"} | unit]}


@pytest.mark.parametrize(
    ("unit", "fragment"),
    [
        ({"preprocessor": "cany"}, "did you mean 'canny'"),
        ({"preprocessor": "canny", "preprocessor_options": {"low": 200, "high": 9}}, "low <= high"),
        ({"preprocessor": "tile", "preprocessor_options": {"lo": 1}}, "no option 'lo'"),
        ({"start": 0.8, "end": 0.2}, "start 0.8 must be below end 0.2"),
        ({"resize_mode": "fill"}, "'stretch', 'crop' or 'pad'"),
        ({"scale": -1}, "greater than or equal to 0"),
        ({"weight": 1}, "unknown field"),
    ],
)
def test_bad_units_are_refused_when_the_job_is_read(unit, fragment) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_model(BatchJob, job(**unit), "job.yaml")
    assert "job.yaml" in str(caught.value) and "controlnets.0" in str(caught.value)
    assert fragment in str(caught.value)


def test_a_unit_becomes_the_loader_and_the_rows_settings(tmp_path: Path) -> None:
    (tmp_path / "cn").mkdir()
    data = job(scale=0.5, preprocessor="canny", preprocessor_options={"low": 10, "high": 20})
    parsed = validate_model(BatchJob, data, str(tmp_path / "job.yaml"))
    (unit,) = parsed.row_defaults().controlnets
    assert unit == ControlNetUse("cn", 0.5, preprocessor="canny",
                                 options=(("high", 20.0), ("low", 10.0)))  # fmt: skip
    from sdfleet.batch.models import model_spec

    (loaded,) = model_spec(parsed, tmp_path).controlnets
    assert loaded.model == str((tmp_path / "cn").resolve())


def test_a_refiner_and_controlnets_together_are_refused() -> None:
    data = job() | {"refiner": {"model": "builtin:tiny-sdxl-refiner"}}
    with pytest.raises(ConfigError, match="a refiner does not run with ControlNet"):
        validate_model(BatchJob, data, "job.yaml")


def copied_controlnet(tmp_path: Path, **config) -> Path:
    folder = tmp_path / "cn-copy"
    shutil.copytree(tiny_controlnet_dir(0), folder)
    values = json.loads((folder / "config.json").read_text()) | config
    (folder / "config.json").write_text(json.dumps(values))
    return folder


def check(tmp_path: Path, folder: Path | str, allow_pickle: bool = False) -> str:
    spec = ModelSpec(controlnets=(ControlNetUse(str(folder)),), allow_pickle=allow_pickle)
    with pytest.raises(ModelError) as caught:
        check_model_files(spec)
    return str(caught.value)


def test_controlnet_folders_are_checked_before_loading(tmp_path: Path) -> None:
    good = ModelSpec(controlnets=(ControlNetUse(str(tiny_controlnet_dir(0))),))
    check_model_files(good)  # passes
    missing = check(tmp_path, tmp_path / "nowhere")
    assert "controlnets[0].model" in missing and "nowhere" in missing and "not a folder" in missing
    other_base = check(tmp_path, copied_controlnet(tmp_path, cross_attention_dim=768))
    assert "ControlNet for SD 1.x (cross_attention_dim 768)" in other_base
    assert "trained for the job's model base" in other_base
    sdxl = check(tmp_path, copied_controlnet(tmp_path / "x", addition_embed_type="text_time"))
    assert "ControlNet for SDXL" in sdxl and "addition_embed_type" in sdxl
    kind = check(tmp_path, copied_controlnet(tmp_path / "k", _class_name="T2IAdapter"))
    assert "holds a T2IAdapter, not a ControlNetModel" in kind
    pickled = copied_controlnet(tmp_path / "p")
    weights = pickled / "diffusion_pytorch_model.safetensors"
    weights.rename(pickled / "diffusion_pytorch_model.bin")
    assert "only pickled weights" in check(tmp_path, pickled)
    check_model_files(ModelSpec(controlnets=(ControlNetUse(str(pickled)),), allow_pickle=True))
    null = ModelSpec(model="builtin:null", controlnets=good.controlnets)
    with pytest.raises(ModelError, match="builtin:null has no UNet"):
        check_model_files(null)


def problems(row: dict, defaults: RowDefaults, base: Path | None = None) -> list[tuple]:
    return [(p.column, str(p)) for p in row_problems(row, defaults, "m.parquet", 2, base)]


def test_rows_without_an_input_image_or_with_a_bad_one_are_named(tmp_path: Path) -> None:
    unit = ControlNetUse("cn", preprocessor="canny")
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": (unit,)})
    ((column, text),) = problems({"id": "a", "prompt": "p"}, defaults)
    assert column == "control_image" and "row 'a' (#2)" in text
    assert "preprocessor 'canny'" in text
    assert "give the row a control_image or an init_image" in text
    ((column, text),) = problems({"id": "b", "prompt": "p", "control_image": "gone.png"},
                                 defaults, tmp_path)  # fmt: skip
    assert column == "control_image" and "gone.png" in text and "cannot read an image" in text
    assert problems({"id": "c", "prompt": "p", "init_image": png(picture(1))}, defaults) == []
    masked = {"id": "d", "prompt": "p", "init_image": png(picture(1)),
              "mask_image": png(picture(2).convert("L"))}  # fmt: skip
    assert problems(masked, defaults)[-1][0] == "controlnets"
    boxes = RowDefaults(**{**defaults.__dict__, "mask_from_boxes": MaskFromBoxes(("box",))})
    assert "does not run with inpainting" in problems({**masked, "box": [0, 0, 4, 4]}, boxes)[-1][1]
    ((column, text),) = problems({"id": "e", "prompt": "p", "control_image": png(picture(1))},
                                 DEFAULTS)  # fmt: skip
    assert column == "control_image" and "the job has no controlnets" in text


@pytest.mark.slow
def test_results_and_infotext_record_the_units_and_a_bad_image_is_an_error_row(tmp_path) -> None:
    from sdfleet.batch.actor import GenerateBatch, RunConfig
    from sdfleet.batch.outputs import OutputDir

    chosen = (
        ControlNetUse(str(tiny_controlnet_dir(0)), 0.8, preprocessor="canny",
                      options=(("high", 150.0), ("low", 50.0))),
        ControlNetUse(str(tiny_controlnet_dir(1)), 1.5, 0.1, 0.9, resize_mode="pad",
                      image_column="control_depth"),
    )  # fmt: skip
    defaults = RowDefaults(**{**DEFAULTS.__dict__, "controlnets": chosen})
    rows = [
        {"id": "ok", "prompt": "a poster", "init_image": png(picture(1)),
         "control_depth": png(picture(2, (96, 64)))},
        {"id": "bad", "prompt": "a poster", "init_image": png(picture(1)),
         "control_depth": str(tmp_path / "gone.png")},
    ]  # fmt: skip
    (tmp_path / "gone.png").write_bytes(png(picture(3)))
    assert problems(rows[0], defaults) == [] and problems(rows[1], defaults) == []
    (tmp_path / "gone.png").unlink()  # after validation: the row fails when it runs
    config = RunConfig(ModelSpec(controlnets=chosen), defaults, str(tmp_path), batch_size=2)
    table = GenerateBatch(config)({k: [r.get(k) for r in rows] for k in rows[0]})
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert by_id["ok"]["status"] == "ok" and by_id["bad"]["status"] == "error"
    assert by_id["bad"]["error"].startswith("init_image or control image: ")
    assert "control_depth" not in by_id["ok"]  # an input, not carried into the results
    recorded = json.loads(by_id["ok"]["controlnets"])
    assert [u["scale"] for u in recorded] == [0.8, 1.5] and recorded[0]["preprocessor"] == "canny"
    data = OutputDir(str(tmp_path)).read_bytes(by_id["ok"]["image_path"])
    fields = a1111_rules.parse(a1111_rules.read_parameters(data))
    first, second = (extension_unit(fields[f"ControlNet {k}"]) for k in range(2))
    assert first == {"Module": "canny", "Model": first["Model"], "Weight": "0.8",
                     "Resize Mode": "Crop and Resize", "Threshold A": "50",
                     "Threshold B": "150", "Guidance Start": "0", "Guidance End": "1",
                     "Control Mode": "Balanced"}  # fmt: skip
    assert first["Model"].startswith(Path(chosen[0].model).name + " [")
    assert second["Resize Mode"] == "Resize and Fill" and second["Guidance Start"] == "0.1"
    assert fields["Steps"] == "4" and fields["Prompt"] == "a poster"


def extension_unit(text: str) -> dict[str, str]:
    """A `ControlNet i` value as sd-webui-controlnet's `parse_unit` reads it: split on ",",
    then each item on ": " (exactly one key and one value)."""
    pairs = {}
    for item in text.split(","):
        key, value = item.strip().split(": ")
        pairs[key] = value
    return pairs


def test_a1111_fields_keep_names_the_extension_can_split() -> None:
    unit = ControlNetUse("/models/my,odd:net", preprocessor="tile", options=(("downsample", 2),))
    (text,) = a1111_controlnet_fields([unit], [None]).values()
    assert extension_unit(text)["Model"] == "my_odd_net"
    assert extension_unit(text)["Module"] == "tile_resample"
    assert extension_unit(text)["Threshold A"] == "2" and "Threshold B" not in text
