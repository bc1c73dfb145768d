"""`dvc plots show` and `dvc plots diff` draw the project's plots with no network.

.dvc/config points `plots.html_template` at build/plots_template.html, which `make setup` builds with vega,
vega-lite and vega-embed inline (scripts/build_plots_template.py). These tests run the real DVC commands in a
copy of the project, render the pages with headless Chromium whose every http(s) request fails, and look at
the pixels: the lines must be there, in DVC's colours. DVC's default page, which loads the same libraries
from a CDN, goes through the same checks and must draw nothing, which shows the checks can fail. The PNG of
one plot that `make loss-curve` draws with vl-convert, without a browser, goes through them too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

TEMPLATE = REPO_ROOT / "build" / "plots_template.html"
CONFIGURED_TEMPLATE = "../build/plots_template.html"  # .dvc/config's value; DVC joins it to the .dvc dir


def _load_tool():
    path = REPO_ROOT / "scripts" / "build_plots_template.py"
    spec = importlib.util.spec_from_file_location("build_plots_template", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


tool = _load_tool()

# dvc.yaml's top-level plots; DVC also draws the train stage's plots outputs (metrics/train_history.json,
# metrics/eval_history.json) on their own, so a page has at least these and every chart on it must be drawn.
PLOTS = ("loss_by_step", "loss_by_time", "learning_rate")
# DVC gives each revision a colour of its palette (and each field of a plot a dash pattern): `plots show` draws
# in the first colour, `plots diff` of two commits in the first two.


@pytest.fixture(scope="session")
def template() -> Path:
    if not TEMPLATE.is_file():
        # Not a skip: `make setup` (which `make test` runs) builds it, so its absence is a broken set-up.
        pytest.fail(f"{TEMPLATE} does not exist: run `make setup` (it builds the offline plots template)")
    return TEMPLATE


@pytest.fixture(scope="session")
def chromium() -> str:
    binary = tool.find_chromium()
    if binary is None:
        message = ("Chromium is not installed, so the plots pages cannot be rendered "
                   "(apt-get install --no-install-recommends chromium; .ci/run does it)")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def plots_project(project_repo, template):
    """The project copy with the built template where .dvc/config says (build/ is git-ignored, so the
    fixture's copy of the tracked files leaves it out)."""
    target = project_repo.path / "build" / "plots_template.html"
    target.parent.mkdir()
    shutil.copy2(template, target)
    return project_repo


def training_history(epochs: int, learning_rate: float, final_loss: float) -> dict[str, list[dict]]:
    """What the train stage writes to metrics/train_history.json (the training loss and learning rate every 10
    steps, falling towards ``final_loss`` and decaying on a cosine to a tenth) and metrics/eval_history.json
    (each evaluation, every 100 steps and at each epoch's end, a little above training)."""
    steps_per_epoch, total = 181, 181 * epochs

    def loss(step: int) -> float:
        return final_loss + 5.0 * math.exp(-0.4 * step / steps_per_epoch)

    logged = [{"step": step, "epoch": round(step / steps_per_epoch, 6), "tokens": 4096 * step,
               "train_loss": round(loss(step), 4), "seconds": 0.185 * step,
               "learning_rate": learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total))) }
              for step in range(10, total + 1, 10)]
    evaluated = [{"step": step, "epoch": round(step / steps_per_epoch, 6), "tokens": 4096 * step,
                  "seconds": 0.185 * step, "validation_loss": round(loss(step) + 0.15 + 0.01 * step / 181, 4),
                  "validation_bits_per_byte": round((loss(step) + 0.15) / 2.45, 4)}
                 for step in sorted({*range(100, total + 1, 100), *range(steps_per_epoch, total + 1, steps_per_epoch)})]
    return {"train_history.json": logged, "eval_history.json": evaluated}


def commit_history(repo, history: dict[str, list[dict]], message: str) -> None:
    for name, rows in history.items():
        path = repo.path / "metrics" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
        repo.run("git", "add", f"metrics/{name}")
    repo.run("git", "commit", "-q", "-m", message)


def external_references(page: str) -> list[str]:
    """Every http(s) URL the page's markup (not its inline scripts' text) could load, and any <script src>."""
    markup = re.sub(r"(<script\b[^>]*>).*?</script>", r"\1</script>", page, flags=re.DOTALL | re.IGNORECASE)
    return (re.findall(r"<script\b[^>]*\bsrc\s*=[^>]*>", markup, flags=re.IGNORECASE)
            + re.findall(r"https?://[^\s\"'<>]+", markup))


def embedded_charts(page: str) -> list[str]:
    """The ids of the charts DVC put on the page, one vegaEmbed('#id', spec) call each."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page)


def drawn_marks(dom: str) -> int:
    """How many vega views were drawn: each is a <canvas class="marks"> (or <svg class="marks">)."""
    return len(re.findall(r"<(?:canvas|svg)\b[^>]*\bclass=\"marks\"", dom))


def render(page: Path, tmp_path: Path) -> tuple[str, "tool.ChartPixels"]:
    dom = tool.dump_dom(page)
    png = tmp_path / f"{page.parent.name}.png"
    tool.screenshot(page, png)
    return dom, tool.chart_pixels(tool.read_png(png))


def test_template_carries_the_pinned_libraries_and_no_cdn(template):
    page = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{refresh_tag}" in page
    # DVC puts its CDN <script src> tags where {scripts} is: the template must not have it.
    assert "{scripts}" not in page
    assert external_references(page) == []
    assert page.count("<script>") == 1
    versions = tool.library_versions()
    assert ", ".join(f"{name}@{version}" for name, version in versions.items()) in page
    # The builds name their own versions: vega's in full, vega-lite's as MAJOR.MINOR.PATCH.
    assert f'"{versions["vega"]}"' in page and f'"{versions["vega-lite"]}.' in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_plots_show_draws_offline(plots_project, chromium, tmp_path):
    commit_history(plots_project, training_history(12, 3e-4, 3.1), "train for 12 epochs")
    assert plots_project.dvc("config", "plots.html_template").stdout.strip() == CONFIGURED_TEMPLATE

    plots_project.dvc("plots", "show")

    page_path = plots_project.path / "dvc_plots" / "index.html"
    page = page_path.read_text(encoding="utf-8")
    # DVC filled the project's template: the page starts as the template does, libraries included.
    template_head = (plots_project.path / "build" / "plots_template.html").read_text().split("{refresh_tag}")[0]
    assert page.startswith(template_head)
    assert external_references(page) == []
    charts = embedded_charts(page)
    assert set(PLOTS) <= set(charts), charts

    dom, pixels = render(page_path, tmp_path)
    assert drawn_marks(dom) == len(charts), dom[-3000:]
    assert pixels.colours_drawn(tool.MIN_LINE_PIXELS) == tool.dvc_palette()[:1], pixels
    assert pixels.non_white_fraction > 0.01, pixels


def test_plots_diff_draws_both_revisions_offline(plots_project, chromium, tmp_path):
    commit_history(plots_project, training_history(8, 3e-4, 3.4), "train for 8 epochs")
    commit_history(plots_project, training_history(12, 1e-3, 2.9), "train for 12 epochs, higher learning rate")

    plots_project.dvc("plots", "diff", "HEAD~1", "HEAD", "--out", "diff_page")

    page_path = plots_project.path / "diff_page" / "index.html"
    page = page_path.read_text(encoding="utf-8")
    assert external_references(page) == []
    charts = embedded_charts(page)
    assert set(PLOTS) <= set(charts), charts

    dom, pixels = render(page_path, tmp_path)
    assert drawn_marks(dom) == len(charts), dom[-3000:]
    # A second colour: both commits were drawn.
    assert pixels.colours_drawn(tool.MIN_LINE_PIXELS) == tool.dvc_palette()[:2], pixels


def test_dvc_default_cdn_page_draws_nothing_offline(plots_project, chromium, tmp_path):
    """The control: the same data, commands and checks with DVC's own page (no html_template) fail."""
    commit_history(plots_project, training_history(12, 3e-4, 3.1), "train for 12 epochs")
    plots_project.dvc("config", "--unset", "plots.html_template")

    plots_project.dvc("plots", "show", "--out", "default_page")

    page_path = plots_project.path / "default_page" / "index.html"
    page = page_path.read_text(encoding="utf-8")
    assert any("cdn.jsdelivr.net/npm/vega@" in reference for reference in external_references(page))
    assert set(PLOTS) <= set(embedded_charts(page))  # the same charts were asked for ...

    dom, pixels = render(page_path, tmp_path)
    assert drawn_marks(dom) == 0  # ... and none was drawn
    assert pixels.colours_drawn(tool.MIN_LINE_PIXELS) == [], pixels
    with pytest.raises(tool.BuildError, match="no chart was drawn"):
        tool.check_chart(tool.read_png(tmp_path / "default_page.png"), min_colours=1)


def test_a_plot_is_drawn_to_png_without_a_browser(project_repo, tmp_path):
    """`make loss-curve`'s way: the vega-lite spec of `dvc plots show PLOT --json`, rendered by vl-convert."""
    commit_history(project_repo, training_history(12, 3e-4, 3.1), "train for 12 epochs")
    report = tmp_path / "loss_by_step.json"
    report.write_text(project_repo.dvc("plots", "show", "loss_by_step", "--json").stdout)
    png = tmp_path / "loss_curve.png"

    assert tool.main(["render", str(report), str(png), "--scale", "2"]) == 0

    image = tool.read_png(png)
    # The spec's 300x300 plot, its axes and legend, at twice the size.
    assert image.width > 600 and image.height > 600
    assert tool.chart_pixels(image).colours_drawn(tool.MIN_LINE_PIXELS) == tool.dvc_palette()[:1]


def test_render_refuses_a_report_of_no_plot_or_of_several(project_repo, tmp_path, capsys):
    commit_history(project_repo, training_history(4, 3e-4, 3.5), "train for 4 epochs")
    for name, arguments in (("none.json", ("no_such_plot",)), ("all.json", ())):
        report = tmp_path / name
        report.write_text(project_repo.dvc("plots", "show", *arguments, "--json").stdout)
        assert tool.main(["render", str(report), str(tmp_path / "out.png")]) == 1
        assert "not one: name one plot" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_missing_template_fails_with_dvcs_message(project_repo):
    """A clone where `make setup` has not run: .dvc/config names a file that is not there. DVC then takes
    the path itself for the page's text and stops with this message (the README's troubleshooting entry)."""
    commit_history(project_repo, training_history(4, 3e-4, 3.5), "train for 4 epochs")

    done = project_repo.dvc("plots", "show", check=False)

    assert done.returncode != 0
    assert "HTML template has to contain '{plot_divs}'" in done.stdout + done.stderr
    assert not (project_repo.path / "dvc_plots" / "index.html").exists()


# --- The build script's own checks --------------------------------------------------------------------

def test_inlined_code_cannot_end_the_script_or_be_filled_in_by_dvc():
    inlined = tool.inline_script('var a="</script><b>",b=/<\\/SCRIPT/;')
    assert "</script" not in inlined.lower()
    assert inlined == 'var a="<\\/script><b>",b=/<\\/SCRIPT/;'
    for placeholder in tool.DVC_PLACEHOLDERS:
        with pytest.raises(tool.BuildError, match="cannot be inlined"):
            tool.inline_script(f"var s='{placeholder}';")


def _png_with_filters(width: int, height: int, rgba: bytes) -> bytes:
    """An RGBA PNG whose rows use every filter type in turn (Chromium's encoder picks them per row)."""
    bpp, stride = 4, width * 4
    rows, previous = [], bytes(stride)
    for y in range(height):
        line = rgba[y * stride:(y + 1) * stride]
        kind = y % 5
        out = bytearray()
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up = previous[x]
            up_left = previous[x - bpp] if x >= bpp else 0
            predictor = (0, left, up, (left + up) // 2, tool._paeth(left, up, up_left))[kind]
            out.append((line[x] - predictor) & 0xFF)
        rows.append(bytes([kind]) + out)
        previous = line

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
            + chunk(b"IEND", b""))


def test_png_decoder_and_colour_count(tmp_path):
    width, height = 40, 30
    # A white page with a 10x4 block in DVC's first line colour, and a gradient row to exercise the filters
    # (at least 52 away from every palette colour, so it counts as ink but as no line).
    purple = tuple(int(tool.dvc_palette()[0][i:i + 2], 16) for i in (1, 3, 5))
    pixels = []
    for y in range(height):
        for x in range(width):
            if 12 <= x < 22 and 8 <= y < 12:
                pixels.append(purple)
            elif y == 20:
                pixels.append((x * 5, x * 3, 255 - x * 4))
            else:
                pixels.append((255, 255, 255))
    rgba = b"".join(bytes((*p, 255)) for p in pixels)
    source = tmp_path / "filters.png"
    source.write_bytes(_png_with_filters(width, height, rgba))

    image = tool.read_png(source)
    assert (image.width, image.height) == (width, height)
    assert image.rgb == b"".join(bytes(p) for p in pixels)

    found = tool.chart_pixels(image)
    assert found.per_colour[tool.dvc_palette()[0]] == 40
    assert found.colours_drawn(40) == [tool.dvc_palette()[0]]
