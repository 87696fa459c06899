"""`python -m depenc.compare` over tiny runs (two seeds of DepEnc and of the matched baseline):
summary.md aggregates over seeds, absent metrics show as —, index.html renders offline in headless
Chromium with every figure loaded; the excess-loss table from fake summaries; a run's history read
from metrics.csv; `python -m depenc.sweep` plans experiments x seeds."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from depenc.compare.__main__ import main as compare_main
from depenc.compare.runs import group_runs, load_run, select_runs

CHROMIUM = next((p for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (p := shutil.which(name))), None)
BASE = "debug/baseline_matched"
DEP = "debug/depenc"


@pytest.fixture(scope="module")
def report(compare_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    runs = [str(p) for kind in ("depenc", "baseline_matched") for p in compare_runs[kind]]
    assert compare_main(["--runs", *runs, "--out", str(out), "--name", "tiny"]) == 0
    return out / "tiny"


def table_rows(md: str) -> dict[str, list[str]]:
    """Rows of the markdown tables by their first cell (the last table wins for repeated keys)."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.setdefault(cells[0], cells)
    return rows


def test_summary_md_aggregates_seeds_and_marks_absent_metrics(report, compare_runs):
    md = (report / "summary.md").read_text()
    assert "Baseline: **debug/baseline_matched** (model.kind = baseline_matched)" in md
    head = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert f"{BASE} (baseline)" in head and f"Δ {DEP} − {BASE}" in head

    rows = table_rows(md.split("## Final metrics")[1])
    # metric | better | baseline cell | depenc cell | delta
    ppl = rows["val/validation/ppl"]
    assert ppl[1] == "↓"
    finals = {k: [json.loads((p / "summary.json").read_text())["val/validation/ppl"] for p in v]
              for k, v in compare_runs.items()}
    for cell, values in ((ppl[2], finals["baseline_matched"]), (ppl[3], finals["depenc"])):
        m = re.fullmatch(r"([\d.,]+) ± ([\d.,e+-]+) \(n=2\)", cell)
        assert m, cell
        assert float(m.group(1).replace(",", "")) == pytest.approx(sum(values) / 2, rel=2e-3, abs=0.06)
    assert re.fullmatch(r"[+-][\d.,]+ \([+-][\d.]+%\)", ppl[4]), ppl[4]

    # the parser exists only in DepEnc: absent (—) for the baseline, never 0; no difference
    parser = rows["align/synthetic/parser/uuas"]
    assert parser[2] == "—" and re.search(r"± .* \(n=2\)$", parser[3]) and parser[4] == "—"
    assert rows["depenc/gate_mean"][2] == "—"
    # the excess callback runs in every synthetic run: its table is there, with the share removed
    assert "## Excess loss over the exact optimum" in md and "share of the baseline's excess removed" in md
    # the runs table lists every run
    runs_part = md.split("## Runs")[1].split("## Final metrics")[0]
    for kind, dirs in compare_runs.items():
        for d in dirs:
            assert f"| debug/{kind} | {d.name} |" in runs_part


def test_aggregate_csv_and_figures(report, compare_runs):
    with open(report / "aggregate.csv", newline="") as f:
        rows = {(r["metric"], r["group"]): r for r in csv.DictReader(f)}
    row = rows[("test/test/ppl", DEP)]
    values = [json.loads((p / "summary.json").read_text())["test/test/ppl"] for p in compare_runs["depenc"]]
    assert int(row["n"]) == 2 and float(row["mean"]) == pytest.approx(sum(values) / 2)
    assert float(row["diff_vs_baseline"]) == pytest.approx(
        float(row["mean"]) - float(rows[("test/test/ppl", BASE)]["mean"]))
    assert ("align/synthetic/parser/uuas", BASE) not in rows
    for name in ("val_ppl", "alignment", "sentence_lengths", "agreement", "efficiency"):
        assert (report / f"{name}.png").stat().st_size > 5000, name


def test_exps_selects_the_latest_run_per_seed(compare_runs, tmp_path, capsys):
    root = tmp_path / "runs"
    for dirs in compare_runs.values():
        for d in dirs:
            shutil.copytree(d, root / "debug" / d.name, ignore=shutil.ignore_patterns("checkpoints"))
    rerun = root / "debug" / "20990101-000000-s1"  # a later run of depenc seed 1
    shutil.copytree(compare_runs["depenc"][0], rerun, ignore=shutil.ignore_patterns("checkpoints"))
    unfinished = root / "debug" / "20990101-000001-s3"
    shutil.copytree(compare_runs["depenc"][1], unfinished, ignore=shutil.ignore_patterns("checkpoints"))
    (unfinished / "summary.json").unlink()

    runs = select_runs(exps=["debug"], root=root)
    names = sorted(r.path.name for r in runs)
    assert names == sorted(["baseline_matched-s1", "baseline_matched-s2", "depenc-s2", rerun.name])
    err = capsys.readouterr().err
    assert "unfinished" in err and "seed 1 ran more than once" in err
    assert len(select_runs(exps=["debug"], root=root, all_runs=True)) == 5
    groups = group_runs(runs)
    assert set(groups) == {BASE, DEP}

    assert compare_main(["--exps", "debug", "--root", str(root), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "debug" / "index.html").is_file()
    assert compare_main(["--exps", "nope", "--root", str(root), "--out", str(tmp_path / "rep")]) == 2
    assert "no experiment folder" in capsys.readouterr().err


def fake_run(folder: Path, kind: str, seed: int, summary: dict, metrics_csv: str | None = None) -> Path:
    """A finished run folder of experiment `fake` holding only what the comparison reads."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"exp: fake\nseed: {seed}\nmodel:\n  kind: {kind}\n")
    (folder / "summary.json").write_text(json.dumps(summary))
    if metrics_csv is not None:
        (folder / "metrics.csv").write_text(metrics_csv)
    return folder


def test_excess_table_and_share_of_the_baseline_excess_removed(tmp_path):
    per_seed = {  # kind: [(overall excess, verb excess, noun excess) per seed], nats/token
        "baseline_matched": [(0.010, 0.020, 0.004), (0.012, 0.020, 0.006)],
        "depenc": [(0.005, 0.010, 0.006), (0.007, 0.010, 0.006)],
    }
    dirs = [fake_run(tmp_path / "runs" / f"{kind}-s{seed}", kind, seed,
                     {"excess/test/excess": total, "excess/test/cat/verb/excess": verb,
                      "excess/test/cat/noun/excess": noun, "excess/test/cat/noun/share": 0.1})
            for kind, seeds in per_seed.items() for seed, (total, verb, noun) in enumerate(seeds, 1)]
    assert compare_main(["--runs", *map(str, dirs), "--out", str(tmp_path / "rep"), "--name", "x"]) == 0
    md = (tmp_path / "rep" / "x" / "summary.md").read_text()
    section = md.split("## Excess loss over the exact optimum")[1].split("## Figures")[0]
    rows = table_rows(section)
    head = rows["excess (nats/token)"]
    assert head[1:] == ["fake/baseline_matched (baseline)", "fake/depenc",
                        "fake/depenc: share of the baseline's excess removed"]
    # overall: 1 - 0.006 / 0.011; verb: 1 - 0.010 / 0.020; noun: more excess than the baseline (0.005)
    assert rows["excess/test/excess"][1:] == ["0.0110 ± 0.0014 (n=2)", "0.0060 ± 0.0014 (n=2)", "45.5%"]
    assert rows["excess/test/cat/verb/excess"][1:] == ["0.0200 ± 0 (n=2)", "0.0100 ± 0 (n=2)", "50.0%"]
    assert rows["excess/test/cat/noun/excess"][3] == "-20.0%"
    assert "excess/test/cat/noun/share" not in rows  # a bucket's part of the total is not an excess
    assert (tmp_path / "rep" / "x" / "excess.png").stat().st_size > 5000
    assert '<table id="excess">' in (tmp_path / "rep" / "x" / "index.html").read_text()


def test_history_from_metrics_csv(tmp_path):
    """Without summary.json a metric's final value is its last logged value; one point per step
    (the last logged there); non-numbers and inf are absent."""
    csv_text = ("epoch,step,train/loss,val/validation/ppl,note\n"
                "0,0,5.0,,x\n0,2,4.0,,x\n0,2,,10.0,x\n0,4,,inf,x\n0,4,3.5,8.0,x\n0,6,3.0,,x\n")
    run = load_run(fake_run(tmp_path / "r", "depenc", 1, {"train/loss": 2.5}, csv_text))
    (run.path / "summary.json").unlink()
    run = load_run(run.path)
    steps, values = run.curve("val/validation/ppl")
    assert steps.tolist() == [2.0, 4.0] and values.tolist() == [10.0, 8.0]
    assert run.final("val/validation/ppl") == 8.0 and run.final("train/loss") == 3.0
    assert run.metric_keys() == {"train/loss", "val/validation/ppl"}
    assert not run.complete and run.final("note") is None


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium "
                                              "chromium-driver; CI installs it)")
def test_index_html_renders_offline_with_every_figure(report, compare_runs, tmp_path):
    index = report / "index.html"
    page = index.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    n_img = page.count("<img ")
    assert n_img == 6  # the five figures and the excess-loss one (every synthetic run has excess metrics)
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--window-size=1280,2000",
           f"--screenshot={shot}", "--dump-dom", index.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert f'data-images-loaded="{n_img}"' in body.group(0), body.group(0)
    assert f'data-images-total="{n_img}"' in body.group(0)
    runs_table = re.search(r'<table id="runs">.*?</table>', dom, re.S).group(0)
    for dirs in compare_runs.values():
        for d in dirs:
            assert f"<td>{d.name}</td>" in runs_table
    assert shot.is_file() and shot.stat().st_size > 10000  # kept in tmp_path for a look


def test_sweep_plans_experiments_by_seeds(capsys):
    from depenc import sweep

    assert sweep.main(["--exps", "baseline_matched_small", "depenc_small", "--seeds", "1", "2", "3",
                       "--dry-run", "--", "trainer.max_steps=50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert lines[0].endswith("-m depenc.train baseline_matched_small seed=1 trainer.max_steps=50")
    assert lines[-1].endswith("-m depenc.train depenc_small seed=3 trainer.max_steps=50")


def test_sweep_grid_names_runs_by_point_and_checks_configs_first(capsys):
    from depenc import sweep

    assert sweep.main(["--exps", "debug", "--seeds", "1", "2", "--grid", "data.synthetic.n_train=1000,4000",
                       "model.n_layer=2,3", "--dry-run", "--", "trainer.max_steps=5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 2 x 2 points x 2 seeds
    assert lines[0].endswith("debug seed=1 trainer.max_steps=5 data.synthetic.n_train=1000 model.n_layer=2 "
                             "run.name=n_train=1000-n_layer=2-s1")
    assert lines[-1].endswith("data.synthetic.n_train=4000 model.n_layer=3 run.name=n_train=4000-n_layer=3-s2")
    jobs = sweep.plan(["debug"], ["1"], [], grid=["data.synthetic.n_train=1000"])
    assert [j.name for j in jobs] == ["debug-n_train=1000-s1"]
    for grid, needle in ((["model.n_layerz=2,3"], "did you mean model.n_layer"), (["model.n_layer=0"], "positive"),
                         (["model.n_layer"], "give KEY=v1,v2")):
        assert sweep.main(["--exps", "debug", "--grid", *grid, "--dry-run"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


@pytest.mark.slow  # a real sweep: its training processes start, import torch and fail (~22 s); `make test-all`
def test_sweep_runs_and_reports_failures(tmp_path):
    """A real (sequential) sweep whose runs fail at once (a missing text file): every run is tried, exit 1."""
    proc = subprocess.run([sys.executable, "-m", "depenc.sweep", "--exps", "debug", "--seeds", "1", "2", "--",
                           "data.source=text", f"data.text.train={tmp_path / 'missing.txt'}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "0/2 runs ok" in proc.stdout and "failed: debug-s1, debug-s2" in proc.stdout
