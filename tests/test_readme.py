"""The README's Python snippets run as written."""

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
    # The numbers the README quotes in the snippet's comments are what it prints.
    for quoted in re.findall(
        r"# (mean [\d.]+, std [\d.]+|[\d.-]+ -> [\d.-]+)$", SNIPPETS[index], re.M
    ):
        assert quoted in printed
