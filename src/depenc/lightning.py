"""LightningModules: one base class holds all training/evaluation code; BaselineLM and DepEncLM
differ only in the model config they build and in what DepEncLM logs about its encoder."""

from __future__ import annotations

import math
import pickle
import re

import lightning as L
import torch
import torch.nn as nn
from torchmetrics import SumMetric

from depenc.models.transformer import ModelConfig, Transformer

# options of the first structure study, removed after the tag study-v1, with the value that the kept code computes
STUDY_V1_OPTIONS = {"recency_prior": True, "freeze_parser": False, "within_document": True, "exclude_ids": [],
                    "second_order": False, "hops": 1, "zero_gate": False, "zero_lambda": False}


def upgrade_model_config(model: dict, kind: str) -> dict:
    """A ModelConfig dict of a checkpoint written before the study-v1 cleanup, in today's form (one that
    used a removed option raises: evaluate it with the code of `git checkout study-v1`)."""
    dep = dict(model.get("depenc") or {})
    if "enabled" not in dep:
        return model
    dep.pop("enabled")
    removed = {k: dep.pop(k) for k in list(dep) if k in STUDY_V1_OPTIONS}
    used = [f"{k}={v}" for k, v in removed.items() if v != STUDY_V1_OPTIONS[k]]
    if dep.get("parser") == "frontier":
        used.append("parser=frontier")
    if dep.get("parser_layer") == 0:
        used.append("parser_layer=0")
    if kind == "depenc" and used:
        raise ValueError(f"this checkpoint uses model.depenc {', '.join(used)}, removed after the tag study-v1; "
                         "evaluate it with that version (git checkout study-v1)")
    new = {k: v for k, v in model.items() if k != "flex_attention"}
    return {**new, "kind": kind, "attention_impl": "flex" if model.get("flex_attention") else "auto",
            "depenc": {**dep, "embedding_init": "none"}}


def upgrade_state_dict(state: dict) -> None:
    """Parameter names and shapes of a checkpoint written before the study-v1 cleanup, in place."""
    for key in list(state):
        new = key.replace("encoder.w_head", "encoder.parser.w_head").replace("encoder.w_dep", "encoder.parser.w_dep")
        value = state.pop(key)
        state[new] = value.flatten() if key.endswith("dep_gamma") else value


def _metric_key(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", name)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def encoder_diagnostics(arcs: dict, target: str) -> dict[str, float]:
    """Scalars that tell whether the structure is used: parser entropy, gate, mass on the previous word."""
    P, g, has = arcs["P"].float(), arcs["g"].float(), arcs["has_cand"]
    if not bool(has.any()):
        return {}
    ent = -(P * P.clamp(min=1e-12).log()).sum(-1)  # (B, T)
    # the word immediately before the attaching token: j = i - 1 (self) or j = i (next)
    off = -1 if target == "self" else 0
    prev = torch.diagonal(P, offset=off, dim1=1, dim2=2)  # (B, T) or (B, T-1)
    prev_has = has[:, 1:] if target == "self" else has
    return {
        "parser_entropy": ent[has].mean().item(),
        "gate_mean": g[has].mean().item(),
        "prev_word_mass": prev[prev_has].mean().item(),
    }


class LMBase(L.LightningModule):
    """Next-token training, per-evaluation-set perplexity / bits per byte / word perplexity.

    hparams: ``model`` (ModelConfig dict), ``optim`` (lr, weight_decay, betas, warmup_steps,
    min_lr_ratio, encoder_lr_mult), ``max_steps``, ``eval_sets`` / ``test_sets`` (names, in dataloader
    order), ``split_stats`` (name -> n_tokens, n_bytes, n_words), ``kind``, ``log_encoder_every``.
    """

    def __init__(
        self,
        model: dict,
        optim: dict,
        max_steps: int,
        eval_sets: list[str],
        test_sets: list[str],
        split_stats: dict,
        kind: str = "baseline",
        log_encoder_every: int = 50,
        run_config: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = Transformer(ModelConfig.from_dict(upgrade_model_config(model, kind)))
        names = {f"{stage}/{n}" for stage, sets in (("val", eval_sets), ("test", test_sets)) for n in sets}
        # sums over all the ranks' batches (each rank its own share of the blocks, see EvalShard), in float64
        # so that the mean does not depend on how the blocks were shared out
        self.nll_sums = nn.ModuleDict({_metric_key(n): SumMetric().set_dtype(torch.float64) for n in names})
        self.token_counts = nn.ModuleDict({_metric_key(n): SumMetric().set_dtype(torch.float64) for n in names})
        self.register_buffer("tokens_seen", torch.zeros((), dtype=torch.long))

    # ---- training ---------------------------------------------------------------------------
    def forward(self, idx, targets=None, **kw):
        return self.model(idx, targets, **kw)

    def training_step(self, batch, batch_idx):
        analyse = self.should_log_encoder()
        out = self.model(batch["input_ids"], batch["targets"], return_analysis=analyse, gold_M=batch.get("gold_M"))
        # a tensor add, no host sync in the training step
        self.tokens_seen += (batch["targets"] != -100).sum() * self.trainer.world_size
        self.log("train/loss", out["loss"], prog_bar=True)
        self.log("train/tokens_seen", self.tokens_seen.float(), rank_zero_only=True)
        # a logged "step" is the row's step (Lightning's own counter lags by one here): every file and
        # logger counts optimizer steps done, as perf/* and the callbacks do
        self.log("step", float(self.global_step + 1), rank_zero_only=True)
        if analyse:
            self.log_encoder(out)
        if "aux_loss" in out:  # depenc.inducer: the auxiliary objective (train/loss stays the LM's)
            self.log_dict({"train/inducer_nll": out["inducer_nll"], "train/distill": out["distill"]})
            return out["loss"] + out["aux_loss"]
        return out["loss"]

    def should_log_encoder(self) -> bool:
        return False

    def log_encoder(self, out: dict) -> None:
        pass

    # ---- evaluation -------------------------------------------------------------------------
    def _eval_step(self, stage: str, batch, dataloader_idx: int) -> None:
        names = self.hparams.eval_sets if stage == "val" else self.hparams.test_sets
        key = _metric_key(f"{stage}/{names[dataloader_idx]}")
        logits = self.model(batch["input_ids"], gold_M=batch.get("gold_M"))["logits"]  # (B, T, V)
        targets = batch["targets"]
        nll = nn.functional.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-100, reduction="sum"
        )
        self.nll_sums[key].update(nll)
        self.token_counts[key].update((targets != -100).sum().float())

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval_step("test", batch, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        names = self.hparams.eval_sets if stage == "val" else self.hparams.test_sets
        for name in names:
            key = _metric_key(f"{stage}/{name}")
            count = self.token_counts[key].compute()
            if count <= 0:  # e.g. limit_val_batches=0
                continue
            nll = self.nll_sums[key].compute()
            self.nll_sums[key].reset()
            self.token_counts[key].reset()
            mean_nll = nll / count
            stats = self.hparams.split_stats.get(name, {})
            metrics = {f"{stage}/{name}/loss": mean_nll, f"{stage}/{name}/ppl": torch.exp(mean_nll)}
            # bytes/words are those of the whole split: only meaningful when all of it was evaluated
            full = stats.get("n_tokens") and int(count) == int(stats["n_tokens"])
            if full and stats.get("n_bytes"):
                metrics[f"{stage}/{name}/bpb"] = nll / math.log(2) / stats["n_bytes"]
            if full and stats.get("n_words"):
                metrics[f"{stage}/{name}/word_ppl"] = torch.exp(nll / stats["n_words"])
            metrics["step"] = float(self.global_step)  # the steps done when evaluated (see training_step)
            self.log_dict(metrics, rank_zero_only=False, sync_dist=False, add_dataloader_idx=False)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # ---- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.hparams.optim
        encoder_names = self.model.encoder_parameter_names()
        groups = {"decay": [], "no_decay": [], "encoder": []}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if name in encoder_names:
                groups["encoder"].append(p)
            elif p.dim() >= 2:
                groups["decay"].append(p)
            else:
                groups["no_decay"].append(p)
        param_groups = [
            {"params": groups["decay"], "weight_decay": o["weight_decay"], "lr": o["lr"]},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr": o["lr"]},
        ]
        if groups["encoder"]:  # own learning rate, no decay (DESIGN 3.5: a shared lr cannot move gamma)
            param_groups.append({"params": groups["encoder"], "weight_decay": 0.0, "lr": o["lr"] * o["encoder_lr_mult"]})
        opt = torch.optim.AdamW(param_groups, betas=tuple(o["betas"]), fused=False)
        total, warmup, min_ratio = self.hparams.max_steps, o["warmup_steps"], o["min_lr_ratio"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, warmup, total, min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_state_dict(checkpoint["state_dict"])

    def on_before_optimizer_step(self, optimizer):
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/lr", optimizer.param_groups[0]["lr"], rank_zero_only=True)


class BaselineLM(LMBase):
    pass


class DepEncLM(LMBase):
    def should_log_encoder(self) -> bool:
        every = self.hparams.log_encoder_every
        return every > 0 and self.global_step % every == 0

    def log_encoder(self, out: dict) -> None:
        """Is the structure used? Parser entropy, gate, previous-word mass, mixture/bias weights."""
        metrics = {f"depenc/{k}": v for k, v in self.encoder_stats(out).items()}
        self.log_dict(metrics, rank_zero_only=True)

    @torch.no_grad()
    def encoder_stats(self, out: dict) -> dict[str, float]:
        dep = out.get("dep")
        stats = encoder_diagnostics(dep, self.model.cfg.depenc.target) if dep else {}
        attn = [b.attn for b in self.model.blocks]
        if mix := [a.mix_weights()[:, 1] for a in attn if hasattr(a, "dep_gamma")]:
            stats["lambda_mean"] = torch.stack(mix).mean().item()
        if beta := [a.dep_beta for a in attn if hasattr(a, "dep_beta")]:
            stats["beta_mean"] = torch.stack(beta).mean().item()
        return stats


LM_CLASSES = {"baseline": BaselineLM, "baseline_matched": BaselineLM, "depenc": DepEncLM}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, foreign, or holding objects other than tensors and
    plain containers); the message is one line."""


def _load_failure(exc: Exception) -> str:
    """One short phrase for why torch.load failed (its own messages run to several sentences)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError):
        what = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), "an object of unknown type")
        return f"corrupt, or it holds code or objects other than tensors ({what.rstrip('.')}); nothing of it was run"
    first = lines[0].split(". ")[0] if lines else type(exc).__name__
    return f"not a readable checkpoint, truncated or corrupt? ({first[:200]})"


def read_checkpoint(ckpt_path: str, map_location: str = "cpu") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True``: tensors and plain containers only, so a
    crafted pickle is refused before any of its code runs. A Lightning checkpoint of this project needs
    nothing allow-listed (hyper_parameters are plain dicts)."""
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or random file, an unsafe pickle
        raise CheckpointError(f"cannot load checkpoint {ckpt_path}: {_load_failure(exc)}") from None
    kind = ckpt.get("hyper_parameters", {}).get("kind") if isinstance(ckpt, dict) else None
    if kind not in LM_CLASSES or "state_dict" not in ckpt:
        raise CheckpointError(f"cannot load checkpoint {ckpt_path}: not a checkpoint written by depenc.train")
    return ckpt


def load_lm(ckpt_path: str, map_location: str = "cpu") -> LMBase:
    """Rebuild whichever LightningModule wrote ``ckpt_path`` (safe loading: see read_checkpoint)."""
    ckpt = read_checkpoint(ckpt_path, map_location)
    hparams = ckpt["hyper_parameters"]
    lm = LM_CLASSES[hparams["kind"]](**hparams)
    lm.on_load_checkpoint(ckpt)  # parameter names of older checkpoints
    lm.load_state_dict(ckpt["state_dict"])
    return lm.to(map_location)
