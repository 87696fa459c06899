"""A W&B Report for an experiment family, built by code:
``python -m depenc.dashboard --group GROUP [--exps E ...] [--runs-root runs] [--project P] [--entity E]
[--out FILE] [--publish]``.

The family is every experiment whose name ends in ``_GROUP`` (experiments/*.yaml; ``small`` ->
baseline_small, baseline_matched_small, baseline_alibi_small, depenc_small) or the ``--exps`` given.
Every panel grid shows the W&B runs of those experiments (filter on the config key
``run_config.exp``, which every run logs with its hyper-parameters), grouped by experiment: a line
is the mean over seeds, its band the min-max. Sections: language modelling (validation ppl / bpb,
training loss, final test values), dependency alignment (UUAS of the parser and of the best head
against the chain and random-tree baselines), agreement by distance, generation (grammaticality,
sentence length against the reference), excess loss over the exact optimum, efficiency (tokens/s,
memory), DepEnc's encoder diagnostics, minimal pairs; line panels against ``trainer/global_step``,
bar / scalar panels for final values, and panels for the W&B tables the callbacks log.

Every panel is checked against the runs found under ``--runs-root`` (``<root>/<exp>/<run_id>/``): a
metric key no run's summary.json holds is left out with a notice (a panel left with no key is
dropped), a table is kept only where the scalar its callback logs with it exists, a section whose
callback is off in every run is left out: the report has no dead panel.

Without ``--publish``, or without a W&B API key (``WANDB_API_KEY`` or ``wandb login``), nothing
touches the network: the report's spec (the pydantic model that ``Report.save`` uploads) is written
as JSON (``reports/dashboard-<group>.json``) and one line says how to publish it once the offline runs
are synced (``wandb sync``). With ``--publish`` and a key, the report is saved to W&B and its URL
printed (the JSON is written too). Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from depenc.evaluate import CLIError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
STEP_KEY = "trainer/global_step"  # the x axis: Lightning's WandbLogger logs every metric against it
GROUP_KEY = "run_config.exp"  # config key (the LightningModule's hyper-parameter run_config, logged as W&B config)
# the same key as W&B's run filters name it (a nested config key: <top>.value.<rest>)
GROUP_FILTER_KEY = "run_config.value.exp"
SPLIT_ORDER = ("validation", "test", "test_long")  # synthetic splits first, in this order; others sorted
GRID_W, PANEL_W, PANEL_H, TABLE_H = 24, 8, 6, 10  # W&B panel grid units


# --------------------------------------------------------------------------------------------
# what the report shows


@dataclass
class Panel:
    """``kind``: line (history, seed bands), bar (final values, seed ranges), scalar (one final value,
    mean over runs) or table (a W&B table; ``witness`` is the scalar its callback logs with it)."""

    kind: str
    title: str
    keys: list[str]
    baselines: list[str] = field(default_factory=list)  # reference lines: kept only next to a key of ``keys``
    log_y: bool = False
    witness: str = ""


@dataclass
class Section:
    title: str
    text: str
    panels: list[Panel]
    callback: str = ""  # config key under callbacks.* whose metrics the section shows ("" = always logged)
    model_kind: str = ""  # only runs of this model.kind log them ("" = every run)


def _names(keys: set[str], pattern: str, placeholder: str) -> list[str]:
    """The names ``pattern``'s group matches in ``keys`` (synthetic splits first); ``[placeholder]``
    when none does, so that the panels built on it are left out with a notice naming the pattern."""
    found = {m.group(1) for k in keys if (m := re.fullmatch(pattern, k))}
    known = [s for s in SPLIT_ORDER if s in found]
    return known + sorted(found - set(known)) or [placeholder]


def catalog(keys: set[str]) -> list[Section]:
    """Every section and panel, with metric keys for the evaluation sets, treebanks and splits the
    runs logged (``keys``: every key of their summary.json)."""
    from depenc.evaluation.agreement import DIST_LABELS

    evals = _names(keys, r"val/([^/]+)/loss", "<eval set>")
    tests = _names(keys, r"test/([^/]+)/loss", "<test set>")
    treebanks = _names(keys, r"align/([^/]+)/chain/uuas", "<treebank>")
    agree = _names(keys, r"agree/([^/]+)/acc", "<split>")
    excess = _names(keys, r"excess/([^/]+)/excess", "<split>")
    pairs = _names(keys, r"pairs/([^/]+)/acc", "<name>")

    def uuas(tb: str) -> dict:
        return dict(keys=[f"align/{tb}/parser/uuas", f"align/{tb}/attn_best/uuas"],
                    baselines=[f"align/{tb}/chain/uuas", f"align/{tb}/random/uuas"])

    def by_distance(split: str) -> list[str]:
        return [f"agree/{split}/acc"] + [f"agree/{split}/acc_dist_{d}" for d in DIST_LABELS]

    return [
        Section("Language modelling", "Perplexity and bits per byte of the validation sets during training; "
                "final test values.", [
                    Panel("line", "Validation perplexity", [f"val/{e}/ppl" for e in evals], log_y=True),
                    Panel("line", "Validation bits per byte", [f"val/{e}/bpb" for e in evals]),
                    Panel("line", "Training loss", ["train/loss"]),
                    Panel("bar", "Final test perplexity", [f"test/{t}/ppl" for t in tests]),
                    Panel("bar", "Final test bits per byte", [f"test/{t}/bpb" for t in tests]),
                    Panel("scalar", f"Final perplexity ({evals[0]})", [f"val/{evals[0]}/ppl"]),
                ]),
        Section("Dependency alignment", "Undirected attachment (UUAS) of DepEnc's parser and of the best "
                "attention head (chosen on another split) against gold trees, with the chain (every word on "
                "its neighbour) and random-tree baselines.", [
                    *(Panel("line", f"UUAS on {tb}", **uuas(tb)) for tb in treebanks),
                    *(Panel("bar", f"Final UUAS on {tb}", **uuas(tb)) for tb in treebanks),
                    Panel("table", "Alignment by sentence and arc length", ["align/buckets"], witness="align/time_s"),
                ], callback="alignment"),
        Section("Subject-verb agreement", "Accuracy on minimal pairs (the verb agreeing with its subject "
                "against the other number), overall and by subject-verb distance in words.", [
                    *(Panel("line", f"Agreement accuracy by distance ({s})", by_distance(s)) for s in agree),
                    *(Panel("bar", f"Final agreement accuracy ({s})", by_distance(s)) for s in agree),
                    Panel("table", "Agreement by distance and attractors", ["agree/buckets"], witness="agree/time_s"),
                ], callback="agreement"),
        Section("Generation", "Samples judged by the grammar (share of grammatical sentences, of fully "
                "grammatical samples) and their sentence lengths against the validation text.", [
                    Panel("line", "Grammaticality", ["gen/grammatical", "gen/grammatical_samples"]),
                    Panel("line", "Mean sentence length (words)", ["gen/mean_sent_len"],
                          baselines=["gen/ref_mean_sent_len"]),
                    Panel("line", "Sentence-length distance to the reference (Wasserstein-1, words)", ["gen/len_w1"]),
                    Panel("line", "Sentence-length distance to the reference (Jensen-Shannon)", ["gen/len_js"]),
                    Panel("bar", "Final grammaticality", ["gen/grammatical", "gen/grammatical_samples"]),
                    Panel("table", "Generated samples", ["gen/samples"], witness="gen/time_s"),
                    Panel("table", "Sentence lengths: generated vs reference", ["gen/sent_len_table"],
                          witness="gen/len_w1"),
                ], callback="generation"),
        Section("Excess loss over the exact optimum", "Cross-entropy above the synthetic grammar's exact "
                "next-word distribution (nats per token) and the KL to it; by agreement distance.", [
                    Panel("line", "Excess loss", [f"excess/{s}/excess" for s in excess]),
                    Panel("line", "KL to the exact distribution", [f"excess/{s}/kl" for s in excess]),
                    *(Panel("line", f"Excess loss by agreement distance ({s})",
                            [f"excess/{s}/dist/{d}/excess" for d in DIST_LABELS]) for s in excess),
                    Panel("bar", "Final excess loss", [f"excess/{s}/excess" for s in excess]),
                ], callback="excess"),
        Section("Efficiency", "Training throughput (input tokens per second, all ranks) and peak memory; the "
                "final values are whole-run averages.", [
                    Panel("line", "Throughput (tokens/s)", ["perf/tokens_per_s"]),
                    Panel("line", "Peak memory (MB)", ["perf/peak_mem_mb"]),
                    Panel("line", "Step time (ms)", ["perf/step_time_ms"]),
                    Panel("bar", "Whole-run throughput (tokens/s)", ["perf/tokens_per_s"]),
                    Panel("bar", "Peak memory (MB)", ["perf/peak_mem_mb"]),
                    Panel("scalar", "Parameters", ["n_params"]),
                ], callback="efficiency"),
        Section("DepEnc encoder", "Is the structure used? Gate, parser entropy, parser mass on the previous "
                "word, strength of the dependency-weighted attention.", [
                    Panel("line", "Gate (mean)", ["depenc/gate_mean"]),
                    Panel("line", "Parser entropy (nats)", ["depenc/parser_entropy"]),
                    Panel("line", "Parser mass on the previous word", ["depenc/prev_word_mass"]),
                    Panel("line", "Dependency attention strength", ["depenc/beta_mean", "depenc/lambda_mean"]),
                ], model_kind="depenc"),
        Section("Minimal pairs", "Accuracy on the minimal-pair files of callbacks.pairs (BLiMP's format).", [
                    *(Panel("line", f"Minimal pairs: {p}", [f"pairs/{p}/acc"]) for p in pairs),
                    Panel("bar", "Final minimal-pair accuracy", [f"pairs/{p}/acc" for p in pairs]),
                    Panel("table", "Minimal pairs by group", ["pairs/groups"], witness="pairs/time_s"),
                ], callback="pairs"),
    ]


def check_panels(sections: list[Section], keys: set[str], enabled: set[str],
                 kinds: set[str]) -> tuple[list[Section], list[str]]:
    """The sections and panels whose keys the runs logged (``keys``; ``enabled``: the callbacks on in
    some run, ``kinds``: the runs' model kinds), and a notice for everything left out."""
    kept, notices = [], []
    for sec in sections:
        if sec.callback and sec.callback not in enabled:
            notices.append(f"section '{sec.title}' left out: callbacks.{sec.callback} is off in every run")
            continue
        if sec.model_kind and sec.model_kind not in kinds:
            notices.append(f"section '{sec.title}' left out: no run has model.kind={sec.model_kind}")
            continue
        panels = []
        for p in sec.panels:
            if p.kind == "table":
                if p.witness in keys:
                    panels.append(p)
                else:
                    notices.append(f"panel '{p.title}' left out: no run logged {p.witness}, which the W&B table "
                                   f"{p.keys[0]} comes with")
                continue
            present = [k for k in p.keys if k in keys]
            missing = [k for k in p.keys + p.baselines if k not in keys]
            if not present:
                notices.append(f"panel '{p.title}' left out: no run logged {', '.join(p.keys)}")
                continue
            if missing:
                notices.append(f"panel '{p.title}': left out {', '.join(missing)} (no run logged it)")
            panels.append(Panel(p.kind, p.title, present, [k for k in p.baselines if k in keys], p.log_y))
        if panels:
            kept.append(Section(sec.title, sec.text, panels, sec.callback, sec.model_kind))
        else:
            notices.append(f"section '{sec.title}' left out: none of its panels has data")
    return kept, notices


# --------------------------------------------------------------------------------------------
# the runs


@dataclass
class RunFolder:
    exp: str
    summary: dict
    config: dict


def experiments_of_group(group: str, folder: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem.endswith(f"_{group}"))


def find_runs(runs_root: Path, exps: Sequence[str]) -> list[RunFolder]:
    """The finished runs (with a summary.json) of ``exps`` under ``runs_root``."""
    from omegaconf import OmegaConf

    runs = []
    for exp in exps:
        for summary in sorted((runs_root / exp).glob("*/summary.json")):
            cfg_file = summary.with_name("config.yaml")
            config = OmegaConf.to_container(OmegaConf.load(cfg_file)) if cfg_file.is_file() else {}
            runs.append(RunFolder(exp, json.loads(summary.read_text()), config))
    return runs


def enabled_callbacks(runs: list[RunFolder]) -> set[str]:
    return {name for r in runs for name, c in (r.config.get("callbacks") or {}).items()
            if isinstance(c, dict) and c.get("enabled")}


def model_kinds(runs: list[RunFolder]) -> set[str]:
    return {(r.config.get("model") or {}).get("kind") for r in runs}


# --------------------------------------------------------------------------------------------
# the W&B report


def wandb_panel(p: Panel, x: int, y: int):
    import wandb_workspaces.reports.v2 as wr

    group = dict(groupby=wr.Config(GROUP_KEY), groupby_aggfunc="mean", groupby_rangefunc="minmax")
    table = p.kind == "table"
    layout = wr.Layout(x=x, y=y, w=GRID_W if table else PANEL_W, h=TABLE_H if table else PANEL_H)
    if p.kind == "line":
        return wr.LinePlot(title=p.title, x=STEP_KEY, y=p.keys + p.baselines, log_y=p.log_y or None, layout=layout,
                           **group)
    if p.kind == "bar":
        return wr.BarPlot(title=p.title, metrics=p.keys + p.baselines, orientation="v", layout=layout, **group)
    if p.kind == "scalar":
        return wr.ScalarChart(title=p.title, metric=p.keys[0], groupby_aggfunc="mean", groupby_rangefunc="minmax",
                              layout=layout)
    return wr.WeavePanelSummaryTable(table_name=p.keys[0], layout=layout)


def layout_panels(panels: list[Panel]) -> list:
    """W&B panels three to a row; a table takes a whole row."""
    out, x, y = [], 0, 0
    for p in panels:
        width = GRID_W if p.kind == "table" else PANEL_W
        if x + width > GRID_W:
            x, y = 0, y + PANEL_H
        out.append(wandb_panel(p, x, y))
        x += width
        if p.kind == "table":
            x, y = 0, y + TABLE_H
    return out


def build_report(sections: list[Section], group: str, exps: Sequence[str], n_runs: int, project: str, entity: str,
                 runset_project: str = "", runset_entity: str = ""):
    """The ``wandb_workspaces`` Report. The runsets name their project only for publishing (the library
    looks the project up on the server then); empty, they read the report's own project."""
    import wandb_workspaces.reports.v2 as wr

    def runset():
        return wr.Runset(entity=runset_entity, project=runset_project, name=f"{group} runs",
                         filters=f"Config('{GROUP_FILTER_KEY}') in {list(exps)!r}",
                         groupby=[f"config.{GROUP_KEY}"])

    blocks = [wr.P(f"{n_runs} runs of {', '.join(exps)}, grouped by experiment: lines are the mean over "
                   "seeds, bands and bars their range. Built by python -m depenc.dashboard.")]
    for sec in sections:
        blocks += [wr.H2(sec.title), wr.P(sec.text), wr.PanelGrid(runsets=[runset()], panels=layout_panels(sec.panels))]
    title = f"depenc {group}: {', '.join(exps)}"
    return wr.Report(project=project, entity=entity, title=title[:128], width="fluid", blocks=blocks,
                     description=f"Experiment family '{group}' (W&B group), seeds aggregated.")


def report_spec(report) -> dict:
    """The report's pydantic model (``ReportViewspec``: title, project, and the spec ``Report.save`` uploads),
    as JSON by alias; ``internal.ReportViewspec.model_validate`` reads it back."""
    return report._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


def has_wandb_key() -> bool:
    from depenc.train import wandb_mode

    return wandb_mode("auto") == "online"


def publish(sections, group, exps, n_runs, project, entity) -> str:
    """Save the report to W&B; returns its URL."""
    if not entity:
        import wandb

        entity = wandb.Api().default_entity
    report = build_report(sections, group, exps, n_runs, project, entity, runset_project=project, runset_entity=entity)
    report.save()
    return report.url


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m depenc.dashboard", description=__doc__.split("\n\n")[0])
    p.add_argument("--group", required=True, help="experiment family: the experiments named *_GROUP (e.g. small)")
    p.add_argument("--exps", nargs="+", default=None, help="these experiments instead of those of --group")
    p.add_argument("--runs-root", default="runs", help="folder of the run folders (<root>/<exp>/<run_id>/)")
    p.add_argument("--project", default=None, help="W&B project (default: the runs' logger.wandb.project)")
    p.add_argument("--entity", default=None, help="W&B entity (default: the runs' logger.wandb.entity, else yours)")
    p.add_argument("--out", default=None, help="spec JSON to write (default: reports/dashboard-<group>.json)")
    p.add_argument("--publish", action="store_true", help="save the report to W&B (needs an API key)")
    return p.parse_args(argv)


def run(args) -> int:
    exps = list(dict.fromkeys(args.exps or experiments_of_group(args.group)))
    if not exps:
        raise CLIError(f"no experiment is named *_{args.group} in {EXPERIMENTS_DIR}: give --exps")
    runs_root = Path(args.runs_root)
    runs = find_runs(runs_root, exps)
    if not runs:
        raise CLIError(f"no finished run (summary.json) of {', '.join(exps)} under {runs_root}/<exp>/: train them "
                       f"first (make sweep EXPS=\"{' '.join(exps)}\") or give --runs-root")
    if importlib.util.find_spec("wandb_workspaces") is None:
        raise CLIError("wandb-workspaces is not installed: pip install -e \".[dashboard]\"")
    keys = {k for r in runs for k in r.summary}
    sections, notices = check_panels(catalog(keys), keys, enabled_callbacks(runs), model_kinds(runs))
    for line in notices:
        print(f"dashboard: {line}", file=sys.stderr)
    if not sections:
        raise CLIError(f"none of the dashboard's metrics is in the summary.json of the {len(runs)} runs of "
                       f"{', '.join(exps)}")
    wandb_cfg = next((r.config.get("logger", {}).get("wandb", {}) for r in runs if r.config), {})
    project = args.project or wandb_cfg.get("project") or "depenc"
    entity = args.entity or wandb_cfg.get("entity") or ""
    out = Path(args.out or f"reports/dashboard-{args.group}.json")
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder: give a .json file")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = build_report(sections, args.group, exps, len(runs), project, entity)
    out.write_text(json.dumps(report_spec(report), indent=1))
    n_panels = sum(len(s.panels) for s in sections)
    what = f"{out}: W&B report spec, {n_panels} panels in {len(sections)} sections over {len(runs)} runs"
    if args.publish and has_wandb_key():
        try:
            url = publish(sections, args.group, exps, len(runs), project, entity)
        except Exception as exc:  # network, permissions, an unknown project: one line, the spec is kept
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CLIError(f"publishing to W&B failed ({reason}); the spec is in {out}") from None
        print(f"published {url} (spec in {what})")
        return 0
    sync = " ".join(f"{runs_root}/{exp}/*/wandb/offline-run-*" for exp in exps)
    again = " ".join(["python -m depenc.dashboard", "--group", args.group, *(["--exps", *exps] if args.exps else []),
                      *(["--runs-root", str(runs_root)] if args.runs_root != "runs" else []),
                      *(["--project", args.project] if args.project else []),
                      *(["--entity", args.entity] if args.entity else []), "--publish"])
    why = "no W&B API key (wandb login)" if args.publish else "not published"
    print(f"wrote {what}; {why}: to publish, wandb sync {sync} && {again}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
