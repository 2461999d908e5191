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
    feat, labels = namespace["feat"], namespace["labels"]
    assert namespace["loss"].ndim == 0 and feat.grad is not None and feat.grad.shape == feat.shape
    assert namespace["count"].sum() == (labels != 255).sum()
    assert namespace["mean"].abs().sum() > 0


def test_the_released_model_commands_parse():
    """Every `sepico` command of the day-to-night and released-models sections (docs/datasets.md,
    linked from the README) is one the CLI accepts."""
    import shlex

    from sepico.cli import build_parser

    text = (ROOT / "docs" / "datasets.md").read_text()
    section = text[text.index("## Day to night"):]
    block = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S)).replace("\\\n", " ")
    commands = [line.split("#")[0].replace("...", "").strip() for line in block.splitlines()]
    commands = [c for c in commands if c.startswith("sepico ")]
    assert {c.split()[1] for c in commands} == {"convert", "eval", "predict", "train"}
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # argparse exits (SystemExit) on a bad flag
        assert args.command == command.split()[1]
