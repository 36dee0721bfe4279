"""Callbacks: each hooks into the loop at named points (base.Callback); one file per callback."""
