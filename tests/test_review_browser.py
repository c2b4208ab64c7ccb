"""``winnow review`` in a real browser: headless Chromium driven over the DevTools protocol
(a websocket; no driver binary). The keyboard flow end to end, decisions surviving a reload and
a server restart, two tabs at once, an HTML prompt staying text, images only from the
catalog's images folder; and the screenshot in docs/ (rewritten only when
``WINNOW_UPDATE_SCREENSHOT`` is set)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner
from websockets.sync.client import connect

from tests.ci import unavailable
from tests.test_labels import make_catalog
from tests.test_report import CHROMIUM_FLAGS, browser
from winnow.catalog.labels import history
from winnow.catalog.query import read_catalog
from winnow.flows.cli import app as cli
from winnow.flows.review_cli import make_server
from winnow.review.app import create_app

XSS = "<script>window.__xss=1</script><img src=x onerror='window.__xss=1'> a red circle"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "review-screenshot.png"
TIMEOUT = 20.0  # seconds any one wait may take before the test fails


class Server:
    """The review app served by uvicorn in a thread on 127.0.0.1 (a free port, kept on restart)."""

    def __init__(self, root: Path, port: int = 0, token: str | None = None):
        self.server = make_server(create_app(root, token=token, reviewer="tester"), "127.0.0.1", port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            assert time.monotonic() < deadline, "review server did not start"
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)


class Chromium:
    """Headless Chromium and one DevTools websocket; ``tab`` opens a page as its own session."""

    def __init__(self, tmp: Path):
        exe = browser()
        args = [exe, *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={tmp / 'profile'}",
                "--window-size=1280,900", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        deadline, url = time.monotonic() + TIMEOUT, None
        while url is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                break
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                url = match[1]
        if url is None:
            self.proc.kill()
            unavailable("headless chromium did not start its DevTools endpoint")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain its log
        self.ws = connect(url, max_size=None, open_timeout=TIMEOUT)
        self.ids = itertools.count(1)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        message_id = next(self.ids)
        message = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]

    def tab(self, url: str) -> Tab:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tab = Tab(self, session)
        tab.open(url)
        return tab

    def close(self) -> None:
        self.ws.close()
        self.proc.kill()
        self.proc.wait(TIMEOUT)


class Tab:
    def __init__(self, browser_: Chromium, session: str):
        self.browser, self.session = browser_, session

    def send(self, method: str, **params) -> dict:
        return self.browser.send(method, self.session, **params)

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, expression: str):
        """The value of ``expression`` once truthy, with the page idle (no request in flight)."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            value = self.eval(f"document.body && document.body.dataset.busy === '0' && ({expression})")
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.querySelectorAll('#candidates figure, #empty:not([hidden])').length > 0")

    def reload(self) -> None:
        self.eval("document.body.dataset.busy = 'reloading'")
        self.send("Page.reload")
        self.wait("document.querySelectorAll('#candidates figure').length > 0")

    def key(self, key: str) -> None:
        """A real key press (keydown, keyup) as the keyboard sends it."""
        text = key if len(key) == 1 else ""
        self.send("Input.dispatchKeyEvent", type="keyDown", key=key, text=text)
        self.send("Input.dispatchKeyEvent", type="keyUp", key=key)
        self.wait("true")

    def cards(self) -> list[dict]:
        return self.eval(
            "[...document.querySelectorAll('#candidates figure')].map(f => ({id: f.dataset.candidate, "
            "kept: f.classList.contains('kept'), policy: f.classList.contains('policy'), "
            "current: f.classList.contains('current')}))"
        )

    def prompt(self) -> str:
        return self.eval("document.getElementById('prompt').textContent")


@pytest.fixture
def chromium(tmp_path):
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        browser()  # skips here, fails in CI
    b = Chromium(tmp_path)
    yield b
    b.close()


@pytest.fixture
def catalog(tmp_path):
    return make_catalog(tmp_path / "catalog", [XSS, "a blue square", "two green triangles"], n=4)


def decisions(root: Path) -> dict[str, str]:
    rows = read_catalog(root)
    pairs = zip(rows["candidate_id"], rows["human_decision"], strict=True)
    return {c: h if isinstance(h, str) else None for c, h in pairs}


def test_keyboard_flow_end_to_end_and_xss_stays_text(catalog, chromium):
    server = Server(catalog)
    try:
        tab = chromium.tab(server.url)
        # an HTML prompt is shown as text, and nothing in it ran
        assert tab.prompt() == XSS and tab.eval("window.__xss") is None
        assert tab.eval("document.querySelectorAll('#prompt *').length") == 0
        assert tab.eval("document.getElementById('progress').textContent") == "0 / 3 reviewed"
        cards = tab.cards()
        assert [c["policy"] for c in cards] == [True, False, False, False] and cards[0]["current"]
        tab.wait("[...document.images].every(i => i.complete && i.naturalWidth === 16)")
        tab.key("?")
        assert tab.eval("!document.getElementById('help').hidden")
        tab.key("Escape")
        tab.key("ArrowRight")
        tab.key("x")  # keep the second candidate
        tab.key("1")  # reject the first (the policy's pick)
        assert [c["kept"] for c in tab.cards()] == [False, True, False, False]
        assert tab.cards()[1]["current"]
        assert tab.eval("document.getElementById('progress').textContent") == "1 / 3 reviewed"
        tab.key("u")  # undo the reject of the first
        assert [c["kept"] for c in tab.cards()] == [True, True, False, False]
        tab.key("j")
        assert tab.prompt() == "a blue square"
        tab.key("a")  # accept the policy's picks and go on
        assert tab.prompt() == "two green triangles"
        tab.key("r")  # reject all
        assert not any(c["kept"] for c in tab.cards())
        tab.key("k")
        tab.key("k")
        assert tab.prompt() == XSS
        assert tab.eval("document.getElementById('progress').textContent") == "3 / 3 reviewed"
        # the stored decisions are what the page showed
        stored = decisions(catalog)
        ids = sorted(stored)
        assert [stored[i] for i in ids[:4]] == [None, "keep", None, None]  # the undo cleared #1
        assert [stored[i] for i in ids[4:8]] == ["keep", "reject", "reject", "reject"]
        assert [stored[i] for i in ids[8:]] == ["reject"] * 4
        # filters: disagreed shows only the first prompt; unreviewed none
        tab.eval("document.querySelector('[name=disagreed]').click()")
        tab.wait("document.getElementById('position').textContent === 'prompt 1 of 2'")
        assert tab.prompt() == XSS  # third prompt: its pick rejected, so it disagrees too
        tab.eval("document.querySelector('[name=disagreed]').click()")
        tab.eval("document.querySelector('[name=unreviewed]').click()")
        tab.wait("!document.getElementById('empty').hidden")
        tab.eval("document.querySelector('[name=unreviewed]').click()")
        tab.eval("document.querySelector('[name=floor_failed]').click()")
        tab.wait("document.getElementById('position').textContent === 'prompt 1 of 3'")
        tab.eval("document.querySelector('[name=floor_failed]').click()")
        tab.wait("document.getElementById('position').textContent === 'prompt 1 of 3'")
        shot = base64.b64decode(tab.send("Page.captureScreenshot", format="png")["data"])
        assert Image.open(io.BytesIO(shot)).size[0] == 1280  # the window width
        if os.environ.get("WINNOW_UPDATE_SCREENSHOT"):  # refresh the docs' picture on purpose only
            SCREENSHOT.write_bytes(shot)
    finally:
        server.stop()


def test_a_decision_survives_a_reload_and_a_server_restart(catalog, chromium):
    server = Server(catalog)
    tab = chromium.tab(server.url)
    tab.key("2")
    assert [c["kept"] for c in tab.cards()] == [True, True, False, False]
    tab.reload()
    assert [c["kept"] for c in tab.cards()] == [True, True, False, False]
    server.stop()
    server = Server(catalog, port=server.port)
    try:
        tab.reload()
        assert [c["kept"] for c in tab.cards()] == [True, True, False, False]
        assert tab.eval("document.querySelectorAll('#candidates figure')[1].classList.contains('decided')")
    finally:
        server.stop()


def test_two_tabs_deciding_at_once_lose_nothing(catalog, chromium):
    server = Server(catalog)
    try:
        one, two = chromium.tab(server.url), chromium.tab(server.url)
        for n in range(4):  # interleaved toggles from both tabs, on different candidates
            one.send("Input.dispatchKeyEvent", type="keyDown", key=str(n + 1), text=str(n + 1))
            two.send("Input.dispatchKeyEvent", type="keyDown", key="j")
            two.send("Input.dispatchKeyEvent", type="keyDown", key=str(n + 1), text=str(n + 1))
        one.wait("true")
        two.wait("true")
        assert history(catalog).num_rows == 8
        stored = decisions(catalog)
        assert sum(v is not None for v in stored.values()) == 8
        one.reload()
        assert [c["kept"] for c in one.cards()] == [False, True, True, True]
    finally:
        server.stop()


def test_token_and_image_paths(catalog, tmp_path):
    (tmp_path / "secret.txt").write_text("not an image")
    images = catalog / "images" / "r1"
    (images / "escape.png").symlink_to(tmp_path / "secret.txt")
    server = Server(catalog, token="s3cret")
    try:
        base = server.url.rstrip("/")
        image = read_catalog(catalog)["image_path"].iloc[0]
        assert httpx.get(f"{base}/{image}").status_code == 403
        assert httpx.get(f"{base}/api/prompts").status_code == 403
        assert httpx.get(f"{base}/api/prompts", headers={"X-Winnow-Token": "wrong"}).status_code == 403
        assert httpx.get(f"{base}/{image}?token=s3cret").content[:4] == b"\x89PNG"
        bad_paths = ("images/../runs/r1/shard-0000.parquet", "images/%2e%2e/secret.txt",
                     "images/r1/escape.png", "images/r1/..%2f..%2f..%2fsecret.txt")  # fmt: skip
        for bad in bad_paths:
            response = httpx.get(f"{base}/{bad}?token=s3cret")
            assert response.status_code == 404 and b"not an image" not in response.content, bad
        auth = {"X-Winnow-Token": "s3cret"}
        ok = httpx.get(f"{base}/api/prompts", headers=auth)
        assert ok.status_code == 200 and ok.json()["total"] == 3
        ranged = lambda q: len(httpx.get(f"{base}/api/prompts?{q}", headers=auth).json()["prompts"])  # noqa: E731
        assert ranged("min_score=3.5") == 3 and ranged("max_score=3.5") == 0  # best combined_score: 4
        assert ranged("score=score_clip_score&min_score=0.29&max_score=0.31") == 3
        assert httpx.get(f"{base}/api/prompts?score=prompt", headers=auth).status_code == 400
        body = {"decisions": [{"run_id": "r1", "prompt_id": "x", "candidate_id": "nope", "decision": "keep"}]}
        sent = httpx.post(f"{base}/api/decisions", json=body, headers={"X-Winnow-Token": "s3cret"})
        assert sent.status_code == 404 and history(catalog).num_rows == 0
    finally:
        server.stop()


def test_cli_refuses_another_host_without_a_token(catalog):
    result = CliRunner().invoke(cli, ["review", str(catalog), "--host", "0.0.0.0", "--no-open"])
    assert result.exit_code != 0
    assert "give --token" in result.output and "Traceback" not in result.output
