# Two commands do all the set-up on a fresh machine:
#   make run    – create .venv if missing, install requirements, start the app on :8501
#   make test   – the same set-up (plus Debian's Chromium for the browser test, Debian's
#                 Fashion-MNIST for the lenet-fashion tests and Debian's HAProxy for the proxy test), then the tests
# A class on one machine: make serve-class REPLICAS=2 PROXY_PORT=8080 (Ctrl-C or make stop-class stops it).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell sha256sum requirements.txt | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQ_HASH)
PORT ?= 8501
REPLICAS ?= 2
PROXY_PORT ?= 8080

.PHONY: run test venv chromium fashion-data haproxy serve-class stop-class gpu-check bench evaluate-paper evaluate-fashion evaluate-cifar10 evaluate-imagenet \
  evaluate-elastic fragility-distributions train-fashion-at robustness-fashion evaluate-fashion-at

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

# The ResNet-8 conversion's packages, for its test (the app does not need them); --no-deps, see the file.
CONVERT_STAMP := $(VENV)/.installed-convert
$(CONVERT_STAMP): requirements-convert.txt $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-convert.txt
	@touch $@

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian chromium + chromium-driver for the browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# Debian's HAProxy, for replicas behind one address (make serve-class, tests/test_proxy.py).
haproxy:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
	  echo "installing Debian haproxy for the replicas behind a proxy"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q haproxy; }

# Fashion-MNIST's idx files (MIT), for the lenet-fashion tests and `python -m nip_core train
# lenet-fashion`; the app needs none of it (weights, gallery and calibration bank ship in assets/).
FASHION_FILES := $(addprefix /usr/share/datasets/fashion-mnist/,train-images-idx3-ubyte.gz \
  train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)
fashion-data:
	@ls $(FASHION_FILES) >/dev/null 2>&1 || { \
	  echo "installing Debian dataset-fashion-mnist for the lenet-fashion tests"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q dataset-fashion-mnist; }

run: $(STAMP)
	$(PY) -m app.serve --server.port=$(PORT) --server.headless=true --server.fileWatcherType=none

test: $(STAMP) $(CONVERT_STAMP) chromium fashion-data haproxy
	$(PY) -m pytest -q tests

# REPLICAS app processes on ports 8501, 8502, … (loopback) behind HAProxy on PROXY_PORT (all interfaces),
# with cookie affinity (docs/cluster.md, "Serving a class"); Ctrl-C, or make stop-class from another shell, stops them.
serve-class: $(STAMP) haproxy
	$(PY) scripts/serve_replicas.py --replicas $(REPLICAS) --first-port $(PORT) --bind '*:$(PROXY_PORT)'

stop-class: $(STAMP)
	$(PY) scripts/serve_replicas.py stop

# Explain, surgery and a small evaluation on every built-in model, on the GPU and on the CPU: agreement and
# timings (docs/performance.md). Without CUDA it says so in one line and succeeds.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(if $(OUT),--out $(OUT))

bench: $(STAMP)
	$(PY) -m nip_core bench --out docs/bench.json

# The shipped report tables (docs/results/): each run is disclosed in docs/nip-research.md.
# The black-box column (Square, 1,000 queries through every deployable defense, each query through the
# defense) is left out of the report targets on a CPU: TVM alone costs about 50 min per 64 Fashion-MNIST images
# under Square, and on EfficientNet nip-global runs 10 NIP steps per query. Drop --no-blackbox on a GPU.
evaluate-paper: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-mnist --split report --no-blackbox --out docs/results/paper-mnist-report.json

evaluate-fashion: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-fashion --split report --no-blackbox --out docs/results/paper-fashion-report.json

# The adversarially trained lenet-fashion-at (PGD training, L∞ ε 0.1; about 16 min on 2 CPU threads): weights and
# card, then what ships beside them (nip's calibration, the influence profiles). Overwrites the shipped files.
train-fashion-at: $(STAMP) fashion-data
	$(PY) -m nip_core train lenet-fashion-at --seed 0 --epochs 20 --ship
	$(PY) -m nip_core calibrate --model lenet-fashion-at --ship
	$(PY) -m nip_core profile --model lenet-fashion-at --layer all --ship

# The cards' robust figures (clean; PGD-20 on the 10,000 test images; AutoAttack on the first 1,000), for the
# adversarially trained model and the standard one it is compared with.
robustness-fashion: $(STAMP) fashion-data
	for m in lenet-fashion-at lenet-fashion; do \
	  $(PY) -m nip_core robustness --model $$m --pgd-n 10000 --autoattack-n 1000 --seed 0 --write-card || exit 1; done

# paper-fashion on lenet-fashion-at over lenet-fashion's report images (the Benchmark page's adversarial training).
evaluate-fashion-at: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-fashion --model lenet-fashion-at --images-of lenet-fashion --split report \
	  --no-blackbox --out docs/results/paper-fashion-report-at.json

evaluate-cifar10: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-cifar10 --split report --no-blackbox --out docs/results/paper-cifar10.json

evaluate-imagenet: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-imagenet --split report --no-blackbox --out docs/results/paper-imagenet.json

# Elasticity (docs/elasticity.md): FGSM and PGD at every ε of the grid, against each suite's deployable
# defenses plus the two oracles, on the report splits. The adaptive columns are left out: they keep the
# main ε, so they would repeat the report targets above.
ELASTIC_GRID := 0.02,0.05,0.1,0.2,0.3
ELASTIC_MNIST := none,jpeg,bitdepth,bitdepth[bits=1],median,gaussian,random-sign,nip-global,counter-attack,nip,nip-oracle,counter-attack-oracle
ELASTIC_FASHION := none,jpeg,bitdepth[bits=1],bitdepth[bits=5],median,gaussian,tvm,random-sign,nip-global,counter-attack,nip,nip-oracle,counter-attack-oracle
evaluate-elastic: $(STAMP)
	$(PY) -m nip_core evaluate --suite paper-mnist --split report --attacks fgsm,pgd --defenses '$(ELASTIC_MNIST)' \
	  --eps-grid $(ELASTIC_GRID) --no-adaptive --no-blackbox --out docs/results/paper-mnist-report-elastic.json
	$(PY) -m nip_core evaluate --suite paper-fashion --split report --attacks fgsm,pgd --defenses '$(ELASTIC_FASHION)' \
	  --eps-grid $(ELASTIC_GRID) --no-adaptive --no-blackbox --out docs/results/paper-fashion-report-elastic.json

# The flip-ε distributions that `fragility` places an image in (none and jpeg, PGD at the dataset's defaults).
FRAGILITY_MODELS := lenet-mnist lenet-fashion resnet8-cifar10 efficientnet-lite0
fragility-distributions: $(STAMP)
	for m in $(FRAGILITY_MODELS); do \
	  $(PY) -m nip_core fragility --distribution --model $$m --seed 0 --out docs/results/fragility-$$m.json || exit 1; done
