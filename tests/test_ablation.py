"""The ablation driver: every variant runs, results are written per run, a rerun skips them."""
import json

import pytest

from sepico import ablation

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
    for p in results:
        r = json.loads(p.read_text())
        assert r["iterations"] == 2 and 0.0 <= r["miou"] <= 100.0
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
