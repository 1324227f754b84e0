"""The docs name what exists: every repository path they mention, and every
``EXNET_*`` variable they tell an operator to set.

A newcomer's review found a runbook command and an alert test's comment still
pointing at ``tests/ops`` after the folder moved, and a variable the README
did not list; this keeps the next move from leaving such rot.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exnet.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "deploy" / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "deploy" / "prometheus").glob("*.yml"),
    ]
)
#: A path inside the repository: one of its top folders, then a file or folder name.
REPO_PATH = re.compile(
    r"(?<![\w./~<-])((?:contracts|producers|streams|sinks|exnet|deploy|docs|bench|tests|\.ci)"
    r"/[\w./-]*)"
)
#: Variables that are not settings: the env file's name is read before the settings,
#: the stale-site window is `exnet status`'s option, the dashboards' folder is the
#: Grafana container's.
OTHER_VARIABLES = {"EXNET_ENV_FILE", "EXNET_STALE_HOURS", "EXNET_GRAFANA_DASHBOARDS"}


def repo_paths(text: str) -> list[str]:
    """The repository paths ``text`` names (trailing punctuation dropped)."""
    return [match.rstrip(".-/") for match in REPO_PATH.findall(text)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(doc: Path) -> None:
    missing = [path for path in repo_paths(doc.read_text()) if not (ROOT / path).exists()]
    assert not missing


def test_every_variable_the_docs_name_is_read() -> None:
    settings = {f"EXNET_{name.upper()}" for name in Settings.model_fields}
    named = {
        name for doc in DOCS for name in re.findall(r"EXNET_[A-Z0-9_]*[A-Z0-9]", doc.read_text())
    }
    assert named - settings <= OTHER_VARIABLES, named - settings - OTHER_VARIABLES
    # and the README's table lists every setting
    readme = (ROOT / "README.md").read_text()
    assert {name for name in settings if f"`{name}`" not in readme} == set()


def test_the_path_finder_sees_paths_in_prose_and_code_blocks() -> None:
    text = "see `docs/analytics.md`, run `.venv/bin/pytest tests/ops`, (streams/app.py)."
    assert repo_paths(text) == ["docs/analytics.md", "tests/ops", "streams/app.py"]
