"""Issue 20's journey in headless Chromium on the tiny model: the owner invites a reviewer; the
reviewer opens the link, finds every non-review page closed, and rates a collection of training
pairs; the owner closes the loop (DPO from the SFT run, compared with it) and the reviewer rates
the result blind; the audit log shows who did what; revoking the link ends the reviewer's access.
No training pair answers a held-out prompt. Screenshots go where test_workbench_browser.py's go."""

import json
import os
import re

import pytest
from test_workbench_browser import CHROMIUM, SHOTS
from workbench_util import LiveServer

pytestmark = pytest.mark.browser
KEY = "owner-key-journey-0123"


def test_invite_collect_train_compare_review_in_a_browser(tmp_path, tiny_model_dir):
    from playwright.sync_api import expect, sync_playwright

    from tunesmith.testing import make_chats
    from tunesmith.workbench import collect
    from tunesmith.workbench.app import create_app

    SHOTS.mkdir(parents=True, exist_ok=True)
    data = make_chats(tmp_path / "notes.jsonl", n=24)
    root = tmp_path / "projects"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    app = create_app(root, api_key=KEY, model=str(tiny_model_dir), job_env=env)
    with LiveServer(app) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        owner = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        owner.set_default_timeout(120_000)
        expect.set_options(timeout=120_000)

        def shot(page, name):
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        # ---- the owner signs in, makes a project, trains the SFT run
        owner.goto(server.url)
        owner.fill("#key", KEY)
        owner.click("button")
        owner.fill("#np-name", "Research notes")
        owner.set_input_files("#np-file", str(data))
        owner.click("#np-create")
        owner.wait_for_url("**/p/research-notes-*")
        project = owner.url
        pid = project.rsplit("/", 1)[1]
        expect(owner.locator("#check-result")).to_contain_text("errors")
        owner.click("#advanced summary")
        for key, value in {
            "train.max_steps": "2",
            "train.save_every": "1",
            "train.batch_size": "2",
            "data.max_len": "256",
            "train.threads": "1",
            "lora.r": "4",
            "train.lr": "0.01",
        }.items():
            owner.fill(f'[name="cfg.{key}"]', value)
        owner.click("#start-training")
        form = owner.locator("form.collect-form").first  # shown once the run has finished
        expect(form).to_be_visible()
        sft = re.search(r"/collect/(\d+)/start", form.get_attribute("action"))[1]

        # ---- a collection: two replies of the SFT run to 4 of its training prompts
        form.locator('[name="prompts"]').fill("4")
        form.locator('[name="temperature"]').fill("1")
        form.locator('[name="max_new_tokens"]').fill("8")
        form.locator("button").click()
        expect(owner.locator("a.button", has_text="Rate pairs")).to_be_visible()
        cid = re.search(r"/collect/(\d+)", owner.locator("a.button", has_text="Rate pairs").get_attribute("href"))[1]

        # ---- an invitation for Ana
        owner.fill("#invite-name", "Ana Lopez")
        owner.click("#invite")
        link = owner.locator("#invite-link").inner_text()
        assert link.startswith(server.url + "/invite/")
        shot(owner, "12-invitation")

        # ---- Ana opens the link in her own browser
        ana = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        ana.goto(link)
        expect(ana.locator("#start-reviewing")).to_have_text("Start reviewing as Ana Lopez")
        # styled before any session exists (the stylesheet needs one, so the page carries its own)
        assert (
            ana.locator("#start-reviewing").evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(46, 107, 79)"
        )
        shot(ana, "12c-invitation-landing")
        ana.click("#start-reviewing")
        expect(ana.locator("h1")).to_have_text("Reviews for Research notes")
        shot(ana, "13-reviewer-home")
        for path in ("/", f"/p/{pid}", "/audit", f"/p/{pid}/collect/{cid}/results", f"/p/{pid}/verdict/{sft}"):
            r = ana.goto(server.url + path)
            assert r.status == 403, path
            expect(ana.locator(".error-box")).to_contain_text("review pages of your project only")
        shot(ana, "13b-reviewer-refused")
        ana.goto(server.url + f"/p/{pid}/reviews")
        ana.click(f"a[href$='/collect/{cid}']")
        expect(ana.locator("#mode-note")).to_contain_text("training")
        shot(ana, "14-collect")
        for k in range(4):
            expect(ana.locator("#progress span")).to_contain_text(f"{k} / 4")
            a, b = ana.inner_text("#text-a"), ana.inner_text("#text-b")
            ana.keyboard.press("a" if len(a) >= len(b) else "b")  # Ana prefers the longer reply
        expect(ana.locator("#all-done")).to_contain_text("All 4 pairs rated")

        # ---- the owner sees the collection and closes the loop
        owner.goto(f"{project}/collect/{cid}/results")
        expect(owner.locator("#collect-summary")).to_contain_text("4 of 4 pairs decided")
        expect(owner.locator("#collect-reviewers")).to_contain_text("Ana Lopez")
        pairs = owner.request.get(f"{project}/collect/{cid}/pairs.jsonl").text().splitlines()
        assert len(pairs) == 4
        config = root / "projects" / pid / "jobs" / sft / "config.yaml"
        held, (train, _) = collect.heldout_keys(config), collect.training_split(config)
        train_keys = {collect.prompt_key(ex["messages"][:-1]) for ex in train}
        for line in pairs:  # no held-out prompt in any training pair; each one from the training split
            key = collect.prompt_key(json.loads(line)["prompt"])
            assert key not in held and key in train_keys
        shot(owner, "15-collect-results")
        loop = owner.locator("#close-the-loop form")
        for key, value in {
            "train.max_steps": "2",
            "train.lr": "0.001",
            "compare.arms": "zero-shot,fine-tuned",
            "compare.side_effects": "false",
            "compare.max_examples": "3",
            "generate.max_new_tokens": "6",
            "generate.temperature": "1",
        }.items():
            loop.locator(f'[name="{key}"]').fill(value)
        owner.click("#prefer")
        owner.wait_for_url("**#job-*")
        dpo = owner.url.rsplit("#job-", 1)[1]
        expect(owner.locator(f"#job-{dpo} .badge.done")).to_be_visible()
        owner.locator(f"#job-{dpo} a.button", has_text="Verdict").click()
        expect(owner.locator("main")).to_contain_text(f"Against run:{sft}")
        shot(owner, "16-close-the-loop-verdict")

        # ---- Ana rates the preference run against the SFT run, blind
        ana.goto(server.url + f"/p/{pid}/reviews")
        ana.click(f"a[href$='/review/{dpo}']")
        expect(ana.locator("#mode-note")).to_contain_text("held-out")
        for k in range(3):
            expect(ana.locator("#progress span")).to_contain_text(f"{k} / 9")
            ana.keyboard.press("t")
        expect(ana.locator("#progress span")).to_contain_text("3 / 9")
        owner.goto(f"{project}/review/{dpo}/results")
        assert owner.locator("#winrates tr").count() == 4  # fine-tuned, run:SFT and zero-shot, two at a time
        expect(owner.locator("main")).to_contain_text(f"run:{sft}")
        expect(owner.locator("main")).to_contain_text("by 1 reviewer")
        shot(owner, "17-review-results")

        # ---- the audit log; the invitation listed; revoking ends Ana's access at once
        owner.goto(server.url + "/audit")
        for action in ("project created", "invitation created", "invitation used", "collection created", "rating"):
            expect(owner.locator("#audit")).to_contain_text(action)
        expect(owner.locator("#audit")).to_contain_text("reviewer Ana Lopez")
        shot(owner, "18-audit")
        owner.goto(project + "#reviewers")
        expect(owner.locator("#invitations")).to_contain_text("Ana Lopez")
        owner.locator("#reviewers").screenshot(path=str(SHOTS / "12b-invitations.png"))
        owner.locator("#invitations button", has_text="Revoke").click()
        expect(owner.locator("#invitations")).to_contain_text("revoked")
        r = ana.goto(server.url + f"/p/{pid}/reviews")
        assert r.status == 403
        expect(ana.locator(".error-box")).to_contain_text("was revoked by the project's owner")
        shot(ana, "19-revoked")
        stranger = browser.new_context().new_page()  # the link itself, opened anew, opens nothing
        assert stranger.goto(link).status == 403
        expect(stranger.locator("#invite-problem")).to_contain_text("was revoked by the project's owner")
        shot(stranger, "19b-dead-link")
        browser.close()
