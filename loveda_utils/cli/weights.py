"""``fetch-weights``: the pretrained weights models need, fetched, checked, exported or imported."""

from __future__ import annotations

import argparse

from .common import comma_list, command, integer_at_least, model_names

_FETCH_LAYOUT = """\
A mirror (--mirror), a --to folder and a --from folder share one layout:
  <root>/torch/hub/checkpoints/<file>                torchvision and torchgeo files
  <root>/hf/<repo_id>/resolve/<revision>/<filename>  Hugging Face files (smp encoders)
  <root>/SHA256SUMS                                  optional checksums (sha256sum format)
so `python -m http.server` in a --to folder serves a mirror. Files go to
torch.hub.get_dir()/checkpoints ($TORCH_HOME) and the Hugging Face cache ($HF_HUB_CACHE, else
$HF_HOME/hub), where build_model reads them offline."""


def _fetch_weights_args(p: argparse.ArgumentParser) -> None:
    from ..benchmark.profiles import PROFILES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _FETCH_LAYOUT
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--profile", choices=list(PROFILES), help="the models of a run-suite profile")
    which.add_argument("--models", type=comma_list, help="comma-separated registry names")
    which.add_argument("--all", action="store_true", help="every registry model")
    p.add_argument("--pretrained", default="default",
                   help="the weights to fetch for each model: default (the entry's own), imagenet, "
                        "or a torchgeo weights name (default: default)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help="no network: print what is present or missing; exit 1 if anything is")
    mode.add_argument("--mirror", metavar="URL", help="download from a mirror in the layout below")
    mode.add_argument("--to", metavar="DIR", help="copy the cached files to DIR (the layout below)")
    mode.add_argument("--from", dest="from_dir", metavar="DIR",
                      help="place the files from DIR (written by --to) into the caches")
    p.add_argument("--retries", type=integer_at_least(0), default=2,
                   help="resume an interrupted download this many times (default 2)")


@command("fetch-weights", "download the pretrained weights of models into the caches "
         "build_model reads (or check, export, import them)", _fetch_weights_args)
def fetch_weights(args: argparse.Namespace) -> int:
    from ..models import fetch
    from ..models.registry import available_models

    if args.profile:
        from ..benchmark.profiles import get_profile

        names = list(get_profile(args.profile).models)
    else:
        names = available_models() if args.all else model_names(args.models) or []
    files = fetch.needed_files(names, args.pretrained)
    if not files:
        print(f"nothing to fetch: pretrained={args.pretrained!r} needs no files for "
              f"{', '.join(names)}")
        return 0
    if args.check:
        reports = fetch.check(files)
        print(fetch.format_table(reports))
        if not all(r.ok for r in reports):
            print("fetch them: the same command without --check (with --mirror URL or --from DIR "
                  "where there is no internet)")
    else:
        if args.to:
            reports = fetch.export_files(files, args.to, log=print)
        elif args.from_dir:
            reports = fetch.import_files(files, args.from_dir, log=print)
        else:
            reports = fetch.fetch(files, args.mirror, retries=args.retries, log=print)
        print(fetch.summary(reports))
    return 0 if all(r.ok for r in reports) else 1
