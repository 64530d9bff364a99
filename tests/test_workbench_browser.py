"""The whole journey in a real browser (headless Chromium from Debian's `chromium` package, driven
by Playwright for Python) on the tiny model: upload the bundled repository as a zip, see the check,
train a few steps and watch the live curve move, compare, open the verdict, rate 10 pairs as each of
two reviewers, see win rates and kappa, chat, export. A screenshot of every page goes to
$TUNESMITH_SCREENSHOTS (default: bench/out/workbench/, git-ignored)."""

import json
import os
from pathlib import Path

import pytest
from workbench_util import LiveServer, pantry_zip

CHROMIUM = os.environ.get("TUNESMITH_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
if sync_playwright is None or not Path(CHROMIUM).exists():
    pytest.skip(
        "browser tests need Playwright and Chromium: pip install playwright; apt-get install chromium "
        "(`make install` does both where apt-get exists), or set TUNESMITH_CHROMIUM",
        allow_module_level=True,
    )

SHOTS = Path(
    os.environ.get("TUNESMITH_SCREENSHOTS", Path(__file__).resolve().parents[1] / "bench" / "out" / "workbench")
)


def test_the_whole_journey_in_a_browser(tmp_path, tiny_model_dir):
    from tunesmith.workbench.app import create_app

    SHOTS.mkdir(parents=True, exist_ok=True)  # shared with the reviewers' journey, which may run at the same time
    upload = tmp_path / "pantry.zip"
    upload.write_bytes(pantry_zip())
    app = create_app(tmp_path / "projects", model=str(tiny_model_dir), job_env={**os.environ, "OMP_NUM_THREADS": "1"})
    with LiveServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        shot = lambda name: page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # noqa: E731

        # ---- a project from the bundled repository, and check's result
        page.goto(server.url)
        page.fill("#np-name", "Pantry research")
        page.set_input_files("#np-file", str(upload))
        shot("01-projects")
        page.click("#np-create")
        page.wait_for_url("**/p/pantry-research-*")
        expect(page.locator("#check-result")).to_contain_text("errors")
        assert "insight" in page.locator("main > p.hint").inner_text()  # import's task counts
        shot("02-check")
        project_url = page.url

        # ---- train a few steps; the curve fills in as they land
        page.click("#advanced summary")
        for key, value in {
            "train.max_steps": "4",
            "train.save_every": "1",
            "train.eval_every": "2",
            "train.batch_size": "2",
            "data.max_len": "512",
            "train.threads": "1",
            "lora.r": "4",
            "train.lr": "0.01",
        }.items():
            page.fill(f'[name="cfg.{key}"]', value)
        page.click("#start-training")
        curve = page.locator("figure.curve").first
        expect(curve).to_have_attribute("data-points", "1")
        first_path = curve.locator("path.line.train").get_attribute("d")
        expect(curve).not_to_have_attribute("data-points", "1")  # a second step arrived over SSE
        expect(curve.locator("path.line.train")).not_to_have_attribute("d", first_path)  # and the curve moved
        shot("03-training")
        expect(page.locator(".job .badge.done").first).to_be_visible()

        # ---- compare on a few examples, then the verdict
        compare = page.locator("form.compare-form").first
        compare.locator('[name="compare.max_examples"]').fill("4")
        compare.locator('[name="generate.max_new_tokens"]').fill("8")
        compare.locator('[name="generate.temperature"]').fill(
            "1"
        )  # the random tiny model's greedy reply is blank lines
        compare.locator("button").click()
        page.locator("a.button.primary", has_text="Verdict").first.click()
        expect(page.locator("h1")).to_contain_text("Verdict:")
        assert page.locator("article.example").count() == 4
        assert page.locator("article.example .cell.reference mark.pref").count() > 0  # glossary terms highlighted
        shot("04-verdict")
        task = page.locator("#task option").nth(1).get_attribute("value")
        page.select_option("#task", task)
        page.wait_for_url(f"**task={task}")
        assert all(a.get_attribute("data-task") == task for a in page.locator("article.example").all())

        # ---- blind review: 10 pairs each for two reviewers, by keyboard
        page.locator("a.button", has_text="Blind review").first.click()
        for name in ("Ana", "Ben"):
            page.goto(page.url.split("?")[0])
            page.fill("#reviewer", name)
            page.click("#start-review")
            for k in range(10):
                expect(page.locator("#progress span")).to_contain_text(f"{k} / 12")
                a, b = page.inner_text("#text-a"), page.inner_text("#text-b")
                if k == 0 and name == "Ana":
                    shot("05-review")
                if k % 4 == 3:
                    page.keyboard.press("1")  # the terminology tag
                # both reviewers prefer the longer answer: they agree, so kappa is high
                page.keyboard.press("a" if len(a) > len(b) else "b" if len(b) > len(a) else "t")
            expect(page.locator("#progress span")).to_contain_text("10 / 12")
        page.locator("a", has_text="Results so far").click()
        expect(page.locator("#winrates")).to_be_visible()
        assert page.locator("#winrates tr").count() == 4  # three arm pairs
        kappa = page.locator("#kappa td b").first.inner_text()
        assert kappa not in ("", "–") and -1 <= float(kappa) <= 1
        shot("06-review-results")
        csv = page.request.get(page.url.replace("/results", "/ratings.csv")).text()
        assert csv.count("\n") == 21  # header + 20 ratings
        dpo = page.request.get(page.url.replace("/results", "/preferences.jsonl")).text().splitlines()
        assert dpo and all(set(json.loads(x)) == {"prompt", "chosen", "rejected"} for x in dpo)
        # the experts' results joined compare's own report and results.json
        report = page.request.get(page.url.replace("/review/", "/report/").replace("/results", "")).text()
        assert report.count("Expert review (blind)") == 1 and "20 ratings by 2 reviewer(s)" in report
        run = next((tmp_path / "projects" / "projects").iterdir()) / "runs" / "2" / "compare" / "results.json"
        assert json.loads(run.read_text())["expert_review"]["ratings"] == 20

        # ---- chat, base and fine-tuned side by side
        page.goto(project_url)
        page.locator("a.button", has_text="Chat").first.click()
        page.fill("#chat-temperature", "1")
        page.fill("#chat-input", "What is a basket?")
        page.keyboard.press("Enter")
        expect(page.locator('.log[data-side="tuned"] .msg.assistant')).to_have_count(1)
        expect(page.locator('.log[data-side="base"] .msg.assistant')).to_have_count(1)
        shot("07-chat")

        # ---- export the adapter; the verification line shows when it is done
        page.goto(project_url)
        page.locator(".export button", has_text="adapter").first.click()
        expect(page.locator("p.ok", has_text="verified:")).to_be_visible()
        shot("08-export")
        browser.close()


def _zip(path: Path, entries: dict) -> Path:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in entries.items():
            z.writestr(name, text)
    path.write_bytes(buf.getvalue())
    return path


def test_sign_in_and_a_refused_upload_in_a_browser(tmp_path):
    """Issue 24: the address opens on the sign-in form (not a line of text); a refused upload names
    the upload's own paths, never the server's."""
    from tunesmith.workbench.app import create_app

    evil = _zip(tmp_path / "evil.zip", {"repo/../../evil.txt": "pwned"})
    unusable = _zip(tmp_path / "research.zip", {"research/notes.txt": "Notes without any front matter."})
    app = create_app(tmp_path / "projects", api_key="let-me-in", run_jobs=False)
    with LiveServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        expect.set_options(timeout=30_000)
        assert page.goto(server.url).status == 200  # redirected to the form, which is styled
        assert page.url == server.url + "/login"
        expect(page.locator("#key")).to_be_visible()
        assert page.locator("form").evaluate("f => getComputedStyle(f).backgroundColor") == "rgb(255, 255, 255)"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "00-sign-in.png"))
        page.fill("#key", "wrong")
        page.click("button")
        expect(page.locator(".err")).to_contain_text("not the key")
        page.fill("#key", "let-me-in")
        page.click("button")
        expect(page.locator("h1")).to_have_text("Projects")
        cookie = next(c for c in page.context.cookies() if c["name"] == "ts_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # no script can read the session (or the CSRF seed)

        page.set_input_files("#np-file", str(evil))
        page.click("#np-create")
        expect(page.locator("#np-status")).to_contain_text(
            "evil.zip: entry 'repo/../../evil.txt' climbs out of the folder"
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "09-refused-upload.png"))
        page.set_input_files("#np-file", str(unusable))
        page.click("#np-create")
        status = page.locator("#np-status")
        expect(status).to_contain_text("no examples could be built from research:")
        assert str(tmp_path) not in status.inner_text() and "/source" not in status.inner_text()
        page.screenshot(path=str(SHOTS / "09b-unusable-upload.png"))
        assert not any((tmp_path / "projects" / "projects").iterdir())
        assert not (tmp_path / "evil.txt").exists()
        browser.close()


def test_review_replies_are_rendered_as_markdown_and_never_run(tmp_path):
    """Issue 24: the blind-review page showed `**We saw**`; it renders replies as the chat page does,
    raw HTML shown as text, images only from the page's own origin."""
    from test_workbench_review import fake_verdict
    from workbench_util import fake_finished_run

    from tunesmith.workbench.app import create_app

    samples, results = fake_verdict(n_examples=1)
    reply = (
        "**We saw** three patterns:\n\n1. planners *skip* the list\n2. `basket` stays open\n\n"
        "<img src=x onerror=\"document.title='pwned'\"> ![pixel](https://tracker.example/p.png)"
    )
    for out in samples[0]["outputs"].values():
        out["text"] = reply
    jid = fake_finished_run(tmp_path / "projects", samples, results)
    app = create_app(tmp_path / "projects", run_jobs=False)
    with LiveServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        expect.set_options(timeout=30_000)
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(f"{server.url}/p/demo-000001/review/{jid}?reviewer=Ana")
        for side in ("#text-a", "#text-b"):
            expect(page.locator(f"{side} strong")).to_have_text("We saw")
            assert page.locator(f"{side} ol li").count() == 2 and page.locator(f"{side} code").inner_text() == "basket"
            assert page.locator(f"{side} img").count() == 0  # neither the raw tag nor the external image
            expect(page.locator(side)).to_contain_text("<img src=x")  # raw HTML shown as text
        assert page.title() != "pwned" and not any("tracker.example" in u for u in requested)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "11-review-pair.png"), full_page=True)
        browser.close()


def test_the_workbench_under_serve_in_a_browser(tmp_path, tiny_model_dir):
    """`tunesmith serve --workbench DIR`: the same workbench at /workbench/, behind the server's key;
    its links, forms, redirects, uploads and job queue work under the prefix, and the API still answers."""
    import httpx
    from test_train import make_chats

    from tunesmith.serve import create_app
    from tunesmith.workbench.app import create_app as create_workbench

    data = make_chats(tmp_path / "chats.jsonl", n=12)
    bench = create_workbench(
        tmp_path / "projects",
        api_key="let-me-in",
        model=str(tiny_model_dir),
        job_env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    app = create_app(str(tiny_model_dir), api_key="let-me-in", workbench=bench)
    with LiveServer(app) as server, sync_playwright() as p:
        key = {"Authorization": "Bearer let-me-in"}
        assert httpx.get(f"{server.url}/v1/models", headers=key).json()["data"][0]["id"]
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        expect.set_options(timeout=90_000)
        assert page.goto(server.url + "/workbench/").status == 200
        assert page.url == server.url + "/workbench/login"  # the sign-in form, under the prefix
        page.fill("#key", "let-me-in")
        page.click("button")
        expect(page.locator("h1")).to_have_text("Projects")
        assert page.url == server.url + "/workbench/"
        assert page.evaluate("document.styleSheets[0].cssRules.length") > 10  # its stylesheet, under the prefix

        page.fill("#np-name", "Chats")
        page.set_input_files("#np-file", str(data))
        page.click("#np-create")
        page.wait_for_url("**/workbench/p/chats-*")
        expect(page.locator("#check-result")).to_contain_text("errors")  # the check job ran: the queue is up
        targets = page.eval_on_selector_all(
            "a[href^='/'], form[action^='/'], link[href^='/'], script[src^='/']",
            "els => els.map(e => e.getAttribute('href') || e.getAttribute('action') || e.getAttribute('src'))",
        )
        assert len(targets) > 5 and all(t.startswith("/workbench/") for t in targets), targets
        project = page.url
        page.click("text=Check again")  # a form whose answer is a redirect
        page.wait_for_url(project)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "10-under-serve.png"), full_page=True)
        browser.close()
