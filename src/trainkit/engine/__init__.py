"""The training loop and what hangs off it: checkpoints, devices, seeding, interrupts, callbacks."""
