"""The runnable examples the docs show must run."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


#: Pages that show an example's printed output: it must be what the script prints now.
OUTPUT_SHOWN_ON = {"getting_started.py": "getting-started.md", "sklearn_integration.py": "sklearn-integration.md"}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_docs_example_runs(script, capsys):
    runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    out = capsys.readouterr().out.strip()
    assert out
    if script in OUTPUT_SHOWN_ON:
        page = (EXAMPLES.parent / OUTPUT_SHOWN_ON[script]).read_text()
        assert out in page, f"{OUTPUT_SHOWN_ON[script]} shows an output that {script} no longer prints:\n{out}"


def test_sklearn_page_shows_the_example_code():
    page = (EXAMPLES.parent / "sklearn-integration.md").read_text()
    code = (EXAMPLES / "sklearn_integration.py").read_text().split('"""', 2)[2].strip()
    assert code in page


def test_scaling_out_page_shows_the_dask_example_code():
    page = (EXAMPLES.parent / "scaling-out.md").read_text()
    code = (EXAMPLES / "scaling_out_dask.py").read_text().split('"""', 2)[2].strip()
    assert code in page
