"""On-disk formats every command shares (one owner each; torch-free except checkpoints in train/).

- files.py    the one atomic writer, JSONL append/read with ONE torn-line policy
- rundir.py   a run directory: meta.json (provenance), metrics.jsonl (MetricsLog), default names
- rollouts.py the saved rollouts of a step: writer AND reader
- sweep.py    the sweep state file sweep.json
- wandb.py    the W&B logger (train and eval)
"""
