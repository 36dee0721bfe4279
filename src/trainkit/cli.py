"""The `trainkit` command: subcommands that hand over to Hydra apps.

Before Hydra starts a run, the overrides are composed once here, so that a wrong option,
a misspelt key or an out-of-range value is one line on stderr and exit code 2, with no run
folder created.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainkit.errors import USER_ERROR_EXIT_CODE, UserError

USAGE = """usage: trainkit <command> [overrides] [hydra flags]

commands:
  train     train a classifier from the composed config (a Hydra app: -m for sweeps,
            --cfg job to print the config, --help to list the groups and options)
  preview   write a PNG grid of augmented training images, without training

examples:
  trainkit train
  trainkit train optimizer=adamw schedule=cosine 'regularization=[l2,dropout]'
  trainkit train -m optimizer=sgd,adam schedule=cosine,step
  trainkit preview dataset=cifar10 augmentation=flip_crop out=grid.png
"""

APPS = {"train": "trainkit.train", "preview": "trainkit.preview"}
# Hydra flags after which no run starts, so there is nothing to check beforehand.
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
              "--resolve", "--package", "-p")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("-sc", "--shell-completion"):
        # Hydra's completion script calls `trainkit -sc query=bash` with the line in COMP_LINE.
        command = command_being_completed()
        if command is None:
            return
        argv = [command, *argv]
    command, rest = argv[0], argv[1:]
    if command not in APPS:
        fail(f"trainkit {command}: unknown command; the commands are {', '.join(APPS)} (trainkit --help)")
    try:
        if command == "train" and not any(a.split("=")[0] in INFO_FLAGS for a in rest):
            rest = prepare_train(rest)
    except UserError as e:
        fail(str(e))
    completing = any(a.split("=")[0] in ("-sc", "--shell-completion") for a in rest)
    # Hydra's completion script registers itself for sys.argv[0]: that must be the command itself.
    sys.argv = ["trainkit" if completing else f"trainkit {command}", *rest]
    module = __import__(APPS[command], fromlist=["main"])
    try:
        module.main()
    except KeyboardInterrupt:  # between a sweep's jobs, or while Hydra starts: no traceback
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    if command == "train":
        from trainkit.sweep_summary import FAILED_JOBS

        if FAILED_JOBS:
            print(f"error: {len(FAILED_JOBS)} sweep job(s) did not complete: {', '.join(FAILED_JOBS)} (see summary.csv)", file=sys.stderr)
            raise SystemExit(1)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR_EXIT_CODE)


def command_being_completed() -> str | None:
    """The subcommand whose arguments the shell is completing, with it cut out of COMP_LINE so
    that its Hydra app sees the line it expects; None (after printing the matching subcommands,
    or nothing) while the subcommand itself is being typed."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split(" ")
    if len(words) <= 2:  # `trainkit <TAB>` or `trainkit tr<TAB>`
        typed = words[1] if len(words) == 2 else ""
        print(" ".join(c for c in APPS if c.startswith(typed)))
        return None
    command = words[1]
    if command not in APPS:
        return None
    cut = len(words[0]) + len(" " + command)
    os.environ["COMP_LINE"] = words[0] + line[cut:]
    point = int(os.environ.get("COMP_POINT", len(line)))
    os.environ["COMP_POINT"] = str(max(len(words[0]), point - len(" " + command)))
    return command


def prepare_train(args: list[str]) -> list[str]:
    """Check every override composes, resolve `resume=`, and return the arguments for Hydra."""
    from hydra._internal.utils import get_args_parser

    from trainkit import preflight

    parsed, _ = get_args_parser().parse_known_intermixed_args(args)
    overrides = list(parsed.overrides or [])
    options = [a for a in args if a not in overrides]  # Hydra's own flags, passed on as given
    sources = preflight.ConfigSources(
        dirs=(config_dir(parsed.config_dir),) if parsed.config_dir else (), name=parsed.config_name or "train")
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    overrides = [o for o in overrides if not o.startswith("resume=")]
    if resume and parsed.multirun:
        raise UserError(f"resume={resume} is not allowed with -m: resume one run at a time")
    if resume == "auto":
        resume = resume_auto(overrides, sources)
        if resume is None:
            return [*options, *overrides]
    if resume and resume != "null":
        return prepare_resume(resume, overrides, options, sources)
    preflight.check_all(overrides, parsed.multirun, sources)
    return args


def config_dir(path: str) -> str:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--config-dir={path} is not allowed: no such folder (it should hold your own config groups, "
                        "e.g. my_configs/optimizer/fast_sgd.yaml)")
    return str(folder)


def resume_auto(overrides: list[str], sources) -> str | None:
    """The newest unfinished run of this config that no process is training, or None (a new run)."""
    from trainkit import preflight
    from trainkit.config_check import config_hash
    from trainkit.resume import find_resumable

    cfg = preflight.compose_checked(overrides, sources).cfg
    run_dir = find_resumable(Path(cfg.paths.output_root), config_hash(cfg))
    if run_dir is None:
        print(f"resume=auto: no unfinished run of this config under {cfg.paths.output_root}/runs; starting a new run")
        return None
    return str(run_dir)


def prepare_resume(resume: str, overrides: list[str], options: list[str], sources) -> list[str]:
    """Hydra's arguments that continue `resume` (a run folder or a .pt file), once it is known to fit."""
    from trainkit import preflight
    from trainkit.checkpoints import load_checkpoint
    from trainkit.resume import original_config_dirs, original_config_name, original_overrides, refuse_unresumable, resolve_resume_target

    run_dir, checkpoint = resolve_resume_target(resume)
    payload = load_checkpoint(checkpoint)  # a corrupt or unsafe file is refused before anything is written
    if run_dir is None:  # a checkpoint file from elsewhere: its weights and state start a new run folder
        overrides = [*overrides, f"resume={checkpoint}"]
    else:
        refuse_unresumable(run_dir)
        if not sources.dirs:
            sources = preflight.ConfigSources(tuple(original_config_dirs(run_dir)), sources.name)
            options = [*options, *(f"--config-dir={d}" for d in sources.dirs[:1])]
        started_with = original_config_name(run_dir)
        if sources.name == "train" and started_with not in (None, "train"):
            sources = preflight.ConfigSources(sources.dirs, started_with)
            options = [*options, f"--config-name={started_with}"]
        overrides = [*original_overrides(run_dir), *overrides, f"resume={checkpoint}", f"hydra.run.dir={run_dir}"]
    composed = preflight.compose_checked(overrides, sources)
    if run_dir is None:
        preflight.refuse_used_run_dir(composed.run_dir)
    preflight.check_resumable(composed.cfg, payload, checkpoint)
    return [*options, *overrides]
