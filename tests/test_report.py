"""Reports regenerated from stored rows: determinism, filters, platforms, seed noise."""

import dataclasses
import hashlib
import json

import pandas as pd
import pytest

from harness import registry, runner, store
from harness.config import RunConfig
from harness.report import ReportError, write_report
from harness.report.tables import accuracy_table, latest_per_point, speed_table, with_labels
from tests import numpy_backend

registry.register(numpy_backend.INFO)


@pytest.fixture(scope="module")
def base_rows():
    """Real rows of short numpy-test runs over two widths and three seeds."""
    rows = []
    for width in (1, 2):
        for seed in (0, 1, 2):
            config = RunConfig(
                backend="numpy-test",
                model="linear",
                depth=10,
                width=width,
                seed=seed,
                dataset="synthetic",
                train_size=500,
                test_size=100,
                batch_size=50,
                steps=12,
                eval_every=6,
                warmup_steps=1,
            )
            rows.append(runner.run(config, progress=False))
    return rows


def store_rows(folder, rows):
    for row in rows:
        store.write_row(folder, row)
    return folder


def variant_rows(rows, backend, accuracy_shift=0.0, host=None, step_scale=1.0):
    """Copies of rows as another backend or machine would have written them."""
    out = []
    for row in rows:
        copy = dict(row, backend=backend, run_id=row["run_id"] + backend + (host or ""))
        copy["config_hash"] = hashlib.sha256((row["config_hash"] + backend).encode()).hexdigest()[
            :16
        ]
        copy["final_test_acc"] = row["final_test_acc"] + accuracy_shift + 0.001 * row["seed"]
        copy["step_time_ms_median"] = row["step_time_ms_median"] * step_scale
        if host:
            copy["hostname"] = host
        out.append(copy)
    return out


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "rows" not in p.parts
    }


def test_report_is_byte_identical_when_regenerated(tmp_path, base_rows):
    folder = store_rows(
        tmp_path, base_rows + variant_rows(base_rows, "other", 0.05, step_scale=2.0)
    )
    first = write_report(folder)
    before = digest(folder)
    write_report(folder)
    assert digest(folder) == before
    names = {p.name for p in first}
    assert {"speed.csv", "accuracy.md", "report.md", "README.md", "learning-curves.png"} <= names
    assert any(name.startswith("ratio-") for name in names)


def test_speed_table_gives_the_ratio_to_the_fastest_backend(base_rows):
    rows = with_labels(pd.DataFrame(base_rows + variant_rows(base_rows, "other", step_scale=3.0)))
    table = speed_table(rows)
    slow = table[table["variant"] == "other (model linear)"]
    fast = table[table["variant"] == "numpy-test (model linear)"]
    assert list(fast["ratio_to_fastest"]) == [1.0, 1.0]
    assert list(slow["ratio_to_fastest"]) == pytest.approx([3.0, 3.0])


def test_accuracy_difference_beyond_seed_noise_is_flagged(base_rows):
    # The reference is plain torch where present, else the first variant by name: numpy-test here.
    rows = (
        base_rows + variant_rows(base_rows, "x-far", 0.2) + variant_rows(base_rows, "x-near", 0.0)
    )
    table = accuracy_table(with_labels(pd.DataFrame(rows)))
    verdict = dict(
        zip(
            zip(table["variant"], table["width"], strict=True),
            table["beyond_seed_noise"],
            strict=True,
        )
    )
    assert verdict[("numpy-test (model linear)", 1)] == ""  # the reference itself
    assert verdict[("x-far (model linear)", 1)] == "yes"
    assert verdict[("x-near (model linear)", 1)] == "no"
    assert (table["seeds"] == 3).all()


def test_rows_from_two_machines_are_never_mixed_in_one_speed_figure(tmp_path, base_rows):
    other_machine = variant_rows(base_rows, "numpy-test", host="elsewhere", step_scale=5.0)
    for row in other_machine:  # same backend, same workload: only the machine differs
        row["config_hash"] = row["config_hash"][::-1]
    folder = store_rows(tmp_path, base_rows + other_machine)
    write_report(folder)
    figures = sorted(p.name for p in (folder / "figures").glob("step-time-*.png"))
    assert len(figures) == 2 and any("elsewhere" in name for name in figures)
    speed = pd.read_csv(folder / "tables" / "speed.csv")
    assert set(speed["ratio_to_fastest"]) == {1.0}  # each machine only against itself
    assert "elsewhere" in (folder / "report.md").read_text()


def test_filter_narrows_the_rows_and_a_bad_filter_is_explained(tmp_path, base_rows):
    folder = store_rows(tmp_path, base_rows)
    write_report(folder, "width == 2")
    runs = pd.read_csv(folder / "tables" / "runs.csv")
    assert set(runs["width"]) == {2} and len(runs) == 3
    assert "--filter width == 2" in (folder / "report.md").read_text()
    with pytest.raises(ReportError, match="not a valid pandas query"):
        write_report(folder, "width ==")


def test_a_retried_point_replaces_its_failure(base_rows):
    failed = dict(
        base_rows[0], status="crashed", run_id="0-failed", started_at="2000-01-01T00:00:00+00:00"
    )
    latest = latest_per_point(pd.DataFrame([failed, *base_rows]))
    assert len(latest) == len(base_rows) and (latest["status"] == "ok").all()


def test_every_row_column_is_described(tmp_path, base_rows):
    folder = store_rows(tmp_path, base_rows[:1])
    write_report(folder)
    readme = (folder / "README.md").read_text()
    for column in json.loads(json.dumps(base_rows[0])):
        assert f"`{column}`" in readme


def test_trax_rows_name_their_math_backend_even_when_it_was_left_unset(base_rows):
    spec = {"model": "spec"}
    chosen = variant_rows(base_rows[:1], "trax")[0] | spec | {"trax_math": "tensorflow-numpy"}
    unset = variant_rows(base_rows[1:2], "trax")[0] | spec | {"trax_math": None}
    zoo = variant_rows(base_rows[2:3], "trax")[0] | {"trax_math": None, "model": "trax-zoo"}
    # In a DataFrame of mixed rows the unset value becomes NaN, not None.
    labels = with_labels(pd.DataFrame([chosen, unset, zoo, base_rows[3]]))["variant"]
    assert list(labels) == [
        "trax (math tensorflow-numpy)",
        "trax (math jax)",
        "trax (model trax-zoo, math jax)",
        "numpy-test (model linear)",
    ]


def test_accuracy_with_batch_statistics_is_tabled_beside_the_running_one(tmp_path, base_rows):
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    settings = {k: v for k, v in base_rows[0].items() if k in fields}
    config = RunConfig(**{**settings, "eval_bn": "both"})
    both = runner.run(config, progress=False)
    assert both["status"] == "ok" and both["final_test_acc_batch_bn"] is not None
    table = accuracy_table(with_labels(pd.DataFrame([*base_rows, both])))
    row = table[table["eval_bn"] == "both"].iloc[0]
    assert row["batch_bn_acc_median"] == both["final_test_acc_batch_bn"]
    assert row["test_acc_median"] == both["final_test_acc"]
    assert table.loc[table["eval_bn"] == "running", "batch_bn_acc_median"].isna().all()
    # A second backend evaluated both ways is compared under each protocol.
    seeds = [dict(both, seed=s, run_id=f"{both['run_id']}{s}") for s in (0, 1, 2)]
    for run, shift in zip(seeds, (0.0, 0.01, 0.02), strict=True):
        run["final_test_acc_batch_bn"] = 0.5 + shift
        run["final_test_acc"] = 0.4 + shift
    far = variant_rows(seeds, "x-far")
    for run, shift in zip(far, (0.0, 0.01, 0.02), strict=True):
        run["final_test_acc_batch_bn"] = 0.7 + shift
    table = accuracy_table(with_labels(pd.DataFrame([*base_rows, *seeds, *far])))
    row = table[table["variant"] == "x-far (model linear)"].iloc[0]
    assert row["batch_bn_diff_vs_reference"] == pytest.approx(0.2)
    assert row["batch_bn_beyond_seed_noise"] == "yes"
    assert (row["batch_bn_acc_min"], row["batch_bn_acc_max"]) == (0.7, pytest.approx(0.72))
    # Without any such run the column is left out.
    assert "batch_bn_acc_median" not in accuracy_table(with_labels(pd.DataFrame(base_rows)))


def test_a_seed_run_twice_counts_once_in_the_accuracy_table(base_rows):
    # The same recipe and seed, evaluated at another interval: one seed, not two.
    again = [
        dict(r, run_id=r["run_id"] + "again", eval_every=3, started_at=r["started_at"] + "1")
        for r in base_rows
    ]
    again = [dict(r, final_test_acc=r["final_test_acc"] + 0.5) for r in again]
    table = accuracy_table(with_labels(pd.DataFrame([*base_rows, *again])))
    assert list(table["seeds"]) == [3, 3]
    latest = sorted(r["final_test_acc"] for r in again if r["width"] == 1)
    assert table.iloc[0]["test_acc_median"] == pytest.approx(latest[1])


def test_runs_of_the_tutorials_own_code_are_tabled_apart_from_the_rows(tmp_path, base_rows):
    """The fields benchmarks/trax_tutorial.py writes (its own run is a check of tests/trax_checks.py)."""
    folder = store_rows(tmp_path, base_rows)
    run = {
        "seed": 3,
        "steps": 3000,
        "threads": 1,
        "trax_math": "tensorflow-numpy",
        "test_images": 10000,
        "loop_eval_accuracy": [[1, 0.1], [1000, 0.52], [2000, 0.6], [3000, 0.655]],
        "loop_seconds_per_step": [[1000, 0.9], [2000, 0.5], [3000, 0.7]],
        "test_acc_batch_bn": 0.6471,
        "test_acc_running_bn": 0.6071,
    }
    (folder / "tutorial").mkdir()
    (folder / "tutorial" / "seed3.json").write_text(json.dumps(run))
    write_report(folder)
    page = (folder / "report.md").read_text()
    section = page.split("## The Trax tutorial's own code")[1].split("## Figures")[0]
    line = next(line for line in section.splitlines() if "seed3.json" in line)
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    # Evaluations at steps 1000, 2000, 3000; the first interval (compile) is left out.
    assert "0.520 / 0.600 / 0.655" in cells and "0.6471" in cells and "0.6071" in cells
    assert "0.6" in cells  # median of 0.5 and 0.7 s per step
    assert len(store.load_rows(folder)) == len(base_rows)  # not a row
    # Without such runs the page has no such section.
    (folder / "tutorial" / "seed3.json").unlink()
    write_report(folder)
    assert "tutorial's own code" not in (folder / "report.md").read_text()
