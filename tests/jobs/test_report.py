"""`sdfleet report`: the static HTML report of real OUTs (builtin:null runs), thumbnails made
once, grids, errors, cost, bad input; `plan --plot`; the page in a real browser (slow)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.examples import shape_image_png

REPO = Path(__file__).resolve().parents[2]


def load_js(path: Path):
    """The payload of a `window.NAME=...;` or `SDF_DETAIL(n, ...)` data file."""
    text = path.read_text()
    if text.startswith("window.SDF_DETAIL"):
        return json.loads(text[text.index(",", text.index("(")) + 1 : text.rindex(")")])
    return json.loads(text[text.index("=") + 1 : text.rindex(";")])


def write_job(folder: Path, manifest: str, **fields) -> Path:
    job = {
        "kind": "batch",
        "model": "builtin:null",
        "manifest": manifest,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
        "batch_size": 2,
        "executor": "local",
    } | fields
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run(job: Path, out: Path) -> int:
    return main(["run", str(job), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def null_out(tmp_path_factory) -> Path:
    """A builtin:null OUT with txt2img rows (two styles x two products), an img2img row and an
    img2img row whose source is not an image (an error row)."""
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("null_out")
    (folder / "src").mkdir()
    (folder / "src" / "good.png").write_bytes(shape_image_png(2))
    (folder / "src" / "bad.png").write_bytes(shape_image_png(2)[:60])  # a header, cut off
    rows = [
        {"id": f"{p}-{s}", "prompt": f"a {p}, {s}", "style": s, "product": p, "seed": i}
        for i, (p, s) in enumerate((p, s) for p in ("mug", "lamp") for s in ("oil", "ink"))
    ]
    rows += [
        {"id": "i2i-good", "prompt": "a shape", "style": "oil", "product": "shape",
         "init_image": "src/good.png", "strength": 0.5},
        {"id": "i2i-bad", "prompt": "a shape", "style": "ink", "product": "shape",
         "init_image": "src/bad.png", "strength": 0.5},
    ]  # fmt: skip
    pq.write_table(table_from_rows(rows), folder / "m.parquet")
    out = folder / "OUT"
    assert run(write_job(folder, "m.parquet", price_per_gpu_hour=3.0), out) == 3  # a row failed
    return out


def test_report_of_a_batch_out(null_out: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "rep"
    assert main(["report", str(null_out), "-o", str(dest)]) == 0
    assert (
        "6 outputs, thumbnails 6 made / 0 reused, 1 error(s)"
    )  # 5 + a source in capsys.readouterr().out
    index = load_js(dest / "data" / "index.js")
    assert index["n"] == 6 and sorted(index["output_id"]) == sorted(
        ["mug-oil", "mug-ink", "lamp-oil", "lamp-ink", "i2i-good", "i2i-bad"]
    )
    status = index["columns"]["status"]
    by_id = dict(zip(index["output_id"], (status["values"][c] for c in status["codes"])))
    assert by_id["i2i-bad"] == "error" and list(by_id.values()).count("ok") == 5
    # filters over carried columns, dictionary-coded
    assert sorted(index["columns"]["style"]["values"]) == ["ink", "oil"]
    for name, has in zip(index["output_id"], index["thumb"]):
        assert (dest / "thumbs" / f"{name}.jpg").is_file() == bool(has) == (by_id[name] == "ok")
    # the infotext shown is the one in the PNG, ready to copy
    (chunk,) = (dest / "data").glob(f"detail-{index['detail_build']}-0000.js")
    details = {row["output_id"]: row for row in load_js(chunk)}
    with Image.open(null_out / details["mug-oil"]["image_path"]) as image:
        assert details["mug-oil"]["infotext"] == image.info["parameters"]
    assert "init_image" in details["i2i-bad"]["error"]
    # img2img: the source's thumbnail, beside the result
    assert (
        details["i2i-good"]["src"]
        and (dest / "thumbs" / f"{details['i2i-good']['src']}.jpg").is_file()
    )
    assert index["src"][index["output_id"].index("i2i-good")] == 1
    # the page and its assets, with relative paths only
    html = (dest / "index.html").read_text()
    assert 'src="data/index.js"' in html and (dest / "assets" / "report.js").is_file()
    summary = load_js(dest / "data" / "summary.js")
    assert summary["kind"] == "batch" and summary["summary"]["ok"] == 5
    assert not Path(summary["out"]).is_absolute()


def test_summary_cost_and_report_price(null_out: Path, tmp_path: Path) -> None:
    cost = json.loads((null_out / "summary.json").read_text())["cost"]
    assert cost["replicas"] == 1 and cost["replica_s_per_image"] > 0
    assert cost["cost_per_1000_images"] == pytest.approx(
        cost["gpu_hours_per_1000_images"] * 3.0, abs=1e-4
    )  # money to 4 decimals
    assert cost["gpu_hours_per_1000_images"] == pytest.approx(
        cost["replica_s_per_image"] * 1000 / 3600, rel=1e-3, abs=1e-6
    )
    dest = tmp_path / "rep"
    assert main(["report", str(null_out), "-o", str(dest), "--price-per-gpu-hour", "10"]) == 0
    priced = load_js(dest / "data" / "summary.js")["cost"]
    assert priced["price_per_gpu_hour"] == 10
    assert priced["cost_per_1000_images"] == pytest.approx(
        cost["gpu_hours_per_1000_images"] * 10, abs=1e-4
    )


def test_thumbnails_are_made_once(null_out: Path, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "rep"
    assert main(["report", str(null_out), "-o", str(dest)]) == 0
    stamp = (dest / "thumbs" / "mug-oil.jpg").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["report", str(null_out), "-o", str(dest)]) == 0
    assert "thumbnails 0 made / 6 reused" in capsys.readouterr().out  # 5 outputs + 1 source
    build = load_js(dest / "data" / "index.js")["detail_build"]
    assert [p.name for p in (dest / "data").glob("detail-*.js")] == [f"detail-{build}-0000.js"]
    assert (dest / "thumbs" / "mug-oil.jpg").stat().st_mtime_ns == stamp


def test_grid_png_is_labelled_and_sized_by_its_axes(null_out: Path, tmp_path: Path) -> None:
    dest = tmp_path / "rep"
    argv = ["report", str(null_out), "-o", str(dest), "--grid", "style,product"]
    assert main(argv) == 0
    (grid,) = (dest / "grids").glob("*.png")
    with Image.open(grid) as image:
        width, height = image.size
        # 2 styles across; 3 products down (mug, lamp, shape): cells of 256 px and a label band
        assert 2 * 256 < width < 2 * 256 + 400 and 3 * 256 < height < 3 * 256 + 120
        # one cell, (ink, shape), has only an error row: it is the one grey square
        grey = dict((c, n) for n, c in image.convert("RGB").getcolors(1 << 20))
        assert 256 * 256 <= grey.get((200, 200, 200), 0) < 256 * 256 + 100  # + label pixels
    assert load_js(dest / "data" / "summary.js")["grids"] == [f"grids/{grid.name}"]


def test_report_incremental_with_a_grown_matrix(tmp_path: Path, capsys) -> None:
    matrix = {
        "kind": "matrix",
        "axes": {"style": ["oil", "ink"], "product": ["mug"]},
        "prompt": "a {product}, {style}, {red|blue}",
        "seeds": 2,
    }
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    job, out = write_job(tmp_path, "m.yaml"), tmp_path / "OUT"
    assert run(job, out) == 0
    assert main(["report", str(out)]) == 0
    assert "4 outputs, thumbnails 4 made / 0 reused" in capsys.readouterr().out
    matrix["axes"]["style"].append("pencil")  # one more style: 2 new rows
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(matrix))
    assert run(job, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_this_run"] == 2 and summary["skipped_already_done_rows"] == 4
    assert main(["report", str(out)]) == 0
    assert "6 outputs, thumbnails 2 made / 4 reused" in capsys.readouterr().out


def test_not_an_out_is_refused_and_nothing_written(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(shape_image_png(0))
    assert main(["report", str(tmp_path / "photos")]) == 2
    assert "is not an sdfleet OUT" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.png"]
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_bad_report_arguments_exit_2(null_out: Path, tmp_path: Path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    cases = [
        (["-o", str(busy)], "holds other files"),
        (["--grid", "style"], "name two or three different columns"),
        (["--grid", "style,colour", "-o", str(tmp_path / "r1")], "no column 'colour'"),
        (["--price-per-gpu-hour", "0"], "give a price above 0"),
        (["--where", "style", "--grid", "style,product"], "write COLUMN=VALUE"),
    ]
    for extra, said in cases:
        assert main(["report", str(null_out), *extra]) == 2, extra
        assert said in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "r1").exists()


def test_plan_plot_writes_a_png(tmp_path: Path, capsys) -> None:
    png = tmp_path / "plan.png"
    job = REPO / "jobs" / "examples" / "anim_deforum.yaml"
    assert main(["plan", str(job), "--plot", str(png)]) == 0
    captured = capsys.readouterr()
    assert "frame" in captured.out and str(png) in captured.err  # the table, then where
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
        colours = image.convert("RGB").getcolors(1 << 20)
        assert len(colours) > 50  # lines and labels, not a blank canvas
    assert main(["plan", str(job), "--plot", str(tmp_path / "plan.jpg")]) == 2
    assert "name the file .png" in capsys.readouterr().err


@pytest.mark.slow
def test_report_of_an_animation_out(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load((REPO / "jobs" / "examples" / "anim_demo.yaml").read_text())
    data |= {"max_frames": 6, "model": "builtin:tiny"}
    for key in [k for k in data if k.endswith("_schedule") and k.startswith("steps")]:
        data[key] = "0: (2)"
    job = tmp_path / "clip.yaml"
    job.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "OUT"
    assert main(["run", str(job), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    clips = load_js(out / "report" / "data" / "clips.js")
    assert len(clips) == 1 and clips[0]["status"] == "ok"
    for key in ("video", "contact_sheet", "plot"):
        assert (out / "report" / clips[0][key]).is_file(), key
    with Image.open(out / "report" / clips[0]["plot"]) as plot:
        assert plot.width > 600


# ---------------------------------------------------------------------------- in a browser


def chrome_driver():
    """Headless Debian chromium through its chromedriver (`make browser` installs both)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail("chromium and chromedriver are missing: run `make browser` (make test does)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                 "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


@pytest.mark.slow
def test_report_in_a_real_browser(null_out: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    dest = tmp_path / "report"
    assert main(["report", str(null_out), "-o", str(dest), "--page-size", "4"]) == 0
    browser = chrome_driver()
    try:
        browser.get((dest / "index.html").as_uri())
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#gallery .card"))
        wait.until(lambda b: b.execute_script(
            "return [...document.images].every(i => i.complete)"))  # fmt: skip
        widths = browser.execute_script(
            "return [...document.querySelectorAll('#gallery img')].map(i => i.naturalWidth)"
        )
        assert len(widths) >= 4 and all(w > 0 for w in widths), widths  # every thumbnail loaded
        pager = browser.find_element(By.CSS_SELECTOR, "#pager-top .count").text
        assert re.search(r"page 1 of 2 · 6 of 6 images", pager), pager
        shot = Path(REPO / "out" / "test-artefacts")
        shot.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(shot / "report_first_page.png"))
        Select(
            browser.find_element(By.CSS_SELECTOR, "select[data-filter='style']")
        ).select_by_visible_text("ink")
        wait.until(
            lambda b: "3 of 6 images" in b.find_element(By.CSS_SELECTOR, "#pager-top .count").text
        )
        cards = browser.find_elements(By.CSS_SELECTOR, "#gallery .card")
        assert len(cards) == 3 and all("ink" in c.text for c in cards)
        browser.find_element(By.CSS_SELECTOR, "#gallery .card.error").click()  # the error row
        wait.until(lambda b: b.find_element(By.ID, "detail").is_displayed())
        assert "error:" in browser.find_element(By.ID, "detail-body").text
        browser.save_screenshot(str(shot / "report_filtered_detail.png"))
        browser.find_element(By.ID, "detail-close").click()
        browser.find_element(By.ID, "tab-button-grid").click()  # style x product under the filter
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#xyz table"))
        cells = browser.find_elements(By.CSS_SELECTOR, "#xyz td img")
        assert len(cells) == 2  # ink: lamp and mug; the shape row has only the error
        browser.save_screenshot(str(shot / "report_grid.png"))
        browser.find_element(By.ID, "tab-button-summary").click()
        assert "cost per 1000 images" in browser.find_element(By.ID, "summary").text
        print(f"screenshots in {shot}: report_first_page, report_filtered_detail, report_grid.png")
    finally:
        browser.quit()


@pytest.mark.parametrize(
    ("summary", "price", "per_image_s", "cost"),
    [
        # local: one replica held for load + generate
        ({"stage_s": {"load": 10, "generate": 90}, "model_load_s": [9.5],
          "generated_this_run": 200}, 2.0, 0.5, 0.5 * 1000 / 3600 * 2.0),
        # ray: 4 replicas of half a GPU each, held for the whole pipeline
        ({"stage_s": {"pool_start": 20, "generate": 80, "pipeline": 100},
          "model_load_s": [5, 5, 5, 5], "generated_this_run": 1000,
          "ray": {"replicas": 4, "num_gpus_per_replica": 0.5}}, 3.0, 0.4,
         0.4 * 0.5 * 1000 / 3600 * 3.0),
        # nothing made this run (all resumed): no per-image figure, no cost
        ({"stage_s": {"load": 5}, "model_load_s": [5], "generated_this_run": 0}, 2.0, None, None),
    ],
)  # fmt: skip
def test_cost_summary(summary: dict, price: float, per_image_s, cost) -> None:
    from sdfleet.batch.run import cost_summary

    block = cost_summary(summary, price)
    assert block["replica_s_per_image"] == (
        None if per_image_s is None else pytest.approx(per_image_s)
    )
    assert block["cost_per_1000_images"] == (
        None if cost is None else pytest.approx(cost, abs=1e-4)
    )
    assert cost_summary(summary, None)["cost_per_1000_images"] is None


def test_input_hashes_and_image_paths_are_shown_per_row_not_filtered():
    """Per-row values (the inputs' hashes, source paths) would make one useless filter option
    per row; the label and axis columns stay filters."""
    import pyarrow as pa

    from sdfleet.jobs.report import coded_columns

    table = pa.table(
        {
            "style": ["ink", "oil"],
            "inputs_sha256": ["init_image=aa;inpaint=bb", "init_image=cc;inpaint=dd"],
            "mask_image": ["/m/a.png", "/m/b.png"],
            "control_image": ["/c/a.png", "/c/b.png"],
        }
    )
    assert set(coded_columns(table)) == {"style"}


@pytest.mark.slow
def test_the_marketing_matrix_example_runs_end_to_end_into_a_report(tiny_dir, tmp_path, capsys):
    """jobs/examples/marketing_matrix_job.yaml as its header says: run, then report with a
    style x aspect grid (4 products x 3 styles x 3 aspects x 2 seeds = 72 images)."""
    out = tmp_path / "out"
    job = REPO / "jobs" / "examples" / "marketing_matrix_job.yaml"
    assert main(["run", str(job), "--out", str(out), "--executor", "local", "-q"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["error"]) == (72, 0)
    assert summary["cost"]["cost_per_1000_images"] > 0  # the job's price_per_gpu_hour
    grid = ["report", str(out), "--grid", "style,aspect", "--where", "seed_index=0"]
    assert main(grid) == 0
    report = out / "report"
    assert (report / "index.html").is_file()
    pngs = sorted(report.rglob("xyz_style_aspect*.png"))
    assert pngs, sorted(p.name for p in report.rglob("*.png"))[:20]
    with Image.open(pngs[0]) as picture:  # 3 aspects x 3 styles of cells, with labels
        assert picture.width > 3 * 32 and picture.height > 3 * 32
