"""``train``: one model with Lightning, from a recipe, flags or a run's ``config.yaml``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import command

if TYPE_CHECKING:
    from ..training.recipe import Recipe

#: The ``train`` command's run parameters beside the recipe, with their defaults.
TRAIN_DEFAULTS = {"model": None, "data_root": None, "accelerator": "auto", "devices": "auto",
                  "strategy": "auto", "num_nodes": 1, "num_workers": None, "seed": 0,
                  "allow_cpu": False}


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..training.recipe import MMSEG, OPTIMIZERS, RECIPES, recipe_field_types

    p.add_argument("--model", default=None, help="a registry name (required unless --config gives it)")
    p.add_argument("--run-dir", required=True,
                   help="folder for checkpoints and logs, created if missing (resumes its last.ckpt); "
                        "refused while another live train or run holds it")
    p.add_argument("--config", default=None, metavar="CONFIG_YAML",
                   help="rerun a run: its config.yaml (recipe and parameters); flags given override it")
    p.add_argument("--data-root", default=None)
    p.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="the named training recipe the flags below override (default mmseg)")
    helps = {"batch_size": "per device", "precision": "a Lightning precision such as 16-mixed; None: the runtime's AMP policy",
             "pretrained": '"default", "none", "imagenet", a torchgeo weights name or a state-dict file'}
    for name, kind in recipe_field_types().items():
        default = getattr(MMSEG, name)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       choices=list(OPTIMIZERS) if name == "optimizer" else None,
                       help=f"{helps.get(name, 'recipe field')} (default: the recipe's; mmseg: {default})")
    p.add_argument("--accelerator", default=None, help="default auto")
    p.add_argument("--devices", default=None, help="e.g. 4, or 0,1 (default auto)")
    p.add_argument("--strategy", default=None, help="e.g. ddp (default auto)")
    p.add_argument("--num-nodes", type=int, default=None, help="default 1")
    p.add_argument("--num-workers", type=int, default=None, help="default: one per core, see the data module")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--allow-cpu", action="store_true", default=None,
                   help="train a GPU recipe's full schedule (mmseg) on the CPU all the same")


def train_settings(args: argparse.Namespace) -> tuple[Recipe, dict[str, Any]]:
    """The recipe and run parameters ``train`` runs with: the flags given, over ``--config``'s
    file, over the named recipe and :data:`TRAIN_DEFAULTS`."""
    from ..training.recipe import RECIPE_PARAMETER, Recipe, read_run_config

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("run_dir", "config", "func", "command")}
    recipe_params: dict[str, Any] = {}
    params = dict(TRAIN_DEFAULTS)
    if args.config:
        recipe, stored = read_run_config(args.config)
        params.update({k: v for k, v in stored.items() if k in TRAIN_DEFAULTS})
        if RECIPE_PARAMETER not in given:  # a recipe named on the command line starts afresh
            recipe_params = recipe.to_params()
    recipe = Recipe.from_params(recipe_params | given)
    params.update({k: v for k, v in given.items() if k in TRAIN_DEFAULTS})
    if isinstance(params["devices"], str) and params["devices"].lstrip("-").isdigit():
        params["devices"] = int(params["devices"])
    if not params["model"]:
        raise ConfigError("--model: missing; pass a registry name, or --config with a run's config.yaml")
    _check_train_params(params)
    return recipe, params


#: ``train``'s integer parameters: (flag, lowest value, highest value or None).
_TRAIN_INTS = {"num_nodes": ("--num-nodes", 1, None), "num_workers": ("--num-workers", 0, None),
               "seed": ("--seed", 0, 2**32 - 1)}  # numpy seeds 0..2**32-1


def _check_train_params(params: dict[str, Any]) -> None:
    """Refuse what Lightning or numpy would refuse with a traceback, naming the flag."""
    for key, (flag, low, high) in _TRAIN_INTS.items():
        value = params[key]
        if value is None:
            continue
        bad = not isinstance(value, int) or isinstance(value, bool) or value < low
        if bad or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"{flag} {value!r}: must be an integer {bounds}")
    devices = params["devices"]
    if isinstance(devices, int) and (devices == 0 or devices < -1):
        raise ConfigError(f"--devices {devices}: use a positive count, -1 (all), a list such as "
                          "0,1, or auto")


@command("train", "train one model with Lightning (multi-GPU/multi-node with --strategy ddp)", _train_args)
def train(args: argparse.Namespace) -> int:
    import lightning as L
    from lightning.pytorch.utilities import rank_zero_only
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ..data.root import resolve_data_root
    from ..models.registry import get_spec
    from ..results.store import check_output_folder, claim_folder
    from ..training.checkpoint import last_checkpoint_path
    from ..training.recipe import CONFIG_FILE, write_run_config
    from ..training.trainer import build_datamodule, check_trainer_settings, fit

    recipe, params = train_settings(args)
    rank_zero = getattr(rank_zero_only, "rank", 0) == 0  # DDP starts this command once per process
    # Everything that can be refused is, before the folder is created or claimed.
    check_output_folder(args.run_dir, "--run-dir")
    get_spec(params["model"])
    root = resolve_data_root(params["data_root"])
    check_trainer_settings(recipe, accelerator=params["accelerator"], devices=params["devices"],
                           strategy=params["strategy"], num_nodes=params["num_nodes"])
    # The folder is the user's (any path, links followed); it must be, or become, a writable
    # folder, and one train at a time: rank 0 holds its claim until the process ends.
    run_dir = claim_folder(args.run_dir) if rank_zero else check_output_folder(args.run_dir, "--run-dir")
    L.seed_everything(params["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(recipe, root, num_workers=params["num_workers"], seed=params["seed"])
    if rank_zero:
        rerun = f"python -m loveda_utils train --config {run_dir / CONFIG_FILE} --run-dir NEW_RUN_DIR"
        write_run_config(run_dir, recipe, params | {"data_root": str(root)}, rerun=rerun)
    try:
        outcome = fit(recipe, datamodule, run_dir, model=params["model"],
                      accelerator=params["accelerator"], devices=params["devices"],
                      strategy=params["strategy"], num_nodes=params["num_nodes"],
                      allow_cpu=params["allow_cpu"])
    except KeyboardInterrupt as exc:  # fit saved the steps done and says where
        print(f"interrupted: {exc or 'training stopped'}; the same command resumes", file=sys.stderr)
        return 130
    except SIGTERMException:
        print(f"stopped by SIGTERM: {last_checkpoint_path(run_dir)} holds the steps done; the same "
              "command resumes", file=sys.stderr)
        return 143
    trainer = outcome.trainer
    if trainer is not None and trainer.global_rank == 0:
        print(f"trained {params['model']} to step {outcome.steps} on {trainer.world_size} process(es); "
              f"checkpoint: {outcome.checkpoint}")
    return 0
