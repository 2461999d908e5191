"""The ablation driver: every variant runs, results are written per run, a rerun skips them."""
import json
from pathlib import Path

import pytest

from sepico import ablation
from sepico.convert import load_model
from sepico.errors import ConfigError
from sepico.train.data import build_test_dataset
from tests.helpers import independent_miou

TINY = ["data.size=32,64", "data.train_length=8", "data.test_length=2", "train.batch_size=2",
        "train.log_interval=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.system
def test_every_variant_writes_a_result_and_a_rerun_skips_them(tmp_path, monkeypatch):
    page = tmp_path / "ablation.md"
    page.write_text("# Ablation\n\nProse.\n\n<!-- generated: ablation-table -->\nold\n<!-- end: ablation-table -->\n")
    summary = ablation.ablate(seeds=[0], iters=2, out=tmp_path, overrides=TINY, progress=False, docs=page)
    assert page.read_text().startswith("# Ablation\n\nProse.\n")
    assert "old" not in page.read_text() and (tmp_path / "table.md").read_text().strip() in page.read_text()
    results = sorted((tmp_path / "runs").glob("*/result.json"))
    names = {p.parent.name for p in results}
    want = {r.name for r in ablation.plan([0])}
    assert want <= names and len(names) == len(want) + 1  # + the momentum run
    momentum = [json.loads(p.read_text()) for p in results if "momentum" in p.parent.name]
    assert momentum[0]["momentum"] == ablation.MOMENTUM
    assert momentum[0]["temperature"] in ablation.TEMPERATURES
    for p in results:  # each run's mIoU, evaluated again here from its checkpoint
        r = json.loads(p.read_text())
        loaded = load_model(p.parent / "ckpt_00000002.pt")
        test, classes = build_test_dataset(loaded.config)
        assert r["iterations"] == 2
        assert r["miou"] == pytest.approx(independent_miou(loaded.model, test, classes), abs=1e-9)
    assert (tmp_path / "table.md").read_text().count("\n| ") >= len(want)
    assert (tmp_path / "ablation_miou.png").stat().st_size > 0
    assert (tmp_path / "ablation_per_class.png").stat().st_size > 0
    assert summary["best"]["variant"] in {r["variant"] for r in map(lambda p: json.loads(p.read_text()), results)}

    # An interrupted ablation: one run lost its result (it was cut short). A rerun trains that
    # run only and reads the others back.
    lost = tmp_path / "runs" / "protocl_t0.1_seed0" / "result.json"
    lost.unlink()
    trained = []
    real = ablation.execute

    def counting(run, *args, **kwargs):
        if not (tmp_path / "runs" / run.name / "result.json").exists():
            trained.append(run.name)
        return real(run, *args, **kwargs)

    monkeypatch.setattr(ablation, "execute", counting)
    ablation.ablate(seeds=[0], iters=2, out=tmp_path, overrides=TINY, progress=False)
    assert trained == ["protocl_t0.1_seed0"] and lost.exists()


def test_quick_plan_and_best_temperature():
    quick = ablation.plan([0], quick=True)
    assert {r.variant for r in quick} == set(ablation.QUICK)
    results = [{"variant": "distcl_diag", "temperature": 0.1, "miou": 60.0},
               {"variant": "distcl_diag", "temperature": 100.0, "miou": 50.0},
               {"variant": "distcl_diag", "temperature": 0.1, "miou": 58.0}]
    assert ablation.best_temperature(results, "distcl_diag", (0.1, 100.0)) == 0.1


def test_paired_comparisons_call_a_finding_only_beyond_the_seed_spread():
    def row(variant, t, mious):
        return {"variant": variant, "temperature": t, "seeds": [0, 1, 2], "miou": mious,
                "miou_mean": ablation._mean(mious), "miou_std": ablation._std(mious),
                "iou_mean": {"0": 90.0, "8": 70.0}}

    rows = [row("source_only", None, [50.0, 55.0, 60.0]),
            row("self_training", None, [51.0, 56.0, 61.5]),     # +1.2 on average, spread 5: no
            row("protocl", 0.1, [60.0, 66.0, 70.0]),            # +10.3 over source-only: yes
            row("protocl", 100.0, [59.0, 67.0, 69.0]),          # -0.0 .. : no
            row("bankcl", 100.0, [59.5, 67.0, 69.0])]
    pairs = {(p["a"], p["b"]): p for p in ablation.comparisons(rows)}
    assert set(pairs) == {("self_training", "source_only"), ("protocl T=0.1", "source_only"),
                          ("protocl T=0.1", "self_training"), ("protocl T=100", "source_only"),
                          ("protocl T=100", "self_training"), ("protocl T=0.1", "protocl T=100"),
                          ("bankcl T=100", "source_only"), ("bankcl T=100", "self_training"),
                          ("bankcl T=100", "protocl T=100")}
    assert pairs[("bankcl T=100", "protocl T=100")]["diff"] == [0.5, 0.0, 0.0]
    gain = pairs[("protocl T=0.1", "source_only")]
    assert gain["diff"] == [10.0, 11.0, 10.0] and gain["finding"]
    assert not pairs[("self_training", "source_only")]["finding"]
    assert not pairs[("protocl T=0.1", "protocl T=100")]["finding"]
    assert "| protocl T=0.1 | source_only | +10.3 ± 0.6 | 3 | yes |" in ablation.markdown(rows, list(pairs.values()))
    # A variant whose counterpart is also a generic base (self_training) is compared with it once.
    gn = ablation.comparisons(rows + [row("self_training_gn", None, [52.0, 57.0, 62.0])])
    assert [(p["a"], p["b"]) for p in gn].count(("self_training_gn", "self_training")) == 1


@pytest.mark.system
def test_parallel_runs_give_the_results_of_one_at_a_time(tmp_path):
    """--jobs 2: runs in two processes, each with one thread; the same results as one process
    (each run is a pure function of its config and seed), in the plan's order."""
    one = ablation.ablate(seeds=[0], quick=True, iters=2, out=tmp_path / "one", overrides=TINY, progress=False)
    two = ablation.ablate(seeds=[0], quick=True, iters=2, out=tmp_path / "two", overrides=TINY, progress=False,
                          jobs=2, threads=1)
    assert [(r["variant"], r["temperature"], r["miou"]) for r in one["rows"]] == \
        [(r["variant"], r["temperature"], r["miou"]) for r in two["rows"]]
    assert len(list((tmp_path / "two" / "runs").glob("*/result.json"))) == len(ablation.plan([0], quick=True))


# --------------------------------------------------------------------------- the dose-response sweep
SWEEP = "method.contrast_weight=0,0.03,0.1,0.3,1,3"  # the Makefile's ablation-sweep


def test_sweep_plan_names_every_run_once_and_each_run_gets_its_settings():
    from sepico.train import load_config

    key, values = ablation.parse_sweep("method.contrast_weight=3,0.03,1,0,0.3,0.1,1")
    assert (key, values) == ablation.parse_sweep(SWEEP) == ("method.contrast_weight", [0.0, 0.03, 0.1, 0.3, 1.0, 3.0])
    runs = ablation.sweep_plan(key, values, [0, 1, 2], max_iters=1000)
    names = [r.name for r in runs]
    # per seed: the control, 3 variants x 5 weights (weight 0 is the control), the published setting and its control
    assert len(set(names)) == len(names) == 3 * (1 + 3 * 5 + 2)
    assert {"target_pass_no_cl_seed2", "distcl_diag_t0.1_contrast_weight0.03_seed0",
            "distcl_diag_t100_contrast_weight3_seed1", "protocl_t0.1_contrast_weight1_seed0",
            "distcl_diag_published_t100_seed0", "target_pass_no_cl_published_seed0"} <= set(names)
    assert not any("contrast_weight0_" in name for name in names)
    for run in runs:
        m = load_config(ablation.DEFAULT_CONFIG, run.overrides).method
        if run.variant in (ablation.CONTROL, ablation.PUBLISHED_CONTROL):
            assert (m.variant, m.contrast_weight) == ("dist", 0.0)
        elif run.variant == ablation.PUBLISHED:
            assert (m.variant, m.covariance, m.temperature, m.contrast_weight) == ("dist", "diag", 100.0, 1.0)
        else:
            assert (run.variant, m.temperature) in ablation.SWEEP_RUNS and m.contrast_weight == run.swept[1]
        published = run.variant.endswith("_published")
        assert (m.pseudo_weight, m.start_distribution_iter) == (("dacs", 75) if published else ("pixel", 0))


@pytest.mark.parametrize("spec, says", [
    ("contrast_weight=0,1", "did you mean method.contrast_weight?"),
    ("method.temperature=0.1,100", "--sweep takes one of method.contrast_weight, method.reg_weight, method.ratio"),
    ("method.contrast_weight", "numbers"),
    ("method.ratio=0.5,x", "numbers"),
    ("method.ratio=inf", "numbers"),
    ("method.contrast_weight=-1,1", "must be > 0"),
    ("method.reg_weight=0,1", "must be > 0"),
    ("method.contrast_weight=0.1,0.1000001", "six digits"),
])
def test_a_sweep_it_cannot_run_is_one_line(spec, says):
    with pytest.raises(ConfigError) as err:
        ablation.parse_sweep(spec)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_sweep_and_quick_do_not_combine(capsys):
    from sepico.cli import main

    assert main(["ablate", "--sweep", SWEEP, "--quick"]) == 2
    assert "--quick is the ablation's" in capsys.readouterr().err


def _result(variant, temperature, weight, seed, miou, loss=None):
    return {"variant": variant, "temperature": temperature, "seed": seed, "miou": miou,
            "iou": {"0": miou + 10, "8": miou - 10}, "wall_time_s": 10.0,
            "config": {"method": {"contrast_weight": weight}},
            "contrastive_loss": {} if loss is None else {"loss_cl_src": {"first": loss, "last": loss / 2, "logged": 40}}}


def test_sweep_summary_calls_a_finding_only_beyond_the_seed_spread(tmp_path):
    results = []
    for seed, control in enumerate([50.0, 55.0, 60.0]):
        results += [_result("target_pass_no_cl", None, 0.0, seed, control),
                    _result("distcl_diag", 0.1, 1.0, seed, control + 10 + seed, 0.8),  # +11 ± 1, spread 6: yes
                    _result("distcl_diag", 100.0, 1.0, seed, control + 1, 2.0),       # +1 ± 0, spread 5: no
                    _result("protocl", 0.1, 1.0, seed, control - 2 * seed, 0.4),
                    _result("protocl", 0.1, 0.1, seed, control, 0.5),
                    _result(ablation.PUBLISHED, 100.0, 1.0, seed, control + 2, 1.9),
                    _result(ablation.PUBLISHED_CONTROL, None, 0.0, seed, control)]
    summary = ablation.summarise_sweep(results, "method.contrast_weight", tmp_path, wall_time_s=90.0, trained=21,
                                       jobs=2)
    rows = {row["label"]: row for row in summary["rows"]}
    assert [row["label"] for row in summary["rows"]][0] == "target_pass_no_cl"
    gain = rows["distcl_diag T=0.1 contrast_weight=1"]["vs_control"]
    assert gain["diff"] == [10.0, 11.0, 12.0] and gain["finding"]
    assert not rows["distcl_diag T=100 contrast_weight=1"]["vs_control"]["finding"]
    assert rows["distcl_diag_published T=100"]["vs_control"]["b"] == ablation.PUBLISHED_CONTROL
    assert summary["best"] == "distcl_diag T=0.1 contrast_weight=1" and summary["values"] == [0.1, 1.0]
    assert (summary["run_time_s"], summary["wall_time_s"]) == (210.0, 90.0)
    table = (tmp_path / "contrast_weight_sweep.md").read_text()
    assert "| distcl_diag | 0.1 | 1 | 66.0 ± 6.0 | +11.0 ± 1.0 | yes | 3 | 0.800 -> 0.400 | - |" in table
    assert "| target_pass_no_cl | - | 0 | 55.0 ± 5.0 | - | - | 3 | - | - |" in table
    # Per class: the control, the best (also one of the three at the published weight 1), the others, published.
    assert ("| class | target_pass_no_cl | distcl_diag T=0.1 contrast_weight=1 | distcl_diag T=100 contrast_weight=1 "
            "| protocl T=0.1 contrast_weight=1 | distcl_diag_published T=100 |\n|---|---|---|---|---|---|\n"
            "| road | 65.0 | 76.0 | 66.0 | 63.0 | 67.0 |") in table
    assert "21 runs; training time summed over the runs 4 min; wall time of this command 2 min with --jobs 2" in table
    assert json.loads((tmp_path / "contrast_weight_sweep.json").read_text())["rows"][1]["contrastive_loss"] == \
        {"loss_cl_src": {"first": pytest.approx(0.8), "last": pytest.approx(0.4)}}
    assert (tmp_path / "contrast_weight_sweep.png").stat().st_size > 0


@pytest.mark.system
def test_sweep_writes_results_and_a_docs_block_and_a_rerun_trains_only_what_is_missing(tmp_path, monkeypatch, capsys):
    from sepico.pages import read_block

    docs = tmp_path / "docs"
    docs.mkdir()
    page = docs / "ablation.md"
    original = (Path(__file__).resolve().parents[1] / "docs" / "ablation.md").read_text()
    page.write_text(original)
    out = tmp_path / "sweep"
    summary = ablation.sweep("method.contrast_weight=0,1", seeds=[0], iters=2, out=out, overrides=TINY,
                             progress=False, docs=page)
    results = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")}
    assert set(results) == {r.name for r in ablation.sweep_plan("method.contrast_weight", [0.0, 1.0], [0], 2)}
    assert results["distcl_diag_t0.1_contrast_weight1_seed0"]["contrastive_loss"]["loss_cl_src"]["logged"] == 2
    assert results[f"{ablation.CONTROL}_seed0"]["contrastive_loss"] == {}  # weight 0 logs zeros
    assert summary["runs"] == summary["runs_trained"] == 6 and summary["run_time_s"] > 0
    # The page keeps its prose and the ablation's block; the sweep's block is the table and the plot beside it.
    assert _outside_block(page.read_text(), "contrast-weight-sweep") == _outside_block(original, "contrast-weight-sweep")
    block = read_block(page, "contrast-weight-sweep")
    assert block.startswith((out / "contrast_weight_sweep.md").read_text().strip())
    assert block.endswith("(ablation/contrast_weight_sweep.png)")
    for suffix in (".json", ".md", ".png"):
        assert (docs / "ablation" / f"contrast_weight_sweep{suffix}").read_bytes() == \
            (out / f"contrast_weight_sweep{suffix}").read_bytes()

    # An interrupted sweep: one run lost its result. A rerun trains that run only and reads the others back.
    (out / "runs" / "protocl_t0.1_contrast_weight1_seed0" / "result.json").unlink()
    capsys.readouterr()
    again = ablation.sweep("method.contrast_weight=0,1", seeds=[0], iters=2, out=out, overrides=TINY,
                           progress=False)
    trained = [line.split()[5] for line in capsys.readouterr().out.splitlines()
               if line.startswith("[ablation]") and " done " in line]
    assert trained == ["protocl_t0.1_contrast_weight1_seed0"] and (again["runs"], again["runs_trained"]) == (6, 1)


def _outside_block(text: str, name: str) -> str:
    begin, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
    return (text.split(begin)[0] + text.split(end)[-1] if begin in text else text).strip()
