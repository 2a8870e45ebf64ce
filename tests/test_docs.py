"""The docs: the settings reference is what the model generates, the site builds strictly, the README
stays short and points at the pages."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from nectargan_core.settings_reference import settings_reference

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of params.yaml (an empty mapping, such as train.loss.schedules, is a leaf)."""
    keys = []
    for name, value in tree.items():
        if isinstance(value, dict) and value:
            keys += _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_the_settings_page_is_what_the_model_generates():
    page = (ROOT / "docs" / "settings.md").read_text()
    assert page == settings_reference(), "docs/settings.md is stale: run `nectargan docs-settings`"


def test_the_settings_page_has_a_row_for_every_key_of_params_yaml():
    page = settings_reference()
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]+ \| (`[^`]*`) \|", page, flags=re.MULTILINE))  # key: default
    keys = _leaf_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert len(keys) > 100
    assert not [key for key in keys if key not in rows]
    assert rows["train.loss.l1"] == "`100.0`" and rows["data.loader"] == '`"auto"`'


def test_the_docs_site_builds_strictly_with_the_settings_reference(tmp_path):
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    html = (tmp_path / "site" / "settings" / "index.html").read_text()
    assert "train.loss.l1" in html and "data.augment.joint.hflip.p" in html


def test_the_readme_is_short_and_links_to_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    pages = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").glob("*.md"))
    assert pages and not [page for page in pages if f"({page})" not in readme]
