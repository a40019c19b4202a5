"""The Overview tab's git card, for a run logged from a dirty git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from ui_harness import ServerProcess, login, seed_git_run

PROJECT = "ui-git"
BRANCH = "feature/overview-git"
#: The remote as configured, with a token the client must strip before it reaches the server.
REMOTE_SECRET = "s3cret-token"
REMOTE = f"https://ci-user:{REMOTE_SECRET}@git.example.com/team/model.git"
REMOTE_SHOWN = "https://git.example.com/team/model.git"
COMMITTED_LINE = "lr = 0.01"
CHANGED_LINE = "lr = 0.02"
#: Lines added to a second tracked file: more than one call in Chromium can take as
#: arguments (about 125,000), so the patch cannot be rendered by spreading its lines into one.
BIG_LINES = 160_000


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo`` without the user's or system's config (no signing, hooks, name)."""
    env = os.environ | {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "runbus tests",
        "GIT_AUTHOR_EMAIL": "tests@example.com",
        "GIT_COMMITTER_NAME": "runbus tests",
        "GIT_COMMITTER_EMAIL": "tests@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}:\n{done.stderr}")
    return done.stdout.strip()


@pytest.fixture(scope="module")
def git_run(ui_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A finished run logged from inside a repository with an uncommitted change.

    Returns its id and the repository's ``HEAD``.
    """
    if shutil.which("git") is None:
        pytest.skip("git is not installed (apt-get install git)")
    repo = tmp_path_factory.mktemp("ui-git-repo")
    git(repo, "init", "-q")
    (repo / "model.py").write_text(f"{COMMITTED_LINE}\nepochs = 10\n")
    (repo / "table.txt").write_text("rows\n")
    git(repo, "add", "model.py", "table.txt")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "checkout", "-q", "-b", BRANCH)
    git(repo, "remote", "add", "origin", REMOTE)
    # Tracked and changed, not committed: what diff.patch records.
    (repo / "model.py").write_text(f"{CHANGED_LINE}\nepochs = 10\n")
    (repo / "table.txt").write_text("rows\n" + "".join(f"{i}\n" for i in range(BIG_LINES)))
    # The script and its run directory are untracked, which leaves the patch as it is.
    run_id = seed_git_run(ui_server, repo / "train", PROJECT)
    return {"id": run_id, "commit": git(repo, "rev-parse", "HEAD")}


def test_git_card_shows_commit_branch_remote_and_diff(
    anon_page: Any, ui_server: ServerProcess, git_run: dict[str, str]
) -> None:
    page = anon_page
    login(page.context, ui_server)
    page.goto(f"/#/p/{PROJECT}/r/{git_run['id']}/overview")
    card = page.get_by_test_id("run-git")
    expect(card.get_by_test_id("git-commit")).to_have_text(git_run["commit"])
    expect(card.locator('tr[data-key="branch"] td')).to_have_text(BRANCH)
    remote = card.locator('tr[data-key="remote"] td')
    expect(remote).to_have_text(REMOTE_SHOWN)
    expect(remote.locator("a")).to_have_attribute("href", REMOTE_SHOWN)
    expect(card.locator('tr[data-key="dirty"] td')).to_have_text("true")
    expect(page.locator("body")).not_to_contain_text(REMOTE_SECRET)

    # The patch shows once the user expands it.
    diff = card.locator("details pre[data-testid=git-diff]")
    expect(diff).to_be_hidden()
    card.locator("details summary").click()
    expect(diff).to_be_visible()
    # Only changed lines are marked, not the `--- a/model.py` and `+++ b/model.py` headers
    # above them.
    expect(diff.locator("span.del")).to_have_text([f"-{COMMITTED_LINE}"])
    added = diff.locator("span.add")
    expect(added.first).to_have_text(f"+{CHANGED_LINE}")
    expect(added.last).to_have_text(f"+{BIG_LINES - 1}")
