"""The README's ```python snippets run as written (```py blocks are illustrations that need
files, e.g. checkpoints, and are not run)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, capsys):
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})
    printed = capsys.readouterr().out
    # A `print(...)  # text` line promises that `text` is printed (README numbers stay true).
    for promised in re.findall(r"^print\(.*\)\s+# (.+)$", SNIPPETS[index], re.M):
        assert promised.strip() in printed, (promised, printed)
