# Two entry points for a fresh clone (nothing installed): `make demo` and `make test`.
# Both create the virtual environment first (torch pinned as the project's machines need).
VENV   ?= .venv
PY     := $(VENV)/bin/python
SHARED ?= ../shared
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# the main job: the released BlockDrop ResNet-32 (release/, trained by this project's recipes) on the shared
# CIFAR-10 test set: accuracy, blocks, FLOPs, and its speed against the full ResNet-32 on the same batches
RELEASE ?= release/blockdrop_cifar_resnet32.cifar10
demo: setup
	$(VENV)/bin/blockdrop eval --checkpoint $(RELEASE) --data $(SHARED)/data/cifar10 --compare-full

# what CI runs (.ci/run): the whole test suite, offline (about 15 minutes on 2 cores)
test: setup
	BLOCKDROP_SHARED=$(SHARED) $(PY) -m pytest -q tests
