"""`python -m depenc.compare` over tiny runs (two seeds of DepEnc and of the matched baseline):
summary.md aggregates over seeds, absent metrics show as —, index.html renders offline in headless
Chromium with every figure loaded; `python -m depenc.sweep` plans experiments x seeds."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from depenc import compare

CHROMIUM = next((p for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                 if (p := shutil.which(name))), None)
BASE = "debug/baseline_matched"
DEP = "debug/depenc"


@pytest.fixture(scope="module")
def report(compare_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    runs = [str(p) for kind in ("depenc", "baseline_matched") for p in compare_runs[kind]]
    assert compare.main(["--runs", *runs, "--out", str(out), "--name", "tiny"]) == 0
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

    runs = compare.select_runs(exps=["debug"], root=root)
    names = sorted(r.path.name for r in runs)
    assert names == sorted(["baseline_matched-s1", "baseline_matched-s2", "depenc-s2", rerun.name])
    err = capsys.readouterr().err
    assert "unfinished" in err and "seed 1 ran more than once" in err
    assert len(compare.select_runs(exps=["debug"], root=root, all_runs=True)) == 5
    groups = compare.group_runs(runs)
    assert set(groups) == {BASE, DEP}

    assert compare.main(["--exps", "debug", "--root", str(root), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "debug" / "index.html").is_file()
    assert compare.main(["--exps", "nope", "--root", str(root), "--out", str(tmp_path / "rep")]) == 2
    assert "no experiment folder" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (Debian: apt-get install chromium "
                                              "chromium-driver; CI installs it)")
def test_index_html_renders_offline_with_every_figure(report, compare_runs, tmp_path):
    index = report / "index.html"
    page = index.read_text()
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline
    n_img = page.count("<img ")
    assert n_img == 5
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


def test_sweep_runs_and_reports_failures(tmp_path):
    """A real (sequential) sweep whose runs fail at once (unknown key): every run is tried, exit 1."""
    proc = subprocess.run([sys.executable, "-m", "depenc.sweep", "--exps", "debug", "--seeds", "1", "2", "--",
                           "no_such_key=1"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "0/2 runs ok" in proc.stdout and "failed: debug-s1, debug-s2" in proc.stdout
