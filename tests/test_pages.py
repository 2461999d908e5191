"""sepico.pages: the generated blocks of the docs pages, and the demo's block."""
import pytest

from sepico.demo import markdown_table
from sepico.pages import read_block, write_block


def test_a_block_is_replaced_and_the_prose_kept(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nProse before.\n\n<!-- generated: t -->\nold table\n<!-- end: t -->\n\nProse after.\n")
    write_block(page, "t", "| a |\n|---|\n| 1 |")
    text = page.read_text()
    assert text == ("# Title\n\nProse before.\n\n<!-- generated: t -->\n| a |\n|---|\n| 1 |\n<!-- end: t -->"
                    "\n\nProse after.\n")
    assert read_block(page, "t") == "| a |\n|---|\n| 1 |"
    write_block(page, "u", "new")  # a page without the block: appended
    assert page.read_text().endswith("Prose after.\n\n<!-- generated: u -->\nnew\n<!-- end: u -->\n")
    assert read_block(page, "t") == "| a |\n|---|\n| 1 |" and read_block(page, "missing") is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_blocks_are_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- generated: t -->\nx\n<!-- generated: t -->\n<!-- end: t -->\n")
    with pytest.raises(ValueError, match="must appear once"):
        write_block(page, "t", "y")
    with pytest.raises(ValueError, match="block name"):
        write_block(page, "a b", "y")


def test_the_demo_block_states_every_seed_and_the_means():
    seeds = [{"seed": s, "source_only": {"target_miou": so, "source_miou": 69.0, "target_iou": {}},
              "adapted": {"target_miou": ad, "target_iou": {}}} for s, so, ad in ((0, 54.1, 65.2), (1, 56.3, 66.7))]
    summary = {"per_seed": seeds, "seeds": [0, 1], "source_only_source_domain_miou": 69.0,
               "source_only_miou": 55.2, "adapted_miou": 65.95, "gain": 10.75,
               "spread": {"source_only_miou": {"std": 1.56}, "adapted_miou": {"std": 1.06}, "gain": {"std": 0.5}},
               "source_only_per_class_iou": {"road": 91.9, "sky": 23.4},
               "adapted_per_class_iou": {"road": 94.7, "sky": 69.8},
               "iterations": 1000, "wall_time_s": 600.0, "device": "cpu", "threads": 1}
    text = markdown_table(summary)
    assert "| 0 | 69.0 | 54.1 | 65.2 | +11.1 |" in text and "| 1 | 69.0 | 56.3 | 66.7 | +10.4 |" in text
    assert "| **mean (std)** | 69.0 | **55.2** (1.6) | **66.0** (1.1) | **+10.8** (0.5) |" in text
    assert "road 91.9 -> 94.7, sky 23.4 -> 69.8" in text
