/* ds-bench-a2a — Expert-parallel dispatch/combine benchmark over MPI, NCCL and RDMA verbs. */
#include "core/cli.h"
#include "core/err.h"

int main(int argc, char **argv) {
    ds_tool_init("ds-bench-a2a");
    static const ds_opt opts[] = {{0}};
    const ds_cli cli = {
        .name = "ds-bench-a2a",
        .usage = "[OPTIONS]",
        .summary = "Expert-parallel dispatch/combine benchmark over MPI, NCCL and RDMA verbs.",
        .example = "  mpirun -np 4 ds-bench-a2a -b 1M -e 64M -f 2",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    return ds_tool_report(ds_fail(DS_ERR, "not implemented yet"));
}
