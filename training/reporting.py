"""wandb set-up: online with an API key, otherwise offline under the run directory."""

from __future__ import annotations

import os
from pathlib import Path

from config import TrainSettings


def setup_wandb(t: TrainSettings) -> None:
    """Log offline when no API key is configured: never block on wandb's login prompt."""
    if "wandb" not in t.report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", "siglip-qwen-vqa")
    os.environ.setdefault("WANDB_DIR", str(Path(t.output_dir).resolve()))
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        try:
            import netrc

            has_key = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (FileNotFoundError, netrc.NetrcParseError, OSError):
            has_key = False
    if not has_key and os.environ.get("WANDB_MODE") not in ("disabled", "offline"):
        os.environ["WANDB_MODE"] = "offline"
    if os.environ.get("WANDB_MODE") == "offline" and int(os.environ.get("RANK", "0")) == 0:
        print(f"wandb: no API key, logging offline under {os.environ['WANDB_DIR']}/wandb "
              "(upload later with `wandb sync`)", flush=True)
