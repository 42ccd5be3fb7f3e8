# hapo: every target is a thin wrapper over the CLI. Variables pass through:
#   make hapo OVERRIDES="trainer.total_steps=100"   make eval-all MODEL=runs/x/checkpoints/step_000060
#   make ablate-paper SEEDS=3   make report SWEEP=runs/sweeps/paper   (with EXP=x the sweep is runs/sweeps/paper-x)
#   make analyze SWEEP=runs/hapo-x STEPS=100:
#   make paper-table MODEL=qwen2.5-math-7b EXP=hapo_qwen2.5_math_7b SEEDS=3   (sweep, eval and the paper's table)
PYTHON ?= python
HAPO ?= hapo
PIP ?= $(PYTHON) -m pip
TORCH ?= torch==2.13.0
MODEL ?=
SPEC ?= ablations/paper_main.yaml
EVAL_OVERRIDES ?=
EXP ?=
SEEDS ?=
OVERRIDES ?=
SWEEP ?= runs/sweeps
STEPS ?=
BENCHES ?= aime24,aime25,amc23,math500,olympiadbench,minerva
EXP_ARG = $(if $(EXP),experiment=$(EXP),)
PAPER_DIR ?= runs/sweeps/$(basename $(notdir $(SPEC)))$(if $(EXP),-$(EXP),)$(if $(MODEL),-$(MODEL),)

.PHONY: install install-dev test lint demo baseline hapo ablate-paper ablate-loo sweep-seeds eval-all paper-table report analyze vllm-side-env bench

install:            ## install hapo (pinned torch first: a CPU build here, CUDA on a GPU machine's index)
	$(PIP) install "$(TORCH)" -e .

install-dev:
	$(PIP) install "$(TORCH)" -e ".[dev]"

test: install-dev   ## install and run the test suite (what CI runs)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check hapo_cli tests benchmarks

demo:               ## the built-in default: HAPO on the tiny model, CPU, minutes
	$(HAPO) train $(OVERRIDES)

baseline:           ## DAPO baseline
	$(HAPO) train algorithm=dapo $(EXP_ARG) $(OVERRIDES)

hapo:               ## HAPO, all four components
	$(HAPO) train algorithm=hapo $(EXP_ARG) $(OVERRIDES)

ablate-paper:       ## the paper's ablation rows (ablations/paper.yaml: DAPO, +A, +B, +C, +D, A+B, A+B+C, HAPO), SEEDS seeds (default 1)
	$(HAPO) ablate --spec ablations/paper.yaml --seeds $(or $(SEEDS),1) $(EXP_ARG) $(OVERRIDES)

ablate-loo:         ## leave-one-out (ablations/leave_one_out.yaml): DAPO, HAPO and HAPO minus each component
	$(HAPO) ablate --spec ablations/leave_one_out.yaml --seeds $(or $(SEEDS),1) $(EXP_ARG) $(OVERRIDES)

sweep-seeds:        ## DAPO vs HAPO (A+B+C+D on DAPO) over SEEDS seeds (default 3)
	$(HAPO) ablate --components A,B,C,D --mode single --include-baseline --seeds $(or $(SEEDS),3) $(EXP_ARG) $(OVERRIDES)

eval-all:           ## every benchmark (BENCHES) on MODEL (required): a checkpoint folder, Hub id or tiny
	$(if $(MODEL),,$(error make eval-all needs MODEL=: a checkpoint folder, a Hub id, or tiny (the built-in model)))
	$(HAPO) eval --bench $(BENCHES) --model $(MODEL) $(OVERRIDES)

paper-table:        ## the paper's main table: sweep SPEC (ablations/paper_main.yaml) with MODEL (a model group) / EXP, eval each run on BENCHES, report
	$(HAPO) ablate --spec $(SPEC) --seeds $(or $(SEEDS),1) --sweep-dir $(PAPER_DIR) $(if $(MODEL),model=$(MODEL),) $(EXP_ARG) $(OVERRIDES)
	$(HAPO) eval --runs $(PAPER_DIR) --bench $(BENCHES) $(EVAL_OVERRIDES)
	$(HAPO) report $(PAPER_DIR)

report:             ## plots and tables of SWEEP (a sweep, a run, or a folder of them) into SWEEP/report/
	$(HAPO) report $(SWEEP)

analyze:            ## token-level diagnostics of SWEEP's saved rollouts (entropy, forking tokens, length bias) into SWEEP/analysis.json
	$(HAPO) analyze $(SWEEP) $(if $(STEPS),--steps $(STEPS),)

vllm-side-env:      ## vLLM's interface modules (no deps) in .vllm-env, for the contract test
	bash tests/install_vllm_side_env.sh

bench:              ## the benchmark scripts (tables)
	$(PYTHON) benchmarks/algo_overhead.py
	$(PYTHON) benchmarks/grading_throughput.py
