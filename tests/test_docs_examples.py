"""The runnable examples the docs show must run."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_docs_example_runs(script, capsys):
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    assert capsys.readouterr().out.strip()


def test_sklearn_page_shows_the_example_code():
    page = (EXAMPLES.parent / "sklearn-integration.md").read_text()
    code = (EXAMPLES / "sklearn_integration.py").read_text().split('"""', 2)[2].strip()
    assert code in page


def test_scaling_out_page_shows_the_dask_example_code():
    page = (EXAMPLES.parent / "scaling-out.md").read_text()
    code = (EXAMPLES / "scaling_out_dask.py").read_text().split('"""', 2)[2].strip()
    assert code in page
