"""CI runs the README's two set-up commands, and the README's relative links lead somewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI = REPO / ".ci" / "run"


def readme_setup_commands() -> list[str]:
    """The commands of the first bash block under "## Set up and try it", comment lines dropped."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Set up and try it.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert section, "README.md has no '## Set up and try it' section"
    block = re.search(r"^```bash\n(.*?)^```$", section.group(1), flags=re.M | re.S)
    assert block, "the '## Set up and try it' section has no bash block"
    return [
        line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def ci_variable(name: str) -> str:
    """The value of a `name='...'` assignment in .ci/run, as bash reads it."""
    match = re.search(rf"^{name}=(.+)$", CI.read_text(encoding="utf-8"), flags=re.M)
    assert match, f".ci/run assigns no {name}"
    words = shlex.split(match.group(1))
    assert len(words) == 1, f"{name} in .ci/run is not one quoted word"
    return words[0]


def test_readme_setup_commands_are_the_ones_ci_runs():
    commands = readme_setup_commands()
    assert len(commands) == 2, f"expected the README's two set-up commands, found {commands}"
    assert commands == [ci_variable("install_and_demo"), ci_variable("run_tests")]
    script = CI.read_text(encoding="utf-8")
    assert 'step "$install_and_demo"' in script
    last = [line for line in script.splitlines() if line.strip() and not line.startswith("#")][-1]
    assert last == 'step "$run_tests"', "the test command must run last (its summary closes the log)"


def readme_links() -> list[str]:
    text = README.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S)  # no links inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # nor inside inline code
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_readme_relative_links_point_to_files():
    links = [link for link in readme_links() if not urlparse(link).scheme and not link.startswith("#")]
    assert links, "README.md links to no file"
    missing = [link for link in links if not (REPO / unquote(link.split("#")[0])).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
