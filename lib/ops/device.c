#include "ops/device.h"

#include "core/err.h"

#include <string.h>

#ifdef DS_HAVE_CUDA
#include "ops_cuda.h"
#endif

int ds_ops_for_device(const char *device, const ds_ops **out) {
    *out = NULL;
    if (!device || !strcmp(device, "cpu")) {
        *out = ds_ops_cpu();
        return DS_OK;
    }
    if (strcmp(device, "cuda")) return ds_fail(DS_EUSAGE, "--device %s: unknown device (cpu or cuda)", device);
#ifdef DS_HAVE_CUDA
    *out = ds_ops_cuda(); /* says "--device cuda: no usable GPU (...)" itself */
    if (!*out) return DS_ERR;
    return DS_OK;
#else
    ds_fail(DS_ERR, "--device cuda: this build has no CUDA backend (built without nvcc, or with make CUDA=0)");
    ds_hint("rebuild on a machine with the CUDA toolkit (nvcc), or use --device cpu");
    return DS_ERR;
#endif
}

int ds_ops_on_host(const ds_ops *ops) { return !ops || !strcmp(ops->name, "cpu"); }

int ds_device_memory_used(const ds_ops *ops, double *bytes) {
    *bytes = 0;
    if (ds_ops_on_host(ops)) return ds_fail(DS_ERR, "device memory: the CPU backend has no device");
#ifdef DS_HAVE_CUDA
    return ds_ops_cuda_memory_used(bytes);
#else
    return ds_fail(DS_ERR, "device memory: this build has no CUDA backend");
#endif
}

int ds_ops_check_bf16_gemm(const ds_ops *ops) {
    if (ds_ops_on_host(ops)) return DS_OK;
#ifdef DS_HAVE_CUDA
    if (!strcmp(ops->name, "cuda") && ds_ops_cuda_gemm() != DS_CUDA_GEMM_BF16) {
        ds_fail(DS_EUSAGE, "--bf16 --device cuda: DS_CUDA_GEMM=%s in the environment asks for %s GEMMs; --bf16 takes "
                "bf16 operands", ds_ops_cuda_gemm() == DS_CUDA_GEMM_TF32 ? "tf32" : "f32",
                ds_ops_cuda_gemm() == DS_CUDA_GEMM_TF32 ? "TF32" : "fp32");
        ds_hint("unset DS_CUDA_GEMM, or drop --bf16");
        return DS_EUSAGE;
    }
#endif
    return DS_OK;
}
