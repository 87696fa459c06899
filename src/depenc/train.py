"""Train one experiment: ``python -m depenc.train EXP [key=value ...] [--resume RUN_DIR]``.

Writes ``runs/<exp>/<run_id>/``: config.yaml (resolved), run.json (command, git commit, W&B id),
checkpoints/{last,best}.ckpt, metrics.csv, summary.json, tokenizer.json, and what the callbacks write.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import warnings

from omegaconf import DictConfig, OmegaConf

from depenc.config import (ConfigError, leaf_values, load_config, load_yaml, merge_checked, parse_overrides,
                           validate)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---- model config from the experiment config ------------------------------------------------
def build_model_config(cfg: DictConfig, tokenizer) -> dict:
    """ModelConfig dict: cfg.model, with the vocabulary and block size of the data; for
    kind=baseline_matched the MLP widened so its parameter count matches DepEnc's."""
    from depenc.models.transformer import ModelConfig, Transformer

    model = {**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": tokenizer.vocab_size,
             "block_size": cfg.data.block_size, "eos_id": tokenizer.eos_id}
    if model["kind"] == "baseline_matched":
        target = Transformer(ModelConfig.from_dict({**model, "kind": "depenc"})).num_params()
        model["mlp_hidden"] = matched_mlp_hidden(ModelConfig.from_dict(model), target)
    return model


def matched_mlp_hidden(cfg, target_params: int) -> int:
    """MLP width that brings the baseline with ``cfg``'s shape closest to ``target_params``."""
    from depenc.models.transformer import ModelConfig, Transformer

    base = ModelConfig.from_dict({**cfg.to_dict(), "kind": "baseline"})
    per_unit = cfg.n_layer * (2 * cfg.n_embd + (1 if cfg.bias else 0))  # c_fc row + bias + c_proj column
    return base.mlp_width + round((target_params - Transformer(base).num_params()) / per_unit)


# ---- run folder -----------------------------------------------------------------------------
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# DDP (DESIGN 8): Lightning's launcher re-runs this command for ranks 1..N-1 when trainer.fit starts, and
# torchrun / SLURM tasks / multi-node launches start every rank themselves. Only rank zero creates and
# writes the run folder; the other ranks use rank zero's: passed on in DEPENC_RUN_DIR to the processes
# Lightning starts, and named in advance by run.name when an outside launcher starts every rank.
RUN_DIR_ENV = "DEPENC_RUN_DIR"
# the launcher's environment as this process started (Lightning later sets LOCAL_RANK, WORLD_SIZE, ... in
# rank zero's own environment when it starts the workers; a second run in the same process must not see them)
_LAUNCH_ENV = {k: v for k, v in os.environ.items()
               if k in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID", RUN_DIR_ENV)}


def is_launch_rank_zero() -> bool:
    """Whether this process is global rank zero, known before the Trainer exists (from the launcher's
    environment: torchrun's RANK, SLURM_PROCID of a multi-task job, Lightning's NODE_RANK/LOCAL_RANK)."""
    env = _LAUNCH_ENV
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def started_externally() -> bool:
    """Every rank started by an outside launcher (torchrun, SLURM tasks, one launch per node)."""
    env = _LAUNCH_ENV
    return (not is_launch_rank_zero() or int(env.get("WORLD_SIZE", "1")) > 1
            or int(env.get("SLURM_NTASKS", "1")) > 1 or "NODE_RANK" in env)


def new_run_dir(cfg: DictConfig) -> Path:
    shared = _LAUNCH_ENV.get(RUN_DIR_ENV)
    if shared and not is_launch_rank_zero():  # a DDP worker started by rank zero's launcher: rank zero's folder
        return Path(shared)
    base = Path(cfg.run.root) / cfg.exp
    if started_externally():
        if not cfg.run.name:
            raise ConfigError("a multi-process launch (torchrun, SLURM tasks, several nodes) needs run.name=<id> "
                              "so that every rank uses the same run folder")
        run_dir = base / cfg.run.name
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        return run_dir
    run_id = cfg.run.name or f"{datetime.now():%Y%m%d-%H%M%S}-s{cfg.seed}"
    run_dir, n = base / run_id, 1
    while run_dir.exists():  # two runs started in the same second
        n += 1
        run_dir = base / f"{run_id}-{n}"
    (run_dir / "checkpoints").mkdir(parents=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # for the DDP workers Lightning starts from this process
    return run_dir


def experiment_group(cfg: DictConfig) -> str:
    """W&B group: the experiment family, e.g. depenc_small and baseline_matched_small -> 'small'."""
    if cfg.run.group:
        return cfg.run.group
    name = str(cfg.exp).split("/")[-1]
    return name.rsplit("_", 1)[-1] if "_" in name else name


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def build_loggers(cfg: DictConfig, run_dir: Path, run_info: dict) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version=""))
    mode = wandb_mode(cfg.logger.wandb.mode)
    if mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_SILENT", "true")
        tags = [cfg.model.kind, cfg.data.source, f"seed{cfg.seed}", *cfg.logger.wandb.tags]
        run_args = dict(project=cfg.logger.wandb.project, entity=cfg.logger.wandb.entity,
                        name=f"{cfg.exp}/{run_dir.name}", id=run_info["wandb_id"], group=experiment_group(cfg),
                        job_type=cfg.logger.wandb.job_type, tags=tags, resume="allow")
        experiment = start_wandb_run(run_args, run_dir, mode) if mode == "online" and is_launch_rank_zero() else None
        loggers.append(WandbLogger(save_dir=str(run_dir), mode=mode, experiment=experiment, **run_args))
    return loggers


WANDB_INIT_TIMEOUT_S = 15  # default of W&B's own WANDB_INIT_TIMEOUT for online runs (its default is 90 s)


def start_wandb_run(run_args: dict, run_dir: Path, mode: str):
    """The W&B run, started here rather than lazily by Lightning so that an online run whose server cannot
    be reached within WANDB_INIT_TIMEOUT seconds goes on offline, saying so in one line, instead of
    hanging and failing with a traceback."""
    import wandb

    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_S))
    try:
        return wandb.init(dir=str(run_dir), mode=mode, settings=wandb.Settings(init_timeout=timeout), **run_args)
    except Exception as exc:  # wandb's CommError, UsageError (bad key), timeouts: all mean "not online now"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        print(f"wandb: no W&B server reachable within {timeout:g} s ({reason}); logging offline instead: "
              f"`wandb sync {run_dir / 'wandb'}/offline-run-*` uploads the run later", file=sys.stderr, flush=True)
        wandb.teardown()  # the failed attempt still holds the run id in W&B's service process
        for empty in (run_dir / "wandb").glob(f"run-*-{run_args['id']}"):  # its folder holds no data
            shutil.rmtree(empty, ignore_errors=True)
        return wandb.init(dir=str(run_dir), mode="offline", **run_args)


def read_final_metrics(metrics_csv: Path) -> dict[str, float]:
    """The last value of every column of metrics.csv (the final value of every logged metric)."""
    final: dict[str, float] = {}
    if not metrics_csv.is_file():
        return final
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and value not in (None, "") and key not in ("epoch",):
                    final[key] = float(value)
    return final


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    """Write a CSV atomically (a kill mid-write leaves the old file)."""
    keys = sorted({k for r in rows for k in r if k})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def merged_rows(old_rows: list[dict], new_rows: list[dict]) -> list[dict]:
    """Rows of an earlier segment up to where a later one took over, then the later one's rows."""
    first_new_step = min((float(r["step"]) for r in new_rows if r.get("step")), default=float("inf"))
    return [r for r in old_rows if float(r.get("step") or 0) < first_new_step] + new_rows


HISTORY_CSV = "metrics.before_resume.csv"


def set_aside_metrics(run_dir: Path) -> Path | None:
    """Lightning's CSVLogger deletes an existing metrics.csv: fold its rows into metrics.before_resume.csv
    (which still holds the history of an earlier segment that was killed before merging), to merge back
    when this segment ends. History is never overwritten, whatever the number of interrupted resumes."""
    current, previous = run_dir / "metrics.csv", run_dir / HISTORY_CSV
    if current.is_file():
        write_rows(previous, merged_rows(read_rows(previous), read_rows(current)))
        current.unlink()
    return previous if previous.is_file() else None


def merge_metrics(run_dir: Path, previous: Path | None) -> None:
    """metrics.csv = rows logged before the resume (up to the resumed step) + rows logged since."""
    if previous is None:
        return
    current = run_dir / "metrics.csv"
    write_rows(current, merged_rows(read_rows(previous), read_rows(current)))
    previous.unlink()


def write_summary(run_dir: Path, lm, trainer, extra: dict) -> dict:
    from depenc.evaluation.io import nan_to_none

    summary = read_final_metrics(run_dir / "metrics.csv")
    for key, value in trainer.callback_metrics.items():
        summary.setdefault(key, float(value))
    summary.update(
        n_params=lm.model.num_params(),
        global_step=trainer.global_step,
        tokens_seen=int(lm.tokens_seen.item()),
        **extra,
    )
    summary = nan_to_none(dict(sorted(summary.items())))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ---- resume: checks before anything is written, and the segments of a run -------------------------
# What a resume may change: how long and how the run trains, evaluates and logs -- never what it
# trains (model shape, data and tokenizer, optimiser, seed). Listed in the README (Resuming).
RESUMABLE = ("trainer.", "logger.", "callbacks.", "run.", "data.cache_dir", "data.num_workers",
             "model.compile", "model.attention_impl")


def check_resume_config(saved: DictConfig, cfg: DictConfig, run_dir: Path) -> None:
    """ConfigError naming the first key that ``cfg`` changes against the run's own config and that a
    resume may not change."""
    old, new = leaf_values(saved), leaf_values(cfg)
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE):
            raise ConfigError(f"--resume {run_dir}: '{key}' cannot change on a resume ({old.get(key)!r} in the run, "
                              f"{new.get(key)!r} asked): start a new run for that (a resume may change "
                              f"{', '.join(k.rstrip('.') for k in RESUMABLE)})")


def check_checkpoint_fits(ckpt: dict, lm, ckpt_path: Path) -> None:
    """CheckpointError unless the checkpoint's weights have exactly the parameters and shapes of ``lm``."""
    from depenc.lightning import CheckpointError, upgrade_state_dict

    state = dict(ckpt["state_dict"])
    upgrade_state_dict(state)
    own = lm.state_dict()
    for key in sorted(own.keys() | state.keys()):
        ours, theirs = own.get(key), state.get(key)
        if ours is None or theirs is None or ours.shape != theirs.shape:
            def shape(t):
                return "absent" if t is None else str(tuple(t.shape))

            raise CheckpointError(f"{ckpt_path} does not fit the run's config: '{key}' is {shape(theirs)} in the "
                                  f"checkpoint, {shape(ours)} in the model (was config.yaml edited?)")


def start_segment(run_info: dict, command: str, overrides: list[str]) -> dict:
    """Append this invocation (a new run or a resume) to run.json's ``segments``."""
    segments = run_info.setdefault("segments", [])
    if not segments and run_info.get("wall_time_s"):  # a run folder written before segments were recorded
        segments.append({"command": " | ".join(run_info["commands"]), "overrides": None,
                         "wall_time_s": run_info["wall_time_s"], "status": "done"})
    run_info["commands"].append(command)
    segment = {"command": command, "overrides": list(overrides), "started": datetime.now().isoformat(timespec="seconds"),
               "wall_time_s": 0.0, "status": "running"}
    segments.append(segment)
    return segment


def save_run_info(run_dir: Path, run_info: dict) -> None:
    """run.json, atomically; ``wall_time_s`` is the sum over the segments."""
    run_info["wall_time_s"] = round(sum(s["wall_time_s"] for s in run_info.get("segments", [])), 2)
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(run_info, indent=2))
    tmp.replace(run_dir / "run.json")


class SegmentClock:
    """Keeps the current segment's wall time (and status) in run.json, at every checkpoint and at the end,
    so that a run killed at any moment still adds up its time."""

    def __init__(self, run_dir: Path, run_info: dict, segment: dict, t0: float):
        self.run_dir, self.run_info, self.segment, self.t0 = run_dir, run_info, segment, t0
        self.after_fit = False  # set for the checkpoint written after trainer.fit returns

    def save(self, status: str | None = None) -> None:
        self.segment["wall_time_s"] = round(time.time() - self.t0, 2)
        if status:
            self.segment["status"] = status
        save_run_info(self.run_dir, self.run_info)


def segment_clock_callback(clock: SegmentClock):
    from lightning.pytorch.callbacks import Callback

    class SegmentClockCallback(Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            if clock.after_fit:
                # Lightning counts a checkpoint as saved inside the loop, before its logging step counter
                # moved on, and adds one on restore; one saved after fit would resume one step ahead
                # (its train rows would then fall on other steps than an uninterrupted run's)
                checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
            if trainer.is_global_zero:
                clock.save()

    return SegmentClockCallback()


# ---- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m depenc.train", description=__doc__)
    p.add_argument("exp", nargs="?", help="experiment name (experiments/<exp>.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--resume", default=None, help="run folder to continue from its checkpoints/last.ckpt")
    args = p.parse_args(argv)
    if not args.exp and not args.resume:
        p.error("give an experiment name (e.g. depenc_small) or --resume RUN_DIR")
    return args, args.overrides


def resolve_config(args, overrides) -> tuple[DictConfig, Path | None]:
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; give a run folder (runs/<exp>/<run_id>)")
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError(f"--resume {run_dir}: no checkpoints/last.ckpt to continue from")
        extra = [o for o in overrides if "=" in o]
        if args.exp and "=" in args.exp:
            extra.insert(0, args.exp)
        source = f"{run_dir}/config.yaml"
        saved = load_yaml(run_dir / "config.yaml", source)
        cfg = merge_checked([(saved, source), (parse_overrides(extra), "command line")])
        check_resume_config(merge_checked([(saved, source)]), cfg, run_dir)
        validate(cfg)
        return cfg, run_dir
    return load_config(args.exp, overrides), None


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg, resume_dir = resolve_config(args, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.exp and "=" in args.exp:
        overrides = [args.exp, *overrides]
    return run(cfg, resume_dir, command=" ".join(sys.argv if argv is None else ["depenc.train", *argv]),
               overrides=overrides)


def build_lm(cfg: DictConfig, dm, model_dict: dict, fresh: bool):
    import torch

    from depenc.lightning import LM_CLASSES

    lm = LM_CLASSES[cfg.model.kind](
        model=model_dict,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        max_steps=cfg.trainer.max_steps,
        eval_sets=list(dm.eval_set_names),
        test_sets=list(dm.test_set_names),
        split_stats=dict(dm.split_stats),
        kind=cfg.model.kind,
        log_encoder_every=cfg.trainer.log_encoder_every,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    if cfg.model.depenc.embedding_init == "ppmi_svd" and fresh:
        from depenc.data.ppmi import ppmi_svd_embeddings

        with torch.no_grad():
            lm.model.wte.weight.copy_(ppmi_svd_embeddings(dm.stream("train"), dm.tokenizer.vocab_size, cfg.model.n_embd))
    return lm


# ---- budgets in tokens: the same run on any number of devices ------------------------------------
def world_size(cfg: DictConfig) -> int:
    """Processes that train together, known before the Trainer exists: trainer.devices x num_nodes
    ('auto' / -1: every GPU when one is used, else one process)."""
    devices = cfg.trainer.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        import torch

        on_gpu = cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        devices = torch.cuda.device_count() if on_gpu else 1
    elif not isinstance(devices, int):  # a list of device ids
        devices = len(devices)
    return int(devices) * int(cfg.trainer.num_nodes)


def accumulation(cfg: DictConfig) -> int:
    """Micro-batches per optimizer step for trainer.global_batch_tokens (1 when it is 0)."""
    target = cfg.trainer.global_batch_tokens
    micro = cfg.data.batch_size * cfg.data.block_size * world_size(cfg)
    if not target:
        return 1
    n, rest = divmod(target, micro)
    if rest or n == 0:
        nearest = max(1, round(target / micro)) * micro
        raise ConfigError(f"trainer.global_batch_tokens={target} is not a multiple of data.batch_size x data.block_size "
                          f"x devices = {cfg.data.batch_size} x {cfg.data.block_size} x {world_size(cfg)} = {micro}: "
                          f"use {nearest}, or change data.batch_size")
    return n


def apply_token_budget(cfg: DictConfig) -> None:
    """trainer.max_tokens and optim.warmup_tokens become max_steps and warmup_steps for this machine's
    tokens per optimizer step (written into cfg, so config.yaml records the steps they meant)."""
    step_tokens = cfg.data.batch_size * cfg.data.block_size * world_size(cfg) * accumulation(cfg)
    if cfg.trainer.max_tokens:
        cfg.trainer.max_steps = max(1, -(-cfg.trainer.max_tokens // step_tokens))
    if cfg.optim.warmup_tokens:
        cfg.optim.warmup_steps = round(cfg.optim.warmup_tokens / step_tokens)


def prepare(cfg: DictConfig, resume_dir: Path | None):
    """(datamodule, LightningModule): everything that can fail on bad input, before the run folder is
    touched. On a resume, the checkpoint is loaded (safely) and checked against the model here."""
    from depenc.data.datamodule import LMDataModule
    from depenc.lightning import CheckpointError, read_checkpoint

    apply_token_budget(cfg)
    dm = LMDataModule(cfg.data, seed=cfg.seed, eval_stride=cfg.eval.stride)
    dm.setup("fit")
    model_dict = build_model_config(cfg, dm.tokenizer)
    if model_dict["kind"] == "depenc" and model_dict["depenc"]["parser"] == "oracle":
        dm.enable_gold_arcs(model_dict["depenc"]["target"])  # analysis mode: batches carry gold_M
    try:
        lm = build_lm(cfg, dm, model_dict, fresh=resume_dir is None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if resume_dir is not None:
        last = resume_dir / "checkpoints" / "last.ckpt"
        try:
            check_checkpoint_fits(read_checkpoint(str(last)), lm, last)
        except CheckpointError as exc:
            raise ConfigError(f"--resume {resume_dir}: {exc}") from None
    return dm, lm


def open_run_dir(cfg: DictConfig, resume_dir: Path | None, command: str, overrides: list[str]):
    """(run folder, run.json dict, this segment): the folder created or, on a resume, its config.yaml
    rewritten with the overrides and its metrics history set aside. Other DDP ranks only read it."""
    run_dir = new_run_dir(cfg) if resume_dir is None else resume_dir
    if not is_launch_rank_zero():
        info_file = run_dir / "run.json"
        run_info = json.loads(info_file.read_text()) if info_file.is_file() else {"wandb_id": None, "commands": []}
        return run_dir, run_info, {"wall_time_s": 0.0}
    if resume_dir is None:
        run_info = {"exp": cfg.exp, "run_id": run_dir.name, "wandb_id": uuid.uuid4().hex[:12],
                    "git_commit": git_commit(), "commands": [], "wall_time_s": 0.0}
    else:
        run_info = json.loads((run_dir / "run.json").read_text())
    segment = start_segment(run_info, command, overrides)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    save_run_info(run_dir, run_info)
    return run_dir, run_info, segment


# Lightning's messages that say nothing about this run (hardware it does not have, tips, the defaults
# this project sets on purpose, a deprecation inside Lightning itself): dropped at their source
HARMLESS_MESSAGES = ("GPU available: False", "TPU available:", "HPU available:", "💡 Tip:", "was configured so 100%",
                     "`Trainer.fit` stopped: `max_steps=")
HARMLESS_WARNINGS = (r"Experiment logs directory .* exists and is not empty",  # the folder holds config.yaml
                     r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                     r"Checkpoint directory .* exists and is not empty",  # a resume writes into its own folder
                     r"Your `IterableDataset` has `__len__` defined",  # LitData's loader: its length is exact
                     r"It is recommended to use `self.log\('((val|test)/|step')",  # computed from sums all-reduced already
                     r"The number of training batches \(\d+\) is smaller than the logging interval")  # logging counts steps, not epochs


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(m in record.getMessage() for m in HARMLESS_MESSAGES)


def quiet_harmless_noise() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) for f in log.filters):
            log.addFilter(_DropHarmless())
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def run(cfg: DictConfig, resume_dir: Path | None = None, command: str = "", overrides: list[str] = ()) -> int:
    import lightning as L

    from depenc.data.sources import DataUnavailableError

    t0 = time.time()
    quiet_harmless_noise()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        dm, lm = prepare(cfg, resume_dir)
        run_dir, run_info, segment = open_run_dir(cfg, resume_dir, command, list(overrides))
    except (DataUnavailableError, ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clock = SegmentClock(run_dir, run_info, segment, t0)
    rank_zero = is_launch_rank_zero()
    if rank_zero:
        print(f"{'resuming' if resume_dir is not None else 'run folder:'} {run_dir}", flush=True)
    try:
        previous_metrics = set_aside_metrics(run_dir) if resume_dir is not None and rank_zero else None
        if rank_zero:
            dm.save_tokenizer(run_dir)
        summary = fit(cfg, dm, lm, run_dir, run_info, resume_dir, previous_metrics, clock)
    except BaseException as exc:  # a crash or Ctrl-C: run.json says so instead of "running"
        if rank_zero:
            clock.save("interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {type(exc).__name__}")
        raise
    if summary is not None:
        print(f"finished: {run_dir}")
        if summary.get("final_weights") == "best":
            print(f"  (end-of-run metrics on best.ckpt, step {summary.get('best_step')})")
        for key in sorted(k for k in summary if k.endswith("/ppl") or k.endswith("/bpb")):
            print(f"  {key} = {summary[key]:.4f}" if summary[key] is not None else f"  {key} = n/a")
    return 0


def early_stopping(cfg: DictConfig, monitor: str) -> list:
    """Lightning's EarlyStopping on the first eval set's loss when trainer.early_stopping_patience > 0
    (checked at validations only; trainer.max_steps stays the cap, best.ckpt keeps the best weights)."""
    if not cfg.trainer.early_stopping_patience:
        return []
    from lightning.pytorch.callbacks import EarlyStopping

    return [EarlyStopping(monitor=monitor, mode="min", patience=cfg.trainer.early_stopping_patience,
                          min_delta=cfg.trainer.early_stopping_min_delta, check_on_train_epoch_end=False,
                          verbose=False)]


def save_best_after_fit(trainer, best, path: Path) -> None:
    """best.ckpt always exists after a run: the final validation (outside fit, which ModelCheckpoint does
    not see) may be the best one, and a run never validated during fit has no best.ckpt yet; without any
    validation loss (limit_val_batches=0) best.ckpt is the last step."""
    final = trainer.callback_metrics.get(best.monitor)
    better = final is not None and (best.best_model_score is None or float(final) < float(best.best_model_score))
    if better or not path.is_file():
        trainer.save_checkpoint(str(path), weights_only=False)


def final_weights(cfg: DictConfig) -> str:
    """last | best: the weights every end-of-run metric is computed on (trainer.final_weights)."""
    if cfg.trainer.final_weights == "auto":
        return "best" if cfg.trainer.early_stopping_patience else "last"
    return cfg.trainer.final_weights


def load_best(lm, path: Path) -> int:
    """Load best.ckpt's weights into ``lm``; returns the step it was saved at."""
    from depenc.lightning import read_checkpoint

    ckpt = read_checkpoint(str(path))
    lm.load_state_dict(ckpt["state_dict"])
    return int(ckpt.get("global_step", -1))


def validate_unlogged(trainer, lm, dm) -> dict[str, float]:
    """The val/... metrics of ``lm``'s current weights, kept out of metrics.csv and W&B (whose validation
    curve stays the training run's)."""
    loggers = trainer.loggers
    trainer.loggers = []
    trainer.depenc_on_best = True  # the progress line says whose weights these are
    try:
        trainer.validate(lm, datamodule=dm, verbose=False)
    finally:
        trainer.loggers = loggers
        trainer.depenc_on_best = False
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def strategy_of(t):
    """trainer.strategy; DDP (``auto`` or ``ddp`` with several processes) gets the process-group timeout
    trainer.dist_timeout_s, which bounds how long the other ranks wait for rank zero (its callbacks)."""
    import torch

    if t.strategy not in ("auto", "ddp"):
        return t.strategy
    devices = str(t.devices)
    if devices in ("auto", "-1"):
        n = torch.cuda.device_count() if t.accelerator in ("auto", "gpu", "cuda") else 1
    else:
        n = len([d for d in devices.strip("[]").split(",") if d.strip()]) if "," in devices or "[" in devices else int(devices)
    if n * t.num_nodes <= 1:
        return t.strategy
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(timeout=timedelta(seconds=t.dist_timeout_s))


def fit(cfg: DictConfig, dm, lm, run_dir: Path, run_info: dict, resume_dir: Path | None,
        previous_metrics: Path | None, clock: SegmentClock) -> dict | None:
    """Train (from last.ckpt on a resume), validate and test; rank zero returns the summary."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from depenc.callbacks import EvalCallback, build_callbacks
    from depenc.callbacks.progress import Progress

    if cfg.model.compile:
        lm.model.compile()  # in place: checkpoints keep the plain parameter names
    ckpt_dir = str(run_dir / "checkpoints")
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=f"val/{dm.eval_set_names[0]}/loss", mode="min",
                           save_top_k=1, save_on_train_epoch_end=False, auto_insert_metric_name=False)
    evaluations = build_callbacks(cfg, dm, run_dir)
    use_best = final_weights(cfg) == "best"
    for cb in evaluations:
        if isinstance(cb, EvalCallback) and use_best:
            cb.final_at_train_end = False  # run below, on best.ckpt's weights
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="last-{step}", save_last=True, save_top_k=0,
                        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps, save_on_train_epoch_end=False),
        best,
        *early_stopping(cfg, best.monitor),
        segment_clock_callback(clock),
        Progress(cfg.trainer.progress, cfg.trainer.progress_every_n_steps),
        *evaluations,
    ]
    t = cfg.trainer
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        max_steps=t.max_steps,
        val_check_interval=t.val_check_interval * accumulation(cfg),  # Lightning counts micro-batches here
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy_of(t),
        precision=t.precision,
        gradient_clip_val=cfg.optim.grad_clip or None,
        accumulate_grad_batches=accumulation(cfg),
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=False,  # the Progress callback counts steps, not batches of an epoch
        enable_model_summary=False,
        logger=build_loggers(cfg, run_dir, run_info) or False,
        callbacks=callbacks,
        num_sanity_val_steps=0,
    )
    ckpt_path = None if resume_dir is None else str(run_dir / "checkpoints" / "last.ckpt")
    trainer.fit(lm, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    clock.after_fit = True
    trainer.save_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), weights_only=False)  # = with optimiser state
    if t.val_check_interval and trainer.global_step % t.val_check_interval:
        trainer.validate(lm, datamodule=dm, verbose=False)  # final val/... metrics at the last step
    save_best_after_fit(trainer, best, run_dir / "checkpoints" / "best.ckpt")
    extra: dict = {"final_weights": final_weights(cfg)}
    if use_best:  # every end-of-run metric below is computed on the best validation step's weights
        extra["best_step"] = load_best(lm, run_dir / "checkpoints" / "best.ckpt")
        if best.best_model_score is not None:
            extra["best_val_loss"] = float(best.best_model_score)
        if t.val_check_interval and t.limit_val_batches:
            extra.update(validate_unlogged(trainer, lm, dm))  # summary.json's val/... are best.ckpt's too
        for cb in evaluations:
            if isinstance(cb, EvalCallback):
                cb.run_final(trainer, lm)
    if t.test_at_end:
        trainer.test(lm, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        logger.finalize("success")
    merge_metrics(run_dir, previous_metrics)
    clock.save("done")
    summary = write_summary(run_dir, lm, trainer, {**extra, "wall_time_s": run_info["wall_time_s"]})
    import wandb

    if wandb.run is not None:
        wandb.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        wandb.finish()
    return summary


if __name__ == "__main__":
    sys.exit(main())
