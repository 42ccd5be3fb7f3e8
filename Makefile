# hapo: every target is a thin wrapper over the CLI. Variables pass through:
#   make hapo OVERRIDES="trainer.total_steps=100"   make eval-all MODEL=runs/x/checkpoints/step_000060
#   make ablate-paper SEEDS=3   make report SWEEP=runs/sweeps/paper   (with EXP=x the sweep is runs/sweeps/paper-x)
#   make analyze SWEEP=runs/hapo-x STEPS=100:
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
TORCH ?= torch==2.13.0
MODEL ?= tiny
EXP ?=
SEEDS ?=
OVERRIDES ?=
SWEEP ?= runs/sweeps
STEPS ?=
BENCHES ?= aime24,aime25,amc23,math500,olympiadbench,minerva
EXP_ARG = $(if $(EXP),experiment=$(EXP),)

.PHONY: install install-dev test lint demo baseline hapo ablate-paper ablate-loo sweep-seeds eval-all report analyze vllm-side-env bench

install:            ## install hapo (pinned torch first: a CPU build here, CUDA on a GPU machine's index)
	$(PIP) install "$(TORCH)" -e .

install-dev:
	$(PIP) install "$(TORCH)" -e ".[dev]"

test: install-dev   ## install and run the test suite (what CI runs)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check hapo_cli tests benchmarks

demo:               ## the built-in default: HAPO on the tiny model, CPU, minutes
	hapo train $(OVERRIDES)

baseline:           ## DAPO baseline
	hapo train algorithm=dapo $(EXP_ARG) $(OVERRIDES)

hapo:               ## HAPO, all four components
	hapo train algorithm=hapo $(EXP_ARG) $(OVERRIDES)

ablate-paper:       ## the paper's ablation rows (ablations/paper.yaml: DAPO, +A, +B, +C, +D, A+B, A+B+C, HAPO), SEEDS seeds (default 1)
	hapo ablate --spec ablations/paper.yaml --seeds $(or $(SEEDS),1) $(EXP_ARG) $(OVERRIDES)

ablate-loo:         ## leave-one-out (ablations/leave_one_out.yaml): DAPO, HAPO and HAPO minus each component
	hapo ablate --spec ablations/leave_one_out.yaml --seeds $(or $(SEEDS),1) $(EXP_ARG) $(OVERRIDES)

sweep-seeds:        ## DAPO vs HAPO (A+B+C+D on DAPO) over SEEDS seeds (default 3)
	hapo ablate --components A,B,C,D --mode single --include-baseline --seeds $(or $(SEEDS),3) $(EXP_ARG) $(OVERRIDES)

eval-all:           ## every benchmark (BENCHES) on MODEL: a checkpoint folder, Hub id or tiny
	hapo eval --bench $(BENCHES) --model $(MODEL) $(OVERRIDES)

report:             ## plots and tables of SWEEP (a sweep, a run, or a folder of them) into SWEEP/report/
	hapo report $(SWEEP)

analyze:            ## token-level diagnostics of SWEEP's saved rollouts (entropy, forking tokens, length bias) into SWEEP/analysis.json
	hapo analyze $(SWEEP) $(if $(STEPS),--steps $(STEPS),)

vllm-side-env:      ## vLLM's interface modules (no deps) in .vllm-env, for the contract test
	bash tests/install_vllm_side_env.sh

bench:              ## the benchmark scripts (tables)
	$(PYTHON) benchmarks/algo_overhead.py
	$(PYTHON) benchmarks/grading_throughput.py
