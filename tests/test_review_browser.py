"""The review page in a real browser: Debian's Chromium driven by Selenium through
chromium-driver. A real (tiny) adaptation run is reviewed: the page loads its waveform,
plays the recording and switches to another source at the same moment (A/B), a region is
selected by dragging on the waveform and marked, the marks are saved as the run's
guidance file, and the next `adapt --guidance` reads them and shows which regions steered
it. Skipped, with the reason, where Chromium or its driver is missing."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml

from stemloop.adapt.checkpoint import save_checkpoint
from stemloop.adapt.model import build_model
from stemloop.config import load_config
from tests.signals import speechlike

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no Chromium here: `make sysdeps` installs Debian's chromium and chromium-driver")]
RATE = 16000


def _adapt(tmp_path: Path, library: Path, *extra: str) -> Path:
    from stemloop.flows.cli.main import main
    from stemloop.tasks.state import state_dir

    recording = tmp_path / "reel.wav"
    if not recording.exists():
        t = np.arange(5 * RATE) / RATE
        voice = speechlike(RATE, 5.0, 2, peak=0.4) * (t < 2.5)  # a voice, then hum alone
        hum = 0.05 * np.sin(2 * np.pi * 60 * t)
        sf.write(recording, (voice + hum).astype(np.float32), RATE, subtype="FLOAT")
        torch.manual_seed(0)
        config = load_config("smoke").model.model_copy(update={"complement": "background"})
        save_checkpoint(tmp_path / "tiny.pt", build_model(config, RATE))
    sets = [f"loop.model={tmp_path / 'tiny.pt'}", f"mixbus.library_dir={library}",
            "loop.max_iterations=1", "loop.patience=10", "tracking.enabled=false"]
    assert main(["adapt", str(recording), "--config", "smoke", *extra,
                 *[a for s in sets for a in ("--set", s)]]) == 0
    runs = sorted((state_dir() / "runs").glob("reel-*/run-*"), key=lambda p: p.stat().st_mtime)
    return runs[-1]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def _wait(check, seconds: float = 30.0, what: str = "the page"):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_review_page_plays_a_b_marks_a_region_and_the_next_run_uses_it(
        prefect_harness, tiny_library, tmp_path, browser, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from stemloop.flows.review_app import Review

    run_dir = _adapt(tmp_path, tiny_library)
    server = Review(run_dir)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        browser.get(server.url)
        _wait(lambda: browser.execute_script("return document.body.dataset.ready"),
              what="the waveform")
        assert "quality estimate" in browser.find_element(By.ID, "figures").text
        assert "delivered" in browser.find_element(By.ID, "decision").text
        buttons = browser.find_elements(By.CSS_SELECTOR, "button.source")
        labels = [b.text for b in buttons]
        assert labels[0] == "recording" and "0: dialogue" in labels[1]
        assert any("removed (background)" in label for label in labels)

        browser.find_element(By.ID, "play").click()  # the recording plays...
        _wait(lambda: browser.execute_script("return review.audios[0].currentTime > 0.5"),
              what="playback")
        other = labels.index(next(x for x in labels if x.startswith("1: dialogue")))
        buttons[other].click()  # ... and B takes over at the same moment, still playing
        moment = browser.execute_script(
            "return [review.audios[0].currentTime, review.audios[arguments[0]].currentTime,"
            " review.audios[arguments[0]].paused, review.audios[0].paused, review.current()]",
            other)
        assert abs(moment[0] - moment[1]) < 0.3 and moment[2:] == [False, True, other]
        browser.find_element(By.ID, "play").click()

        wave = browser.find_element(By.ID, "waveform")  # a person drags a region over
        width = wave.size["width"]  # the second half (hum alone: the cull never takes it)
        ActionChains(browser).move_to_element_with_offset(wave, width // 10, 0) \
            .click_and_hold().move_by_offset(width // 5, 0).release().perform()
        span = browser.execute_script("const r = review.selected(); "
                                      "return r && [r.start, r.end]")
        assert span and 2.6 < span[0] < span[1] < 4.9, span
        browser.find_element(By.CSS_SELECTOR, "button.mark[data-kind='target']").click()
        assert "dialogue is clean here" in browser.find_element(By.ID, "marks").text
        browser.find_element(By.ID, "save").click()  # ... and saves it as guidance
        _wait(lambda: (run_dir / "guidance.yaml").is_file(), what="the guidance file")
    finally:
        server.shutdown()
        server.server_close()
    guidance = yaml.safe_load((run_dir / "guidance.yaml").read_text())
    assert guidance["recording"] == str(tmp_path / "reel.wav")
    assert guidance["target"] == [[round(span[0], 3), round(span[1], 3)]]
    assert guidance["complement"] == [] and guidance["exclude"] == []

    steered = _adapt(tmp_path, tiny_library, "--guidance", str(run_dir / "guidance.yaml"))
    assert steered != run_dir  # the marks change what the run computes: a run of its own
    report = yaml.safe_load((steered / "report.json").read_text())
    assert report["guidance"]["target"] == guidance["target"]
    marked = guidance["target"][0]  # the mark (to the millisecond) is target material now,
    assert _covered(steered, marked, held_out=True) == 1.0  # trained on or held out...
    assert _covered(run_dir, marked, held_out=False) < 0.1  # ...where the cull took none
    from stemloop.flows.review_app import render

    page = render(steered, served=False)
    assert "Regions that steered this run" in page


def _covered(run_dir: Path, span: list[float], held_out: bool) -> float:
    """The share of ``span`` that iteration 0 took as target material: its training
    segments (``cull.parquet``) and, with ``held_out``, the held-out regions."""
    culled = pd.read_parquet(run_dir / "iter-000" / "dataset" / "cull.parquet")
    pieces = list(culled[culled["stem"] == "target"][["start_s", "stop_s"]]
                  .itertuples(index=False))
    if held_out:
        pieces += json.loads((run_dir / "holdout.json").read_text())["regions"]
    grid = np.linspace(span[0], span[1], 100, endpoint=False)
    return float(np.mean([any(a <= x < b for a, b in pieces) for x in grid]))
