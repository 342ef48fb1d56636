"""The run report (tools/report) of a tiny pipeline run, rendered in headless Chromium (Debian's chromium and
chromedriver, through Selenium, offline): the summary table's values are the evaluation JSONs', nothing loads from
elsewhere, no absolute path of this machine is on the page, failures come first in the gallery, the page is logged to
the parent MLflow run; screenshots in runs/test-artifacts/.

Without the browser the test fails (``make test`` installs it through ``make system-packages``); it never skips.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from scripts import BUNDLE_ROOT
from tests.browser import headless_chromium
from tools.demo import held_out_folder
from tools.report import main as report_main
from tools.report.results import resolve

ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "test-artifacts"
CONFIGS = BUNDLE_ROOT / "configs"


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory) -> dict:
    """Every stage trained one epoch (tiny profile, local MLflow store), inference on the test split plus a broken
    file (as make demo runs them, in this process), a seed table made of the run's own figures, then the report."""
    from monai.bundle import ConfigParser
    from monai.bundle import run as bundle_run

    from scripts.pipeline import train_all

    root = tmp_path_factory.mktemp("report")
    out, models = root / "run", root / "models"
    stages = ConfigParser.load_config_files(CONFIGS / "train.yaml")["stages"]
    summary = train_all(
        stages, profile="tiny", dataset_dir=str(tiny_dataset), output_dir=str(out), models_dir=str(models)
    )
    held_out = held_out_folder(tiny_dataset, out / "split.csv", root / "held_out")
    bundle_run(  # `python -m monai.bundle run inference`, in this process (its imports are paid already)
        "inference",
        config_file=str(CONFIGS / "inference.yaml"),
        input_dir=str(held_out),
        output_dir=str(out / "inference"),
        models_dir=str(models),
        runtime="torch",
        tracking_uri=summary["tracking_uri"],
        **{"preprocessing#transforms#4#conf": 0.0},  # an untrained detector finds a box (tests.test_inference)
    )
    seeds = root / "seeds.json"
    seeds.write_text(json.dumps(seed_table(out)))
    argv = ["tools.report", str(out), "--inference_dir", str(out / "inference"), "--seeds", str(seeds)]
    with patch.object(sys, "argv", argv):  # `python -m tools.report ...` as make demo runs it, in this process
        report_main()
    return {"out": out, "seeds": seeds, "summary": summary, "report": out / "report.html"}


def seed_table(out: Path) -> dict:
    """A seeds.json (tools/seeds.py's shape) whose two seeds are this run's figures times 0.9 and 1.1."""
    auc = json.loads((out / "classifier" / "evaluation.json").read_text())["metrics"]["roc_auc"]["value"]
    methods = json.loads((out / "localisation" / "localisation.json").read_text())["methods"]
    figures = {"classifier/roc_auc": auc}
    figures |= {f"localisation/{m}/{k}": r[k] for m, r in methods.items() for k in ("pointing", "dice")}
    runs = {str(s): {k: v * f for k, v in figures.items()} for s, f in ((0, 0.9), (1, 1.1))}
    stats = {k: {"mean": v, "min": 0.9 * v, "max": 1.1 * v, "n": 2} for k, v in figures.items()}
    return {"seeds": [0, 1], "runs": {"main": runs}, "summary": {"main": stats}}


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system chromedriver, a 1280 x 900 viewport; Selenium Manager never asked."""
    with headless_chromium(["--hide-scrollbars"]) as driver:
        viewport(driver, 900)
        yield driver


def viewport(driver, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )


def shown(value: float, kind: str) -> str:
    """How the page must show ``value``: a percentage with one decimal, or ``kind`` decimals."""
    return f"{100 * value:.1f}%" if kind == "pct" else f"{value:.{int(kind)}f}"


def test_summary_values_are_the_evaluation_jsons(run, browser) -> None:
    from selenium.webdriver.common.by import By

    out = run["out"]
    browser.get(run["report"].as_uri())
    cells = browser.find_elements(By.CSS_SELECTOR, "table.summary-table td[data-source]")
    pointers = {(c.get_attribute("data-source"), c.get_attribute("data-pointer")) for c in cells}
    points = json.loads((out / "classifier" / "evaluation.json").read_text())["operating_points"]
    methods = json.loads((out / "localisation" / "localisation.json").read_text())["methods"]
    shipped = [m for m in methods if " " not in m]  # the summary's maps; the map-mode rows are in their section
    assert shipped and len(shipped) < len(methods)
    expected = {("detector/evaluation.json", "/contains_both_landmarks"), ("detector/evaluation.json", "/mean_iou")}
    expected |= {
        ("classifier/evaluation.json", "/metrics/roc_auc/value"),
        ("classifier/evaluation.json", "/calibration/ece"),
    }
    expected |= {
        ("classifier/evaluation.json", f"/operating_points/suspicious/{k}/value")
        for k in ("sensitivity", "specificity")
    }
    if points["fracture"]["threshold"] != points["suspicious"]["threshold"]:  # else one row pair for both points
        expected |= {
            ("classifier/evaluation.json", f"/operating_points/fracture/{k}/value")
            for k in ("sensitivity", "specificity")
        }
    expected |= {("localisation/localisation.json", f"/methods/{m}/{k}") for m in shipped for k in ("pointing", "dice")}
    expected.add(("seeds", "/summary/main/classifier~1roc_auc/mean"))
    expected |= {("seeds", f"/summary/main/localisation~1{m}~1{k}/mean") for m in shipped for k in ("pointing", "dice")}
    assert expected <= pointers, expected - pointers
    assert not any(" " in p.split("/methods/")[-1].split("/")[0] for _, p in pointers if "/methods/" in p)
    docs = {"seeds": json.loads(run["seeds"].read_text())}
    for cell in cells:
        source, pointer, kind = (cell.get_attribute(f"data-{k}") for k in ("source", "pointer", "kind"))
        if source not in docs:
            docs[source] = json.loads((out / source).read_text())
        value = resolve(docs[source], pointer)
        assert json.loads(cell.get_attribute("data-value")) == value, pointer
        assert cell.find_element(By.CLASS_NAME, "v").text == shown(value, kind), pointer
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))  # the first screen, 1280 x 900


def test_page_is_self_contained_and_names_no_machine_path(run, browser) -> None:
    from selenium.webdriver.common.by import By

    text = run["report"].read_text()
    words = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", text)  # the page without its pictures
    browser.get(run["report"].as_uri())
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not loaded, loaded  # every picture is a data: URI, no script, style sheet or font is fetched
    assert "<script" not in words and "<link" not in words and "@import" not in words and "url(" not in words
    sources = [i.get_attribute("src") for i in browser.find_elements(By.TAG_NAME, "img")]
    assert sources and all(s.startswith("data:image/") for s in sources)
    for href in (a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")):
        assert href.startswith(run["out"].as_uri()), href  # links: files beside the report, by relative path
    root = str(Path(run["out"]).resolve().parents[1])
    for path in (root, str(Path.cwd()), str(Path.home()), "sqlite:////"):
        assert path not in words, path
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_gallery_puts_failures_first_and_page_is_in_mlflow(run, browser) -> None:
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    browser.get(run["report"].as_uri())
    headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#inference h3")]
    assert headings[0] == "Could not be read", headings  # the broken file, then the groups in their order
    assert "corrupt_upload.dcm" in browser.find_element(By.ID, "inference").text
    order = ["Not assessable", "Missed", "False alarms", "Suspicious", "Fracture, correctly", "No fracture, correctly"]
    ranks = [next(i for i, o in enumerate(order) if h.startswith(o)) for h in headings[1:]]
    assert ranks == sorted(ranks), headings
    curves = browser.execute_script("return [...document.querySelectorAll('figcaption')].map(f => f.textContent)")
    assert sum("as logged to MLflow" in c for c in curves) >= 4, curves  # training curves of the stages
    client = MlflowClient(run["summary"]["tracking_uri"])
    names = [a.path for a in client.list_artifacts(run["summary"]["parent_run_id"])]
    assert "report.html" in names, names
    viewport(browser, min(browser.execute_script("return document.documentElement.scrollHeight"), 12000))
    browser.save_screenshot(str(ARTIFACTS / "report_full.png"))
    viewport(browser, 900)


def test_the_report_goes_to_a_remote_mlflow_store_only_with_log_images(tmp_path) -> None:
    from types import SimpleNamespace

    from tools.report.mlflow_run import artifact_check

    def store(uri: str):
        return SimpleNamespace(get_run=lambda _id: SimpleNamespace(info=SimpleNamespace(artifact_uri=uri)))

    remote = store("mlflow-artifacts:/1/abc/artifacts")
    assert "remote" in artifact_check(remote, tmp_path, "abc")  # it shows X-rays: they would leave the machine
    assert artifact_check(remote, tmp_path, "abc", log_images=True) is None
    assert artifact_check(store(f"file://{tmp_path}/mlruns/1/abc/artifacts"), tmp_path, "abc") is None
    assert "outside" in artifact_check(store("file:///elsewhere/mlruns/1/abc/artifacts"), tmp_path, "abc")
