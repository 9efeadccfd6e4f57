# grpc-chat commands. `make server` and `make test` set everything up on a
# fresh machine: a virtualenv in .venv with requirements.txt installed (and
# requirements-dev.txt for the tests and tools).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080
NAME   ?=
REDIS_PORT ?= 6379
ARGS   ?=

.PHONY: gen redis sentinel sentinel-stop server client cert test soak bench lint clean wc

# The virtualenv: .installed once requirements.txt is in it (what the programs
# need), .installed-dev once requirements-dev.txt is too (tests and tools);
# each is redone when its file changes.
$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

gen: $(VENV)/.installed-dev  ## regenerate chat_pb2*.py from chat.proto
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. chat.proto

redis:  ## start a local Redis on REDIS_PORT: Docker if it runs, else redis-server
	@if docker info >/dev/null 2>&1; then \
		docker run --rm -d -p $(REDIS_PORT):6379 --name grpc-chat-redis redis:7 redis-server --appendonly yes; \
	else \
		redis-server --port $(REDIS_PORT) --appendonly yes --daemonize yes --dir /tmp; \
	fi
	@echo "Redis on redis://localhost:$(REDIS_PORT)/0"

# A master, a replica and three sentinels on this machine (deploy/sentinel/),
# in run/sentinel; the servers' URL is the script's last line.
sentinel:  ## Redis under Sentinel: master :6380, replica :6381, sentinels :26379-26381
	deploy/sentinel/start.sh

sentinel-stop:  ## stop what make sentinel started
	deploy/sentinel/stop.sh

server: $(VENV)/.installed  ## python server.py --port $(PORT) $(ARGS)
	$(PY) server.py --port $(PORT) $(ARGS)

client: $(VENV)/.installed  ## python client.py --name $(NAME)
	$(PY) client.py $(if $(NAME),--name $(NAME)) --address localhost:$(PORT) $(ARGS)

# openssl, not a Python package: nothing to install, and the command is the one
# every TLS guide shows. The key is for this machine; the pair lasts 30 days.
cert:  ## cert.pem and key.pem: a self-signed certificate for localhost (TLS, try it)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
		-subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
		-keyout key.pem -out cert.pem
	@echo "server: make server ARGS='--tls-cert cert.pem --tls-key key.pem'"
	@echo "client: make client NAME=alice ARGS='--ca-cert cert.pem'"

# Two workers (pytest-xdist): the tests mostly wait, so the suite takes half the
# time; the fault hunts (one group) run one at a time.
test: $(VENV)/.installed-dev  ## the whole suite (starts its own redis-server)
	$(PY) -m pytest -n 2 --dist loadgroup

HUNT_SECONDS ?= 300
HUNT_SEEDS ?= 5
soak: $(VENV)/.installed-dev  ## the fault hunt, long: HUNT_SEEDS runs of HUNT_SECONDS each
	HUNT_SECONDS=$(HUNT_SECONDS) HUNT_SEEDS=$(HUNT_SEEDS) $(PY) -m pytest tests/test_hunt.py -rA

bench: $(VENV)/.installed-dev  ## python -m bench $(ARGS): server.py against the baselines
	$(PY) -m bench $(ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tools/lint_imports.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis __pycache__ tests/__pycache__
	rm -rf bench/__pycache__ bench/peers/__pycache__ cluster/__pycache__ access/__pycache__ terminal/__pycache__

wc:  ## lines per file: each should read in one sitting
	@wc -l *.proto $$(ls *.py | grep -v _pb2) cluster/*.py access/*.py terminal/*.py tests/*.py bench/*.py bench/peers/*.py | sort -n
