"""`trainkit train`: the Hydra app. Its file is named train.py on purpose: Hydra names the job (and
so the run's train.log) after the file that holds @hydra.main."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trainkit.atomic import StorageError
from trainkit.errors import USER_ERROR_EXIT_CODE, user_error_in
from trainkit.run.folder import remove_if_empty_run
from trainkit.run.job_names import register as register_job_folder_resolver
from trainkit.run.training import (INTERRUPTED_EXIT_CODE, RunEnded, continues_run_in, crashed, mark_failed, run,
                                   stop_sweep, storage_failed)

register_job_folder_resolver()  # hydra.sweep.subdir's ${job_folder:...}; joblib workers import this module too


@hydra.main(version_base=None, config_path="pkg://trainkit.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    started = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return run(cfg, run_dir, started)
    except RunEnded as e:
        if in_sweep and e.code != INTERRUPTED_EXIT_CODE:
            return float("nan")
        if in_sweep:  # Ctrl-C or SIGTERM stops the whole sweep, not only this job
            stop_sweep(run_dir)
        raise SystemExit(e.code) from None
    except KeyboardInterrupt:  # before the loop's own handler was installed, or after it
        from trainkit.console import report

        if not continues_run_in(cfg, run_dir):
            remove_if_empty_run(run_dir)
        report("interrupted before training started", error=True)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except StorageError as e:  # a full disk: what was written before is intact, the run can go on later
        return storage_failed(run_dir, e, in_sweep)
    except Exception as e:
        user_error = user_error_in(e)  # also one raised inside a constructor that Hydra wrapped
        if user_error is None:
            return crashed(run_dir, e, in_sweep)
        if not continues_run_in(cfg, run_dir):
            remove_if_empty_run(run_dir)
        if in_sweep:
            mark_failed(run_dir, f"error: {user_error}")
            return float("nan")
        print(f"error: {user_error}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None


if __name__ == "__main__":
    main()
