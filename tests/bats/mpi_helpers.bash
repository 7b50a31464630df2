# mpi_helpers.bash — running the tools under mpirun inside the tests (load mpi_helpers).
# As root in CI, on 2 cores (--oversubscribe), Open MPI kept to shared memory and loopback inside the
# test sandbox. Open MPI unloads its plugins at MPI_Finalize and leaves their allocations behind, which
# LeakSanitizer reports from "<unknown module>" frames no suppression can name: under SANITIZE leak
# detection is off for these runs, address and undefined-behaviour checks stay on.

mpi_env() {
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
    [ -n "${DS_SANITIZE:-}" ] && export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
    return 0
}

# mpi ARGS...: mpirun --oversubscribe ARGS... in that environment
mpi() {
    mpi_env
    mpirun --oversubscribe "$@"
}

# Whether this build has NCCL (lib/dist/nccl.h; make's choice, from TEST_ENV; by hand: the build's stamp):
# the NCCL transport is refused differently with and without it.
nccl_build() {
    local v=${DS_NCCL:-}
    [ -n "$v" ] || v=$(ls "$DS_ROOT"/build/*/nccl-1.stamp 2>/dev/null | grep -c .)
    [ "$v" != 0 ]
}
