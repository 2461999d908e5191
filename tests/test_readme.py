"""The README's examples run on the machine the tests run on."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_kernels_example_runs_here():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using the kernels"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md (Using the kernels)", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["loss"].ndim == 0 and namespace["feats"].grad is not None
    assert namespace["count"].sum() == (namespace["labels"] != 255).sum()
