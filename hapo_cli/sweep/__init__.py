"""Ablation sweeps: the plan (plan.py), the state file sweep.json (state.py), running the runs (runner.py), `hapo ablate` (command.py)."""
