"""Reference loss curves of the `debug` experiment (torchtitan habit): a refactor must reproduce them exactly.

``python scripts/reference_curve.py --write tests/data/reference_debug.json`` records them (train loss at
every step and the final validation loss, for each model form the shipped experiments use);
``tests/test_reference.py`` re-runs the same commands and compares bit for bit (CPU, one thread).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

# model forms the shipped experiments build (debug shape)
FORMS = {
    "baseline": ["model.kind=baseline"],
    "baseline_matched": ["model.kind=baseline_matched"],
    "baseline_alibi": ["model.kind=baseline_matched", "model.pos=alibi"],
    "depenc": ["model.kind=depenc"],
    "depenc_mix": ["model.kind=depenc", "model.depenc.attention=mix"],
}
COMMON = ["trainer.max_steps=12", "trainer.val_check_interval=12", "trainer.log_every_n_steps=1",
          "trainer.test_at_end=false", "trainer.limit_val_batches=4", "callbacks.alignment.enabled=false",
          "callbacks.generation.enabled=false", "callbacks.agreement.enabled=false",
          "callbacks.efficiency.enabled=false", "logger.wandb.mode=disabled",
          "data.synthetic.n_train=600", "data.synthetic.n_validation=100", "data.synthetic.n_test=50",
          "data.synthetic.n_test_long=20"]


def curve(form: str, root: Path) -> dict:
    import torch

    from depenc.train import main

    torch.set_num_threads(1)
    args = ["debug", f"run.root={root / 'runs'}", f"data.cache_dir={root / 'cache'}", f"run.name={form}",
            *COMMON, *FORMS[form]]
    assert main(args) == 0, f"training {form} failed"
    rows = list(csv.DictReader(open(root / "runs" / "debug" / form / "metrics.csv")))
    train = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    val = [float(r["val/validation/loss"]) for r in rows if r.get("val/validation/loss")]
    return {"train_loss": [train[s] for s in sorted(train)], "val_loss": val}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", type=Path, help="write the curves to this JSON file")
    p.add_argument("--forms", nargs="*", default=list(FORMS))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = {form: curve(form, Path(tmp)) for form in a.forms}
    text = json.dumps(out, indent=1)
    if a.write:
        a.write.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
