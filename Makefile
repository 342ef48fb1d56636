# One venv in .venv; every target installs what it needs first.
PY       := .venv/bin/python
STAMP    := .venv/.installed
DATA     ?= data/phantom
N        ?= 1000
OUT      ?= runs/demo
PROFILE  ?= quick
BUNDLE   := python -m monai.bundle run
# The bundle's code (bundle/scripts) is imported the Model Zoo way, from the bundle folder; tools/ from here.
export PYTHONPATH := $(CURDIR)/bundle$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: setup system-packages data demo seeds train validate-data test test-all bench lint package zoo-check paper-smoke serve dicom-node clean

setup: $(STAMP) system-packages

# Debian packages the tests use, each failing (never skipping) without its tool: dicom3tools (dciodvfy) and dcmtk
# (dsrdump, storescu) for the DICOM validators; chromium and chromium-driver for the browser tests of the viewer page;
# orthanc and orthanc-dicomweb for the PACS tests. apt runs only when one is missing (as root, else through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_PACKAGES := dicom3tools dcmtk chromium chromium-driver orthanc orthanc-dicomweb
APT_CHECK := command -v dciodvfy && command -v dsrdump && command -v chromium && command -v chromedriver && \
  command -v Orthanc && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so
system-packages:
	@{ $(APT_CHECK); } >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; }

$(STAMP): pyproject.toml
	python3.11 -m venv .venv
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	echo 'export PYTHONPATH="$(CURDIR)/bundle$${PYTHONPATH:+:$$PYTHONPATH}"  # the bundle'"'"'s scripts' >> .venv/bin/activate
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m tools.phantom --out $(DATA) --n $(N) --seed 0

# Everything: phantom data, all five stages (quick CPU profile), evaluation, inference, report.
demo: $(STAMP)
	$(PY) -m tools.demo --data $(DATA) --n $(N) --out $(OUT) --profile $(PROFILE)

# Figures over seeds (tools/seeds.py): the detector trained once, then C, G-D, G-D-C steps 1 and 2 retrained with each
# of SEEDS on the same split, mean [min, max] of every figure in OUT/seeds.json and seeds.md (default OUT runs/seeds).
# Ablations: SEEDS_ARGS="--variant no_d gan#gdc_d_weight=0"; rerunning skips what is current.
SEEDS ?= 0 1 2
seeds: OUT = runs/seeds
seeds: $(STAMP)
	$(PY) -m tools.seeds --data $(DATA) --out $(OUT) --profile $(PROFILE) --seeds $(SEEDS) $(SEEDS_ARGS)

train: $(STAMP)
	.venv/bin/$(BUNDLE) training --config_file bundle/configs/train.yaml --profile $(PROFILE) --dataset_dir $(DATA) --output_dir $(OUT)

# Every problem of DATA (dataset.csv, images, masks, landmarks, OUT/split.csv or the split training would make)
# in one report with file, line and column; exit status 1 on errors (training runs the same checks first).
validate-data: $(STAMP)
	.venv/bin/$(BUNDLE) validate --config_file bundle/configs/validate_data.yaml --dataset_dir $(DATA) --output_dir $(OUT)

test: $(STAMP) system-packages
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP) system-packages
	$(PY) -m pytest -q

# Speed against this machine's limit (networks, ONNX Runtime vs torch, the inference path, training per epoch):
# bench/results.json and bench/results.md (under 10 minutes on 2 CPU cores; tools/bench).
bench: $(STAMP)
	$(PY) -m tools.bench --out bench

# The local service and viewer page (clinic/service.py) with the weights in bundle/models, on http://HOST:PORT/;
# more settings (work folder, upload limit, retention...): .venv/bin/python -m clinic.service --help
# (:= not ?=: a HOST in the environment, which some shells set, must not open the service to the network)
HOST := 127.0.0.1
PORT := 8000
serve: $(STAMP)
	$(PY) -m clinic.service --host $(HOST) --port $(PORT)

# A versioned Model Zoo zip of the bundle (weights included when trained) in dist/.
package: $(STAMP)
	$(PY) -m tools.zoo package --out dist

# The Model Zoo CI's checks on what `package` ships, with the trained weights (run `make demo` first).
zoo-check: $(STAMP)
	$(PY) -m tools.zoo check bundle

# The whole chain with the thesis's networks, sizes and batch sizes, one epoch a stage, on a small phantom.
paper-smoke: $(STAMP)
	$(PY) -m tools.paper_smoke --out runs/paper_smoke

# The DICOM node (clinic/dicom_node.py): a Storage SCP, AE title AET on HOST:PORT, that runs each CR/DX head X-ray it
# receives through the bundle (weights in bundle/models) and sends the SC + SR by C-STORE to FORWARD=AET@host:port,
# with its persistent queue in runs/dicom_node. README: "Connecting a PACS".
dicom-node: AET = NASALFX
dicom-node: HOST = 127.0.0.1
dicom-node: PORT = 11112
dicom-node: $(STAMP)
	$(if $(FORWARD),,$(error FORWARD=AET@host:port is required, e.g. make dicom-node FORWARD=ORTHANC@127.0.0.1:4242))
	$(PY) -m clinic.dicom_node --aet $(AET) --host $(HOST) --port $(PORT) --forward $(FORWARD) --work-dir runs/dicom_node

lint: $(STAMP)
	.venv/bin/ruff check bundle tests tools clinic
	.venv/bin/ruff format --check bundle tests tools clinic

clean:
	rm -rf runs dist .pytest_cache .ruff_cache
