"""Screenshots of `stemloop review` for the docs: a finished run's page served on loopback,
opened in Debian's headless Chromium (Selenium), a source switched for A/B, two regions
dragged on the waveform and marked, the marks saved; one PNG after loading, one after
marking. The guidance file the page saved is left in the run folder.

    python bench/review_screenshots.py RUN_DIR --out docs/
    python bench/review_screenshots.py RUN_DIR --out docs/ --name review-steered --loaded-only
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--name", default="review", help="file name prefix")
    parser.add_argument("--loaded-only", action="store_true",
                        help="one screenshot of the loaded page, no marks")
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from stemloop.flows.review_app import Review

    server = Review(args.run.resolve())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1300,1500"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(server.url)
        for _ in range(300):
            if browser.execute_script("return document.body.dataset.ready"):
                break
            time.sleep(0.1)
        browser.save_screenshot(str(args.out / f"{args.name}-loaded.png"))
        if args.loaded_only:
            return
        buttons = browser.find_elements(By.CSS_SELECTOR, "button.source")
        browser.find_element(By.ID, "play").click()
        time.sleep(1.5)
        buttons[min(3, len(buttons) - 1)].click()  # A/B: the delivered dialogue, same moment
        time.sleep(1.0)
        browser.find_element(By.ID, "play").click()
        wave = browser.find_element(By.ID, "waveform")
        width = wave.size["width"]
        for start, kind in ((-width // 3, "target"), (width // 6, "complement")):
            ActionChains(browser).move_to_element_with_offset(wave, start, 0) \
                .click_and_hold().move_by_offset(width // 8, 0).release().perform()
            browser.find_element(By.CSS_SELECTOR, f"button.mark[data-kind='{kind}']").click()
        browser.find_element(By.ID, "save").click()
        time.sleep(1.0)
        browser.execute_script("document.getElementById('listen').scrollIntoView()")
        browser.save_screenshot(str(args.out / f"{args.name}-marked.png"))
        print(browser.find_element(By.ID, "saved").text)
    finally:
        browser.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
