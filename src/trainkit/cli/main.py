"""The `trainkit` command: subcommands that hand over to Hydra apps.

Before Hydra starts a run, the overrides are composed once here, so that a wrong option,
a misspelt key or an out-of-range value is one line on stderr and exit code 2, with no run
folder created.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainkit import __version__
from trainkit.errors import USER_ERROR_EXIT_CODE, UserError

USAGE = """usage: trainkit <command> [overrides] [hydra flags]    (trainkit --version)

commands:
  train     train a classifier from the composed config (a Hydra app: -m for sweeps,
            --cfg job to print the config, --help to list the groups and options)
  preview   write a PNG grid of augmented training images, without training
  check     the lectures' sanity sequence on the composed config: initial loss, overfit a
            tiny subset, regularization, LR range test, one timed epoch (a table of verdicts)
  lr-find   the LR range test (Smith 2017): suggests optimizer.lr, writes lr_find.png/.csv
  eval      measure a trained run on a split: per-class accuracy, confusion, calibration, TTA
  ensemble  average the softmax of several runs (or a sweep's best, or one run's snapshots)
  predict   top-k classes of image files with a run's model and preprocessing
  export    write a run's model as TorchScript or ONNX, loadable without trainkit
  runs      list past runs and sweeps, newest first: trainkit runs [outputs_dir]
  compare   the config differences and metrics of runs side by side: trainkit compare RUN RUN...
  report    a sweep's report.html (written at the end of every sweep): trainkit report SWEEP_DIR
  refine    the fine stage's search space from a finished search: trainkit refine SWEEP_DIR [--top K] [--shrink F]

examples:
  trainkit train
  trainkit train optimizer=adamw schedule=cosine 'regularization=[l2,dropout]'
  trainkit train -m optimizer=sgd,adam schedule=cosine,step
  trainkit preview dataset=cifar10 augmentation=flip_crop out=grid.png
  trainkit check model=mlp
  trainkit lr-find optimizer=sgd
  trainkit eval outputs/runs/<run> tta=ten_crop
  trainkit predict outputs/runs/<run> cat.png dog.png
  trainkit train -m hparams_search=lr_wd_coarse        # a search, with pruning and a report
"""

APPS = {"train": "trainkit.cli.train", "preview": "trainkit.cli.preview"}
# Commands that are not Hydra apps: they compose the config once, here, and write into a folder of their own.
TOOLS = {"check": "trainkit.cli.check", "lr-find": "trainkit.cli.lr_find"}
ROOT_CONFIGS = {"train": "train", "preview": "preview"}
# Subcommands on finished runs: each module's main(argv) reads its own arguments.
COMMANDS = {"eval": "trainkit.cli.eval", "ensemble": "trainkit.cli.ensemble", "predict": "trainkit.cli.predict",
            "export": "trainkit.cli.export",
            # ... and on what runs and sweeps wrote
            "runs": "trainkit.cli.runs", "compare": "trainkit.cli.compare", "report": "trainkit.cli.report",
            "refine": "trainkit.cli.refine"}
# Hydra flags that print help or completions: Hydra answers them, there is nothing to check.
HELP_FLAGS = ("--help", "-h", "--hydra-help", "--shell-completion", "-sc", "--version")
# Hydra flags that print the composed config instead of running: it is checked, but nothing is built.
INFO_FLAGS = ("--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p")
# Overrides whose value is a path: a leading ~ is the user's home (Hydra's grammar cannot read ~).
PATH_KEYS = ("dataset.root", "dataset.data_dir", "dataset.cache_dir", "hydra.run.dir", "hydra.sweep.dir")
PATH_GROUPS = ("paths.",)


def main(argv: list[str] | None = None) -> None:
    keep_standard_streams_open()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("--version", "-V"):
        print(f"trainkit {__version__}")
        return
    if argv[0] in ("-sc", "--shell-completion"):
        # Hydra's completion script calls `trainkit -sc query=bash` with the line in COMP_LINE.
        command = command_being_completed()
        if command is None:
            return
        argv = [command, *argv]
    command, rest = argv[0], argv[1:]
    if command in TOOLS:
        run_tool(command, rest)
        return
    if command in COMMANDS:
        return run_command(command, rest)
    if command not in APPS:
        fail(f"trainkit {command}: unknown command; the commands are {', '.join([*APPS, *TOOLS, *COMMANDS])} (trainkit --help)")
    try:
        rest = prepare(command, rest)
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
    summary = sys.modules.get("trainkit.run.sweep_summary")  # loaded by Hydra as a sweep's callback, or not at all
    if command == "train" and summary is not None and summary.FAILED_JOBS:
        failed = summary.FAILED_JOBS
        print(f"error: {len(failed)} sweep job(s) did not complete: {', '.join(failed)} (see summary.csv)", file=sys.stderr)
        raise SystemExit(1)


def run_tool(command: str, args: list[str]) -> None:
    """`trainkit check` / `trainkit lr-find`: the overrides composed and checked as for `train`, then the tool."""
    from trainkit.cli import preflight
    from trainkit.errors import user_error_in

    if any(a in ("-h", "--help") for a in args):
        doc = __import__(TOOLS[command], fromlist=["main"]).__doc__
        print(f"usage: trainkit {command} [overrides] [--config-dir DIR] [--config-name NAME]\n\n{doc.strip()}")
        return
    try:
        parsed, options, overrides = hydra_arguments(args)
        extra, takes_value = [], False
        for option in options:
            if not takes_value and option.split("=")[0] not in ("--config-dir", "-cd", "--config-name", "-cn"):
                extra.append(option)
            takes_value = not takes_value and option in ("--config-dir", "-cd", "--config-name", "-cn")
        if extra or parsed.multirun:
            raise UserError(f"trainkit {command} takes overrides, --config-dir and --config-name; "
                            f"{(extra or ['-m'])[0]} is not allowed (it runs once, on one config)")
        sources = preflight.ConfigSources(dirs=(config_dir(parsed.config_dir),) if parsed.config_dir else (),
                                          name=parsed.config_name or "train")
        cfg = preflight.compose_checked(overrides, sources).cfg
        __import__(TOOLS[command], fromlist=["main"]).main(cfg, overrides, sources)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:
        user_error = user_error_in(e)
        if user_error is None:
            raise
        fail(str(user_error))


def run_command(command: str, args: list[str]) -> None:
    """A subcommand of COMMANDS: a user error is one line and exit code 2."""
    try:
        __import__(COMMANDS[command], fromlist=["main"]).main(args)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def keep_standard_streams_open() -> None:
    """`trainkit train >&-`: Python sets a closed stdout to None, and the first file the run opens
    would take its descriptor and receive everything printed. /dev/null takes its place instead;
    the run's lines still reach train.log."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: fd itself
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


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
        print(" ".join(c for c in [*APPS, *TOOLS] if c.startswith(typed)))
        return None
    command = words[1]
    if command not in APPS:
        return None
    cut = len(words[0]) + len(" " + command)
    os.environ["COMP_LINE"] = words[0] + line[cut:]
    point = int(os.environ.get("COMP_POINT", len(line)))
    os.environ["COMP_POINT"] = str(max(len(words[0]), point - len(" " + command)))
    return command


def prepare(command: str, args: list[str]) -> list[str]:
    """The arguments for the command's Hydra app, once the config they compose is known to be
    right: Hydra's flags first, then the overrides (Hydra takes no other order), `~` expanded."""
    if any(a.split("=")[0] in HELP_FLAGS for a in args):
        return args
    if command == "train" and not any(a.split("=")[0] in INFO_FLAGS for a in args):
        return prepare_train(args)
    from trainkit.cli import preflight, preview

    parsed, options, overrides = hydra_arguments(args)
    sources = preflight.ConfigSources(dirs=(config_dir(parsed.config_dir),) if parsed.config_dir else (),
                                      name=parsed.config_name or ROOT_CONFIGS[command],
                                      root_keys=preview.OWN_ROOT_KEYS if command == "preview" else ())
    if any(a.split("=")[0] in INFO_FLAGS for a in options):  # the config is only printed
        preflight.check_all(overrides, parsed.multirun, sources, shallow=True)
    else:  # a preview: its data is built, its model never is
        preview.check_preview(preflight.compose_checked(overrides, sources, build=False).cfg)
    return [*options, *overrides]


def hydra_arguments(args: list[str]):
    """(Hydra's parse of `args`, its flags with their values as given, the overrides): any order
    the user wrote them in, each path value's leading `~` expanded."""
    from trainkit.cli.hydra_bridge import hydra_arguments_parser

    parser = hydra_arguments_parser()
    parsed, _ = parser.parse_known_intermixed_args(args)
    pending = list(parsed.overrides or [])
    options, overrides, value_of = [], [], None
    for arg in args:
        if value_of is None and pending and arg == pending[0]:
            overrides.append(expand_home(pending.pop(0)))
            continue
        flag, has_value, value = arg.partition("=")
        if value_of in ("--config-dir", "-cd"):
            arg = str(Path(arg).expanduser())
        elif flag in ("--config-dir", "-cd") and has_value:
            arg = f"{flag}={Path(value).expanduser()}"
        options.append(arg)
        action = parser._option_string_actions.get(arg) if value_of is None else None  # argparse has no public lookup
        value_of = arg if action is not None and action.nargs != 0 and action.nargs != "?" else None
    return parsed, options, overrides


def expand_home(override: str) -> str:
    """`dataset.root=~/pets` as `dataset.root=/home/me/pets` (quoted where Hydra needs it)."""
    from trainkit.cli.preflight import hydra_value

    key, sep, value = override.partition("=")
    bare = key.lstrip("+")
    if not sep or not value.startswith("~") or not (bare in PATH_KEYS or bare.startswith(PATH_GROUPS)):
        return override
    expanded = os.path.expanduser(value)
    return override if expanded == value else f"{key}={hydra_value(expanded)}"


def prepare_train(args: list[str]) -> list[str]:
    """Check every override composes, resolve `resume=`, and return the arguments for Hydra."""
    from trainkit.cli import preflight
    from trainkit.run.resume import resume_value

    parsed, options, overrides = hydra_arguments(args)
    sources = preflight.ConfigSources(
        dirs=(config_dir(parsed.config_dir),) if parsed.config_dir else (), name=parsed.config_name or "train")
    # Taken raw, not through Hydra's grammar: a path with spaces, unicode or quotes needs no Hydra quoting.
    resume = next((resume_value(o.split("=", 1)[1]) for o in overrides if o.startswith("resume=")), None)
    overrides = [o for o in overrides if not o.startswith("resume=")]
    if resume and parsed.multirun:
        raise UserError(f"resume={resume} is not allowed with -m: resume one run at a time")
    if resume == "auto":
        resume = resume_auto(overrides, sources)  # None: nothing to resume, so a new run, checked as one
    if resume and resume != "null":
        return prepare_resume(resume, overrides, options, sources)
    composed = preflight.check_all(overrides, parsed.multirun, sources)
    claim_named_folder(overrides, parsed.multirun, composed)
    return [*options, *overrides]


def claim_named_folder(overrides: list[str], multirun: bool, composed) -> None:
    """Lock the run (or sweep) folder the user named before Hydra writes its .hydra/ files and
    train.log there: of two runs started at once into one folder, the second is refused having
    written nothing. A folder named by the time (the default) cannot be shared, so needs no claim."""
    from trainkit.run.folder import refuse_used_run_dir, refuse_used_sweep_dir
    from trainkit.run.run_lock import claim

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(o.split("=", 1)[0].lstrip("+") == key for o in overrides):
        folder = composed.sweep_dir if multirun else composed.run_dir
        claim(folder, lambda: refuse_used_sweep_dir(folder, composed.sweeper) if multirun else refuse_used_run_dir(folder))


def config_dir(path: str) -> str:
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--config-dir={path} is not allowed: no such folder (it should hold your own config groups, "
                        "e.g. my_configs/optimizer/fast_sgd.yaml)")
    return str(folder)


def resume_auto(overrides: list[str], sources) -> str | None:
    """The newest unfinished run of this config that no process is training, or None (a new run)."""
    from trainkit.cli import preflight
    from trainkit.config.check import config_hash
    from trainkit.run.resume import find_resumable

    cfg = preflight.compose_checked(overrides, sources).cfg
    run_dir = find_resumable(Path(cfg.paths.output_root), config_hash(cfg))
    if run_dir is None:
        print(f"resume=auto: no unfinished run of this config under {cfg.paths.output_root}/runs; starting a new run")
        return None
    return str(run_dir)


def prepare_resume(resume: str, overrides: list[str], options: list[str], sources) -> list[str]:
    """Hydra's arguments that continue `resume` (a run folder or a .pt file), once it is known to fit.

    In place only from a run folder or its last.pt; another checkpoint of a run (best.pt) continues
    into a new folder with that run's settings, a branch, so a run never moves backwards."""
    from trainkit.cli import preflight
    from trainkit.engine.checkpoints import load_checkpoint
    from trainkit.run.resume import (check_resumable, continues_in_place, original_config_dirs, original_config_name,
                                     original_overrides, refuse_unresumable, resolve_resume_target)
    from trainkit.run.run_lock import claim
    from trainkit.cli.trust import FolderSettings, check_folder_settings

    run_dir, checkpoint = resolve_resume_target(resume)
    payload = load_checkpoint(checkpoint)  # a corrupt or unsafe file is refused before anything is written
    in_place = continues_in_place(run_dir, checkpoint)
    user_overrides, user_sources = overrides, sources
    # Quoted: Hydra's grammar rejects spaces, unicode..., and OmegaConf would read a ${ in a path.
    overrides = [*overrides, f"resume={preflight.hydra_quoted(str(checkpoint))}"]
    if run_dir is not None:  # the run's own settings again, checked as data: the folder may come from anyone
        if in_place:
            refuse_unresumable(run_dir)
        folder = FolderSettings(run_dir, tuple(original_overrides(run_dir)))
        if not sources.dirs:
            recorded = tuple(original_config_dirs(run_dir)[:1])
            sources, folder = preflight.ConfigSources(recorded, sources.name), FolderSettings(run_dir, folder.overrides, recorded)
            options = [*options, *(f"--config-dir={d}" for d in recorded)]
        started_with = original_config_name(run_dir)
        if sources.name == "train" and started_with not in (None, "train"):
            sources = preflight.ConfigSources(sources.dirs, started_with)
            options = [*options, f"--config-name={started_with}"]
        here = [f"hydra.run.dir={preflight.hydra_quoted(str(run_dir))}"] if in_place else []
        overrides = [*folder.overrides, *overrides, *here]
        check_folder_settings(folder, user_overrides, overrides, sources, user_sources)
    composed = preflight.compose_checked(overrides, sources)
    if not in_place:  # a new run folder, as for a new run
        preflight.check_output_folder(composed, overrides)
    check_resumable(composed.cfg, payload, checkpoint, in_place)
    written = checkpoint.stat().st_mtime_ns

    def still_resumable() -> None:
        """Under the lock: the checkpoint checked above is still the one the run will load."""
        if checkpoint.stat().st_mtime_ns != written:
            check_resumable(composed.cfg, load_checkpoint(checkpoint), checkpoint, in_place)

    if in_place:
        claim(run_dir, still_resumable)
    else:
        claim_named_folder(user_overrides, False, composed)
    return [*options, *overrides]
