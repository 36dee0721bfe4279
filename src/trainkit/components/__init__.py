"""What a run trains with: models, norm, init, optimizers, schedules, regularization. Never imports data."""
