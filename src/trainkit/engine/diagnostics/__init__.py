"""The babysitting figures and verdicts (sanity checks, the LR range test, the end-of-run diagnosis),
as functions the callbacks and the `check` and `lr-find` commands share."""
