# libds and the ds-* tools.
#
#   make                 build libds and the eight programs into bin/
#   make test            install what is missing, build, run every suite; ends with "N passed, N failed"
#   make demo            the whole pipeline on the embedded default data (share/demo.sh)
#   make SANITIZE=1 test the suite under ASan + UBSan
#   make CUDA=0          skip the CUDA objects even where nvcc exists
#   make NCCL=0          build without NCCL even where nccl.h exists (NCCL is loaded at run time)
#   make test-gpu        kernels and end-to-end steps against the CPU reference (needs a GPU)
#   make install PREFIX=/usr/local
#
# Sources are found by wildcard: a new lib/<module>/<name>.c, tools/ds-<name>.c, tests/unit/test_<name>.c,
# tests/fuzz/fuzz_<name>.c or kernels/<name>.cu is picked up without editing this file.

PREFIX   ?= /usr/local
CC       ?= cc
ifeq ($(origin CC),default)
CC       := gcc
endif
NVCC     ?= nvcc
ARCH     ?= -march=native
OPT      ?= -O3
SANITIZE ?=
FUZZ_SECONDS ?= 4
VENV     ?= $(HOME)/.cache/ds-venv

ifeq ($(origin CUDA),undefined)
CUDA := $(if $(shell sh -c 'command -v $(NVCC)' 2>/dev/null),1,0)
endif

VARIANT := $(if $(SANITIZE),san,rel)$(if $(filter 1,$(CUDA)),-cuda,)
BUILD   := build/$(VARIANT)
BIN     := $(if $(SANITIZE),$(BUILD)/bin,bin)

GIT_REV := $(shell git describe --always --dirty 2>/dev/null || echo unknown)
PKGS    := openblas libzstd libpcre2-8 jansson ompi-c libpng freetype2 libmicrohttpd

# pkg-config's flags come from a makefile that a rule writes after the deps step, never from the parse:
# on a fresh machine pkg-config and the libraries only exist once .ci/deps.sh has run. GNU make remakes
# an included makefile that is missing or out of date and then starts over, so whatever the goal, the
# build is parsed with flags computed after the packages were installed (tests/bats/build.bats).
CONFIG_MK := build/config.mk
ifneq ($(filter-out clean help deps deps-check venv,$(or $(MAKECMDGOALS),all)),)
include $(CONFIG_MK)
endif

WARN    := -Wall -Wextra -Wshadow -Wno-unused-parameter -Wno-sign-compare -Wno-missing-field-initializers
CFLAGS  ?= $(OPT) $(ARCH) -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -fopenmp -Ilib $(WARN) $(PKG_CFLAGS) -DDS_GIT='"$(GIT_REV)"'
LDLIBS  := $(PKG_LIBS) -lopenblas -lzstd -lpcre2-8 -ljansson -lm -lpthread
LDFLAGS += -fopenmp -Wl,--as-needed  # a tool links only the shared libraries it uses (no idle OpenBLAS pool)

ifneq ($(SANITIZE),)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
OPT     := -O1
endif

LIB_SRC  := $(sort $(wildcard lib/*/*.c))
LIB_HDR  := $(sort $(wildcard lib/*/*.h))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TOOL_SRC := $(sort $(wildcard tools/ds-*.c))
TOOLS    := $(TOOL_SRC:tools/%.c=$(BIN)/%)
TOOL_OBJ := $(TOOL_SRC:%.c=$(BUILD)/%.o)
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))
UNITS    := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZERS  := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_OBJ := $(LIB_SRC:%.c=build/fuzz/obj/%.o)
CU_SRC   := $(sort $(wildcard kernels/*.cu))
CU_OBJ   := $(CU_SRC:%.cu=$(BUILD)/%.o)
LIBDS    := $(BUILD)/libds.a
# GPU test programs and GPU benchmarks: host code in .cu files built by nvcc (CUDA builds only)
GPU_TEST_SRC  := $(sort $(wildcard tests/gpu/test_*.cu))
GPU_BENCH_SRC := $(sort $(wildcard bench/gpu_*.cu))
GPU_TESTS     := $(if $(filter 1,$(CUDA)),$(GPU_TEST_SRC:tests/gpu/%.cu=$(BUILD)/tests/gpu/%),)
GPU_BENCHES   := $(if $(filter 1,$(CUDA)),$(GPU_BENCH_SRC:bench/%.cu=$(BUILD)/bench/%),)

ifeq ($(CUDA),1)
CUDA_HOME ?= /usr/local/cuda
CFLAGS   += -DDS_HAVE_CUDA -I$(CUDA_HOME)/include -Ikernels
NVFLAGS  ?= -O3 -gencode=arch=compute_90a,code=sm_90a -std=c++17 -Ilib -Ikernels -DDS_HAVE_CUDA \
            -Xcompiler -fPIC,-Wall --expt-relaxed-constexpr
LIBDS_CUDA := $(BUILD)/libds_cuda.a
LDLIBS   += $(LIBDS_CUDA) -L$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart -lstdc++ -ldl -lrt
endif
# NCCL, like CUDA, where it is found: its header at build time (CUDA's or the system's); the library is
# dlopen()ed by lib/dist/nccl.c when a run asks for it, so nothing links it. Only nccl.o depends on the
# choice, and a stamp rebuilds it when the choice changes.
ifeq ($(CUDA),1)
ifeq ($(origin NCCL),undefined)
NCCL := $(if $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h),1,0)
endif
else
NCCL := 0
endif
NCCL_STAMP := $(BUILD)/nccl-$(NCCL).stamp
$(BUILD)/lib/dist/nccl.o: CFLAGS += $(if $(filter 1,$(NCCL)),-DDS_HAVE_NCCL)
$(BUILD)/lib/dist/nccl.o: $(NCCL_STAMP)
$(NCCL_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/nccl-*.stamp
	@touch $@

.PHONY: objects fuzz-objects all deps venv test test-quick test-gpu demo install clean fuzz bench help
.DEFAULT_GOAL := all

all: deps-check $(TOOLS)

help:
	@sed -n '2,13p' Makefile | sed 's/^# \{0,1\}//'

# --- set-up ----------------------------------------------------------------------------------------
# deps: Debian packages (idempotent, fast when present). venv: Python reference packages, cached in
# $(VENV) outside the clone so repeated runs reuse it.
deps:
	@.ci/deps.sh
deps-check:
	@.ci/deps.sh --check-or-install
$(CONFIG_MK): Makefile .ci/deps.sh
	@.ci/deps.sh --check-or-install
	@mkdir -p $(dir $@)
	@cflags=$$(pkg-config --cflags $(PKGS)) && libs=$$(pkg-config --libs $(PKGS)) || \
	    { echo "make: pkg-config cannot resolve: $(PKGS)" >&2; exit 1; }; \
	printf '# written by make after .ci/deps.sh (pkg-config $(PKGS))\nPKG_CFLAGS := %s\nPKG_LIBS := %s\n' \
	    "$$cflags" "$$libs" >$@.tmp && mv $@.tmp $@
venv: deps
	@VENV=$(VENV) .ci/venv.sh

# --- build -----------------------------------------------------------------------------------------
# AdamW's loop vectorizes only without errno from sqrtf (lib/train/adamw.c)
$(BUILD)/lib/train/adamw.o: CFLAGS += -fno-math-errno
$(BUILD)/%.o: %.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIBDS): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/kernels/%.o: kernels/%.cu $(LIB_HDR) $(wildcard kernels/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIBDS_CUDA): $(CU_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	ar rcs $@ $^

$(BIN)/%: $(BUILD)/tools/%.o $(LIBDS) $(LIBDS_CUDA)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $< $(LIBDS) $(LDLIBS) -o $@

# --as-needed keeps the GPU programs free of libraries they never call, so they run on a GPU machine
# that has the CUDA libraries but not our Debian ones (see tests/gpu/README.md).
GPU_LINK = -Xcompiler -fopenmp $(LIBDS) $(LIBDS_CUDA) -Xlinker --as-needed $(filter-out $(LIBDS_CUDA),$(LDLIBS)) -lgomp
$(BUILD)/tests/gpu/%: tests/gpu/%.cu tests/gpu/gpu_test.h tests/unit/tap.h $(LIBDS) $(LIBDS_CUDA)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -Itests/unit -Itests/gpu $< -o $@ $(GPU_LINK)
$(BUILD)/bench/%: bench/%.cu tests/gpu/gpu_test.h $(LIBDS) $(LIBDS_CUDA)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -Itests/unit -Itests/gpu $< -o $@ $(GPU_LINK)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/tap.h $(LIBDS) $(LIBDS_CUDA)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/unit $(LDFLAGS) $< $(LIBDS) $(LDLIBS) -o $@

# libFuzzer harnesses: the library is rebuilt with clang and the fuzzer instrumentation (no OpenMP).
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Ilib $(PKG_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined \
               -Wno-unknown-pragmas -Wno-psabi
build/fuzz/obj/%.o: %.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -c $< -o $@
build/fuzz/%: tests/fuzz/%.c $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $^ $(LDLIBS) -o $@
fuzz: $(FUZZERS)

# --- tests -----------------------------------------------------------------------------------------
# DS_BIN: the programs under test; DS_PY: the reference venv's python; DS_UNITS: unit test binaries.
TEST_ENV = DS_BIN=$(abspath $(BIN)) DS_PY=$(VENV)/bin/python DS_UNITS="$(UNITS)" DS_FUZZERS="$(FUZZERS)" \
           FUZZ_SECONDS=$(FUZZ_SECONDS) DS_SANITIZE=$(SANITIZE) DS_NCCL=$(NCCL) OMP_NUM_THREADS=2

test: venv all $(UNITS) $(if $(shell sh -c 'command -v clang' 2>/dev/null),$(FUZZERS),)
	@$(TEST_ENV) tests/run.sh

# the fast subset while developing: unit tests and bats, no reference checks or fuzzing (the bats suites
# compare against Python references too, so the venv comes first, as for test)
test-quick: venv all $(UNITS)
	@$(TEST_ENV) DS_QUICK=1 tests/run.sh

test-gpu: all $(GPU_TESTS) $(GPU_BENCHES)
	@$(TEST_ENV) DS_GPU_TESTS="$(GPU_TESTS) $(if $(GPU_TESTS),tests/gpu/test_tools.sh tests/gpu/test_fp8_resident.sh tests/gpu/test_nccl.sh)" tests/gpu/run.sh

demo: all
	@DS_BIN=$(abspath $(BIN)) share/demo.sh

# --- install ---------------------------------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/ds $(DESTDIR)$(PREFIX)/share/ds
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBDS) $(LIBDS_CUDA) $(DESTDIR)$(PREFIX)/lib/
	cd lib && for h in $(LIB_HDR:lib/%=%); do install -D -m 644 $$h $(DESTDIR)$(PREFIX)/include/ds/$$h; done
	cp -r share/. $(DESTDIR)$(PREFIX)/share/ds/

clean:
	rm -rf build bin

# Naming the objects in a rule keeps make from treating them as intermediate (and skipping rebuilds).
objects: $(LIB_OBJ) $(TOOL_OBJ) $(CU_OBJ)
fuzz-objects: $(FUZZ_OBJ)
