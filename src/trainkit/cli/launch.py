"""Several processes for one run (DDP): `trainkit train trainer.devices=N` hands over to torchrun's own
launcher, torch.distributed.run, in this process; `torchrun ... -m trainkit train ...` starts the same
processes on one or several machines.

Either way every process runs `trainkit train` with the same arguments and the same run folder
(hydra.run.dir); rank 0 alone writes into it. torchrun forwards SIGINT/SIGTERM to every process
(each then stops at the same step and rank 0 saves last.pt) and ends them all when one fails.
"""

from __future__ import annotations

import atexit
import os
import sys

from trainkit.errors import USER_ERROR_EXIT_CODE, UserError, allowed

INTERRUPTED_EXIT_CODE = 130

# Hydra on the processes other than rank 0: the same config and run folder, but no .hydra/ and no train.log.
QUIET_HYDRA = ("hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none")


def refuse_partial_torchrun_environment() -> None:
    """Some of the variables torchrun sets, but not all: a process started by hand, which would wait forever
    for the others. Said by every process (each may be the only one whose output is seen)."""
    from trainkit.engine.distributed import TORCHRUN_ENV

    present = [k for k in TORCHRUN_ENV if k in os.environ]
    if present and len(present) < len(TORCHRUN_ENV):
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        raise UserError(f"{', '.join(present)} set but not {', '.join(missing)}: this looks like one process of a "
                        "torchrun launch started without torchrun; start several processes with `trainkit train "
                        "trainer.devices=N` or `torchrun --nproc-per-node=N -m trainkit train ...`")


def refuse_torchrun_for(command: str) -> None:
    """Only `trainkit train` runs as the processes of a DDP run: any other command would run once per process,
    each writing the same files."""
    from trainkit.engine.distributed import launched_by_torchrun

    if command != "train" and launched_by_torchrun():
        raise UserError(f"trainkit {command} is not allowed under torchrun: it runs in one process; start it "
                        "without torchrun (only `trainkit train` runs as the processes of a DDP run)")


def check_devices(cfg, multirun: bool) -> int:
    """The processes a run asks for, checked against this machine before any is started; 1 under torchrun
    (its --nproc-per-node decided), where the global batch must split over torchrun's processes."""
    import torch

    from trainkit.config.check import LBFGS
    from trainkit.engine import distributed

    devices = int(cfg.trainer.devices)
    world = int(os.environ["WORLD_SIZE"]) if distributed.launched_by_torchrun() else devices
    cuda = torch.cuda.is_available() and not str(cfg.trainer.device).startswith(("cpu", "mps"))
    if cfg.trainer.sync_bn and world > 1 and not cuda:
        raise UserError("trainer.sync_bn=true is not allowed: SyncBatchNorm needs CUDA (torch has no CPU version); "
                        "use trainer.sync_bn=false on CPU")
    if distributed.launched_by_torchrun():
        if multirun:  # every process would run the whole sweep, each its own jobs (and its own trials)
            raise UserError("-m is not allowed under torchrun: a sweep's jobs are single processes; start the sweep "
                            "without torchrun, or one torchrun per configuration")
        devices = 1
    elif devices > 1:
        if multirun:
            raise allowed("trainer.devices", devices, "1 with -m: a sweep's jobs are single processes; run one "
                                                      "`trainkit train trainer.devices=N` per configuration")
        limit, what = (torch.cuda.device_count(), "visible CUDA devices") if cuda else \
            (len(os.sched_getaffinity(0)), "CPU cores (gloo)")
        if devices > limit:
            raise allowed("trainer.devices", devices, f"1 to {limit} (the {what} here)")
        if str(cfg.trainer.device).startswith("cuda:"):
            raise allowed("trainer.device", cfg.trainer.device, "auto or cuda with trainer.devices > 1: each process "
                                                                "takes its own GPU")
    if world > 1 and cfg.optimizer.get("_target_") == LBFGS:
        raise allowed("trainer.devices", world, "1 with optimizer=lbfgs: its line search needs the loss of the whole "
                                                "batch at every evaluation, which one process has")
    if world > 1 and cfg.trainer.batch_size % world:
        raise allowed("trainer.batch_size", cfg.trainer.batch_size,
                      f"a multiple of the {world} processes: it is the global batch, split evenly over them")
    return devices


def run_dir_override(run_dir) -> str:
    from trainkit.cli.preflight import hydra_quoted

    return f"hydra.run.dir={hydra_quoted(str(run_dir))}"


def names_run_dir(overrides: list[str]) -> bool:
    return any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in overrides)


def hand_over(command: str, devices: int, args: list[str], run_dir, in_place: bool) -> None:
    """torch.distributed.run in this process: it starts `devices` processes of `trainkit <command> <args>`
    on this machine, forwards SIGINT/SIGTERM to them, and ends them all if one fails. Exits with the
    processes' code: 0, 130 (interrupted: last.pt saved), 3 (diverged), 2 (a user error), ..."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from trainkit.engine.distributed import LAUNCHER_PID

    os.environ[LAUNCHER_PID] = str(os.getpid())
    # torchrun would set 1 thread per process and print a banner about it; the cores are split instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // devices)))
    launch = ["--standalone", "--nnodes=1", f"--nproc-per-node={devices}", "-m", "trainkit", command, *args]
    code = 0
    try:
        torchrun.main(launch)
    except SignalException as e:  # the processes were told and have stopped; rank 0 said what it saved
        code = INTERRUPTED_EXIT_CODE  # as one process: 130 for SIGINT and SIGTERM alike
    except ChildFailedError as e:
        codes = [f.exitcode for _, f in sorted(e.failures.items())]
        # Each process's own message is already on stderr; keep rank 0's code (2, 3, 130...) when it has one.
        code = next((c for c in codes if c > 0), 1)
    if code and not in_place:
        forget_empty_run(run_dir)
    raise SystemExit(code)


def forget_empty_run(run_dir) -> None:
    """A run whose processes failed before training leaves no folder behind: this launcher holds its lock,
    so rank 0 could not remove it."""
    from trainkit.run.folder import remove_if_empty_run
    from trainkit.run.run_lock import RunLock

    RunLock(run_dir).acquire().release()  # takes over this process's claim, then lets it go
    remove_if_empty_run(run_dir)


def worker_arguments(args: list[str], prepare) -> list[str]:
    """The arguments of one process that torchrun started. Under `trainkit train trainer.devices=N` they
    were prepared (checked, resume= resolved, the run folder named) by that launcher; under a user's own
    torchrun, rank 0 prepares them once and sends them to all, so every rank runs the same config in the
    same folder. Ranks > 0 write nothing: Hydra's files and the terminal are rank 0's."""
    from trainkit.console import console, error_console
    from trainkit.engine import distributed

    distributed.init()
    atexit.register(distributed.close)
    if not distributed.started_by_trainkit():
        def prepared():
            try:
                return prepare(args)
            except UserError as e:
                return e

        args = distributed.from_rank_zero(prepared)
        if isinstance(args, UserError):
            if distributed.is_rank_zero():
                print(f"error: {args}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT_CODE)
    if not distributed.is_rank_zero():
        args = [*args, *QUIET_HYDRA]
        console.quiet = error_console.quiet = True
    return args
