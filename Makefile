# grpc-chat commands. `make server` and `make test` set everything up on a
# fresh machine: a virtualenv in .venv with requirements.txt installed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PORT   ?= 8080
NAME   ?=
REDIS_PORT ?= 6379
ARGS   ?=

.PHONY: gen redis server client test bench lint clean wc

# The virtualenv is rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

gen: $(VENV)/.installed  ## regenerate chat_pb2*.py from chat.proto
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. chat.proto

redis:  ## start a local Redis on REDIS_PORT: Docker if it runs, else redis-server
	@if docker info >/dev/null 2>&1; then \
		docker run --rm -d -p $(REDIS_PORT):6379 --name grpc-chat-redis redis:7 redis-server --appendonly yes; \
	else \
		redis-server --port $(REDIS_PORT) --appendonly yes --daemonize yes --dir /tmp; \
	fi
	@echo "Redis on redis://localhost:$(REDIS_PORT)/0"

server: $(VENV)/.installed  ## python server.py --port $(PORT) $(ARGS)
	$(PY) server.py --port $(PORT) $(ARGS)

client: $(VENV)/.installed  ## python client.py --name $(NAME)
	$(PY) client.py $(if $(NAME),--name $(NAME)) --address localhost:$(PORT) $(ARGS)

test: $(VENV)/.installed  ## the whole suite (starts its own redis-server)
	$(PY) -m pytest

bench: $(VENV)/.installed  ## the standard benchmark scenario
	$(PY) bench.py $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis __pycache__ tests/__pycache__

wc:  ## lines per file: each should read in one sitting
	@wc -l *.proto $$(ls *.py | grep -v _pb2) tests/*.py | sort -n
