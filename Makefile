# Two entry points for a fresh Debian 12 machine:
#   make demo   installs what is missing, builds, runs untrusted code and shows the verdicts
#   make test   installs what is missing, builds, runs every test with ctest
BUILD_DIR ?= build
JOBS ?= $(shell nproc)

.PHONY: all deps test-deps build demo test bench clean

all: build

deps:
	./scripts/setup.sh

test-deps:
	./scripts/setup.sh --test

build: deps
	cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	./scripts/demo.sh $(BUILD_DIR)/ultari

test: test-deps build
	cd $(BUILD_DIR) && ctest --output-on-failure -j 2 --timeout 600

bench: test-deps build
	python3 bench/startup --ultari $(BUILD_DIR)/ultari
	python3 bench/network --ultari $(BUILD_DIR)/ultari
	python3 bench/images --ultari $(BUILD_DIR)/ultari

clean:
	rm -rf $(BUILD_DIR)
