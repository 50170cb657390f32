"""Regenerate docs/report.png: a real HTML report, screenshotted by headless Chromium.

    python scripts/screenshot_report.py                      # tiny fashion-mnist study, ~1 min
    python scripts/screenshot_report.py --study reports/fashion-mnist   # an existing result

Without --study it runs `fashion-mnist` at the tiny preset (4 steps, 64 images per set) in a
temporary folder, with data from $DGMOOD_MIRROR / $DGMOOD_DATA as usual. Needs Playwright
(`pip install -e '.[dev]'`) and a system Chromium (`apt-get install chromium`); it never
downloads a browser.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dgmood.reporting.html import HEADLESS_CHROMIUM_ARGS

CHROMIUM_ARGS = HEADLESS_CHROMIUM_ARGS


def tiny_study(out_dir: Path) -> Path:
    from dgmood.studies import StudyContext, run_study

    ctx = StudyContext(out_dir=out_dir, preset="tiny", steps=4, limit=64, progress=False)
    run_study("fashion-mnist", ctx, ["train_limit=64"])
    return out_dir


def screenshot(report: Path, out_png: Path, chromium: str, width: int, max_height: int) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 800})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.resolve().as_uri(), wait_until="load")
        height = min(page.evaluate("document.documentElement.scrollHeight"), max_height)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(out_png),
            full_page=True,
            clip={"x": 0, "y": 0, "width": width, "height": height},
        )
        browser.close()
    if errors:
        raise SystemExit(f"the page logged errors: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, help="an existing study result folder")
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--width", type=int, default=1320)
    parser.add_argument("--max-height", type=int, default=2400)
    args = parser.parse_args()

    from dgmood.reporting.html import rebuild_reports

    with tempfile.TemporaryDirectory() as scratch:
        study = args.study or tiny_study(Path(scratch) / "fashion-mnist")
        (report,) = rebuild_reports(study)
        screenshot(report, args.out, args.chromium, args.width, args.max_height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
