"""Results of runs and sweeps: reading them (collect.py), the table (table.py), the figures (plots.py), `hapo report` (command.py)."""
