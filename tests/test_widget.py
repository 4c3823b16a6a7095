"""The explorer as a notebook widget (cnnlab.widget): its request handler against the server's,
and the widget in a real JupyterLab on 127.0.0.1 driven from Chromium (skipped with a reason
where Chromium, Playwright or JupyterLab is missing)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("anywidget", reason="the notebook extra is not installed: pip install 'cnnlab[notebook]'")

from cnnlab import explore, widget  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]


def _private_copy(run: Path, dst: Path) -> Path:
    """A copy of a session run of its own (the explorer writes its cache into the run folder)."""
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "run.json"):
        shutil.copy2(run / name, dst / name)
    return dst


@pytest.fixture(scope="module")
def plain_run(mnist_run, tmp_path_factory) -> Path:
    """The session's plain run (conftest.py), in a folder of this module's own."""
    return _private_copy(mnist_run, tmp_path_factory.mktemp("runs") / "plain")


@pytest.fixture(scope="module")
def learner_run(mnist_run_bn, tmp_path_factory) -> Path:
    """Another run, the session's batch-norm one (the learner's own run beside the report's)."""
    return _private_copy(mnist_run_bn, tmp_path_factory.mktemp("runs") / "learner")


def test_widget_answers_like_the_server(plain_run, mnist_dir):
    """The widget's message handler and the HTTP route both call Explorer.request: same answer."""
    w = widget.widget(plain_run, data_dir=mnist_dir)
    sent = []
    w.send = sent.append
    w._on_request(w, {"id": 7, "method": "POST", "path": "/api/analyze", "body": {"test": 5, "occlusion": False}}, [])
    (msg,) = sent
    assert msg["id"] == 7 and msg["ok"] is True
    direct = explore.Explorer([plain_run], data_dir=mnist_dir).request("POST", "/api/analyze", {"test": 5, "occlusion": False})
    assert msg["data"]["runs"][0]["probs"] == direct["runs"][0]["probs"]
    # a bad request is a one-line message back to the page, and the kernel keeps going
    w._on_request(w, {"id": 8, "method": "POST", "path": "/api/analyze", "body": {"test": 10**6}}, [])
    assert sent[-1]["ok"] is False and "out of range" in sent[-1]["error"]
    # the widget's front end is the page's own script and style sheet
    assert w._esm == (ROOT / "src/cnnlab/static/explore.js").read_text(encoding="utf-8")
    assert 'id="cnnlab-explore"' in w._html and "<html" not in w._html


def need_chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM}: apt-get install chromium (CI's .ci/run does)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")


def seven_png() -> bytes:
    """A photo of a 7: dark ink on light paper."""
    import io

    from PIL import Image, ImageDraw
    im = Image.new("RGB", (200, 200), (240, 238, 230))
    ImageDraw.Draw(im).line([(40, 40), (160, 40), (90, 170)], fill=(20, 20, 30), width=14)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def check_widgets_are_independent(page, n_expected: int = 2) -> None:
    """Two explorer widgets on one page: each one's controls act on that widget only. The second's
    "Upload a photo…" opens its own file picker and the photo lands in it; its checkbox label
    toggles its own checkbox; no element id is shared and every label points inside its widget."""
    roots = page.locator(".cnnlab-explore")
    assert roots.count() == n_expected
    first, second = roots.nth(0), roots.nth(1)
    caption = "p[id^=seen-caption]"
    # text_content, not inner_text: JupyterLab skips rendering cells out of view (content-visibility)
    first_before = (first.locator(caption).text_content(), first.locator("[data-testid=pred-0]").all_text_contents())
    with page.expect_file_chooser() as chooser:
        second.get_by_text("Upload a photo…").click()
    assert chooser.value.element.evaluate("(input, root) => root.contains(input)", second.element_handle())
    chooser.value.set_files(files=[{"name": "seven.png", "mimeType": "image/png", "buffer": seven_png()}])
    deadline = time.monotonic() + 60
    while not second.locator("[data-testid=pred-0]").count():
        assert time.monotonic() < deadline, "the upload did not reach the second widget within 60 s"
        page.wait_for_timeout(200)
    assert second.locator(caption).text_content().startswith("uploaded photo")
    assert (first.locator(caption).text_content(), first.locator("[data-testid=pred-0]").all_text_contents()) == first_before
    # the checkbox label toggles its own widget's checkbox only
    boxes = [r.locator("input[type=checkbox]") for r in (first, second)]
    assert boxes[0].is_checked() and boxes[1].is_checked()
    second.get_by_text("stretch colours to the map's range").click()
    assert boxes[0].is_checked() and not boxes[1].is_checked()
    first.get_by_text("stretch colours to the map's range").click()
    assert not boxes[0].is_checked() and not boxes[1].is_checked()
    ids = page.evaluate("Array.from(document.querySelectorAll('.cnnlab-explore [id]')).map(e => e.id)")
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    stray = page.evaluate("""Array.from(document.querySelectorAll('.cnnlab-explore')).flatMap(root =>
        Array.from(root.querySelectorAll('label[for], output[for]'))
          .filter(l => !l.getAttribute('for').split(' ').every(id => root.contains(document.getElementById(id))))
          .map(l => l.getAttribute('for')))""")
    assert stray == []


HOST = "http://cnnlab.test"


@pytest.mark.browser
def test_two_widgets_in_one_page_act_independently(plain_run, learner_run, mnist_dir):
    """The widget's own front end (its _esm, _css and _html) rendered twice in one Chromium page,
    as a notebook shows two explorer cells (the report's run beside a learner's), each talking to
    its own Python widget (the kernel's side, through ExplorerWidget._on_request)."""
    sync_api = need_chromium()
    widgets = [widget.widget(plain_run, data_dir=mnist_dir), widget.widget(learner_run, data_dir=mnist_dir)]

    def kernel(i: int, msg: dict) -> list[dict]:
        sent: list[dict] = []
        widgets[i].send = sent.append
        widgets[i]._on_request(widgets[i], msg, [])
        return sent
    fragment = json.dumps(widgets[0]._html).replace("</", "<\\/")
    page_html = f"""<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/explore.css"></head>
<body><div class="cell" id="out0"></div><div class="cell" id="out1"></div>
<script type="module">
import explorer from '/explore.js';
const html = {fragment};
for (const i of [0, 1]) {{
  const handlers = [];
  const model = {{ get: (k) => (k === '_html' ? html : undefined),
    on: (ev, cb) => {{ if (ev === 'msg:custom') handlers.push(cb); }},
    send: (msg) => {{ window.cnnlabKernel(i, msg).then((replies) => replies.forEach((r) => handlers.forEach((h) => h(r, [])))); }} }};
  explorer.render({{ model, el: document.getElementById('out' + i) }});
}}
</script></body></html>"""
    bodies = {"/": (page_html, "text/html"), "/explore.js": (widgets[0]._esm, "text/javascript"),
              "/explore.css": (widgets[0]._css, "text/css")}
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.expose_function("cnnlabKernel", kernel)
        page.route(f"{HOST}/**", lambda route: route.fulfill(
            body=bodies[route.request.url[len(HOST):]][0], content_type=bodies[route.request.url[len(HOST):]][1]))
        page.goto(f"{HOST}/")
        deadline = time.monotonic() + 60
        while page.locator(".cnnlab-explore[data-ready='1']").count() < 2:
            assert time.monotonic() < deadline and not errors, errors
            page.wait_for_timeout(200)
        titles = [page.locator(".cnnlab-explore header span").nth(i).inner_text() for i in range(2)]
        assert titles[0].startswith("plain") and titles[1].startswith("learner"), titles
        check_widgets_are_independent(page)
        # each widget quotes what was measured on its own run (the two runs differ)
        while page.locator(".cnnlab-explore[data-calibrated='1']").count() < 2:
            assert time.monotonic() < deadline + 60, "the widgets showed no measured notes within 120 s"
            page.wait_for_timeout(200)
        notes = [w.explorer.calibration()["notes"] for w in widgets]
        assert notes[0] != notes[1]
        for i, note in enumerate(notes):
            root = page.locator(".cnnlab-explore").nth(i)
            assert root.locator("p[id^=confidence-note]").text_content() == " ".join(note["confidence"])
            assert root.locator("p[id^=unsure-rule]").text_content().endswith(" ".join(note["unsure"]))
        assert errors == []
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook(path: Path, runs: list[Path], data_dir: Path) -> None:
    """One explorer cell per run (the report's notebook shows one; a learner adds their own)."""
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(f"from cnnlab.widget import widget\nwidget({str(run)!r}, data_dir={str(data_dir)!r})")
                for run in runs]
    nbformat.write(nb, str(path))


@pytest.mark.slow          # ~27 s: a JupyterLab server and Chromium (the widget's own tests run without them)
@pytest.mark.browser
def test_widget_in_jupyterlab(plain_run, learner_run, mnist_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not installed at {CHROMIUM}: apt-get install chromium (CI's .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (the notebook extra)")
    from drawings import DIGITS
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    notebook(nbdir / "explore.ipynb", [plain_run, learner_run], mnist_dir)
    # JupyterLab's "get notified about news?" prompt would cover the widget in the screenshot
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "IPYTHONDIR": str(tmp_path / "ipython")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}",
                             "--ServerApp.port_retries=0"]
                            # CI and this machine run as root, which JupyterLab refuses without this
                            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("jupyter lab did not start: " + (tmp_path / "lab.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.goto(f"{base}/lab/tree/explore.ipynb?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            # run the cell only once the kernel is up (an earlier Shift+Enter is lost)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)
            page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Shift+Enter")
            try:
                page.wait_for_selector(".cnnlab-explore[data-ready='1']", timeout=90_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "lab.png"))
                raise AssertionError("the widget did not load; browser console: " + " | ".join(console[-20:])) from None
            canvas = page.locator(".cnnlab-explore canvas").first
            canvas.scroll_into_view_if_needed()
            box = canvas.bounding_box()
            k = box["width"] / 280
            for stroke in DIGITS["1"]:
                page.mouse.move(box["x"] + k * stroke[0][0], box["y"] + k * stroke[0][1])
                page.mouse.down()
                for x, y in stroke[1:]:
                    page.mouse.move(box["x"] + k * x, box["y"] + k * y, steps=8)
                page.mouse.up()
            pred = page.locator(".cnnlab-explore [data-testid=pred-0]")
            deadline = time.monotonic() + 60
            while not (page.locator(".cnnlab-explore[data-busy='0'] .occ img").count() and pred.count()):
                assert time.monotonic() < deadline, "the widget showed no prediction within 60 s"
                page.wait_for_timeout(200)
            assert pred.inner_text() == "1"
            if os.environ.get("CNNLAB_SCREENSHOTS"):        # the README's picture
                if page.get_by_role("button", name="No", exact=True).count():
                    page.get_by_role("button", name="No", exact=True).click()
                    page.wait_for_timeout(1000)      # JupyterLab's news prompt
                page.screenshot(path=str(ROOT / "docs" / "explore-widget-jupyterlab.png"))
            # the second cell: a learner's own run in a second widget, beside the first
            page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").nth(1).click()
            page.keyboard.press("Shift+Enter")
            deadline = time.monotonic() + 90
            while page.locator(".cnnlab-explore[data-ready='1']").count() < 2:
                assert time.monotonic() < deadline, "the second widget did not load; " + " | ".join(console[-20:])
                page.wait_for_timeout(200)
            page.locator(".cnnlab-explore").nth(1).scroll_into_view_if_needed()
            check_widgets_are_independent(page)
            browser.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)        # the server this test started, by its own id
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
