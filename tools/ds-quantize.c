/* ds-quantize — Convert checkpoints between FP8 E4M3 (128x128 block scales), BF16 and FP32. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/threads.h"
#include "fp8/ckpt_convert.h"
#include "model/weights.h"
#include "ops/ops.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    ds_metrics m; /* the JSONL report; m.f NULL when not asked for */
} report_ctx;

static const char *op_name(ds_conv_op op) {
    switch (op) {
    case DS_CONV_QUANT: return "quantize";
    case DS_CONV_DEQUANT: return "dequantize";
    case DS_CONV_CAST: return "cast";
    default: return "copy";
    }
}

static int on_tensor(void *ctx, const ds_conv_report *r) {
    report_ctx *c = ctx;
    const ds_tensor_desc *d = &r->step->out;
    const int lossy = r->step->op == DS_CONV_QUANT || r->step->op == DS_CONV_DEQUANT || r->step->op == DS_CONV_CAST;
    if (lossy)
        ds_verbose("%-10s %-60s %-4s -> %-7s max|err| %.3g  rel %.4g", op_name(r->step->op), d->name,
                   ds_dtype_name(r->from), ds_dtype_name(d->dtype), r->err.max_abs, ds_fp8_err_rel_fro(&r->err));
    if (!c->m.f) return 0;
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "tensor", d->name);
    ds_jsonw_kstr(&w, "op", op_name(r->step->op));
    ds_jsonw_kstr(&w, "from", ds_dtype_name(r->from));
    ds_jsonw_kstr(&w, "to", ds_dtype_name(d->dtype));
    ds_jsonw_key(&w, "shape");
    ds_jsonw_arr_begin(&w);
    for (int k = 0; k < d->ndim; k++) ds_jsonw_int(&w, d->shape[k]);
    ds_jsonw_arr_end(&w);
    ds_jsonw_kint(&w, "numel", r->numel);
    if (lossy) {
        ds_jsonw_knum(&w, "max_abs_err", r->err.max_abs);
        ds_jsonw_knum(&w, "rel_fro_err", ds_fp8_err_rel_fro(&r->err));
        ds_jsonw_kint(&w, "nonfinite", r->err.nonfinite);
    }
    if (r->step->op == DS_CONV_QUANT || r->step->op == DS_CONV_DEQUANT) {
        ds_jsonw_knum(&w, "scale_min", r->scale_min);
        ds_jsonw_knum(&w, "scale_max", r->scale_max);
    }
    ds_jsonw_knum(&w, "seconds", r->seconds);
    ds_jsonw_obj_end(&w);
    int rc = ds_metrics_write(&c->m, &w);
    ds_jsonw_free(&w);
    return rc;
}

/* The input's config against its tensors, before anything is written. */
static int check_input(void *ctx, const ds_config *cfg, const ds_st_tensor *const *t, int n, const char *where) {
    (void)ctx;
    return ds_model_check_tensors(cfg, t, n, where);
}

static void write_config_record(ds_metrics *m, const char *in, const char *out, const char *to, const char *sfmt,
                                int64_t shard) {
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kstr(&w, "config", "ds-quantize");
    ds_jsonw_kstr(&w, "model", in);
    ds_jsonw_kstr(&w, "out", out);
    ds_jsonw_kstr(&w, "to", to);
    ds_jsonw_kstr(&w, "scale_fmt", sfmt);
    ds_jsonw_kint(&w, "shard_size", shard);
    ds_jsonw_obj_end(&w);
    ds_metrics_write(m, &w);
    ds_jsonw_free(&w);
}

int main(int argc, char **argv) {
    ds_tool_init("ds-quantize");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    const char *model = NULL, *out = NULL, *to = NULL, *scale_fmt = "f32", *report = NULL;
    int64_t shard = 5000000000LL;
    int threads = 0, force = 0, quiet = 0, verbose = 0;
    const ds_opt opts[] = {
        {"model", 'm', DS_OPT_STR, &model, "IN", "checkpoint: directory, .safetensors file, or '-' (stream)", 0, 0, 0},
        {"out", 'o', DS_OPT_STR, &out, "OUT", "new directory, .safetensors file, or '-' (stream on stdout)", 0, 0, 0},
        {"to", 0, DS_OPT_CHOICE, &to, "TYPE", "fp8: DeepSeek's E4M3 + 128x128 weight_scale_inv; bf16 / fp32: dequantize and cast",
         "fp8|bf16|fp32", 0, 0},
        {"scale-fmt", 0, DS_OPT_CHOICE, &scale_fmt, "FMT", "fp8 block scales: f32 (V3) or ue8m0 (powers of two, V3.1)",
         "f32|ue8m0", 0, 0},
        {"shard-size", 0, DS_OPT_BYTES, &shard, "SIZE", "directory output: shards of at most SIZE bytes (0 = one file; K/M/G = 1024^n)",
         0, 0, 1e18},
        {"report", 0, DS_OPT_STR, &report, "FILE", "per-tensor JSONL: op, dtypes, shape, max_abs_err, rel_fro_err, scale range ('-' = stdout)",
         0, 0, 0},
        {"threads", 0, DS_OPT_INT, &threads, "N", "threads (0 = all cores)", 0, 0, 1e6},
        {"force", 0, DS_OPT_FLAG, &force, NULL, "replace an existing checkpoint at -o (or the input itself); write a binary stream to a terminal", 0, 0, 0},
        {"quiet", 'q', DS_OPT_FLAG, &quiet, NULL, "no progress or summary", 0, 0, 0},
        {"verbose", 'v', DS_OPT_FLAG, &verbose, NULL, "one line per converted tensor", 0, 0, 0},
        {0},
    };
    const ds_cli cli = {
        .name = "ds-quantize",
        .usage = "-m IN -o OUT --to fp8|bf16|fp32 [OPTIONS]",
        .summary = "Convert a checkpoint between DeepSeek-V3's FP8 layout and BF16/FP32, tensor by tensor in bounded memory\n"
                   "(checkpoints larger than RAM convert; pipes work both ways). To fp8: every Linear weight of the\n"
                   "decoder blocks becomes F8_E4M3 with an F32 <name>_scale_inv per 128x128 block (amax/448), the\n"
                   "embeddings, heads, norms, router, eh_proj and router bias stay as they are, and config.json gets\n"
                   "DeepSeek's quantization_config. From fp8: weights dequantized as DeepSeek's fp8_cast_bf16 does.\n"
                   "Prints the quantization error (relative Frobenius, max abs) per tensor with -v or --report.",
        .example = "  ds-quantize -m ckpt/sft -o ckpt/fp8 --to fp8 --report fp8-error.jsonl\n"
                   "  ds-quantize -m ckpt/sft -o - --to fp8 | ds-generate -m - --prompt '2+2='",
        .opts = opts,
    };
    int first, rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (!model) return ds_usage_error("-m IN is required");
    if (!out) return ds_usage_error("-o OUT is required");
    if (!to) return ds_usage_error("--to fp8|bf16|fp32 is required");
    if (report && ds_is_stdio(report) && ds_is_stdio(out))
        return ds_usage_error("--report - and %s - both want stdout", ds_cli_opt(&out, "-o"));
    ds_log_set_level(quiet ? DS_LOG_QUIET : verbose ? DS_LOG_VERBOSE : DS_LOG_NORMAL);
    ds_threads_set(threads);
    if (ds_is_stdio(out) && (rc = ds_check_binary_stdout(force))) return ds_tool_report(rc);
    if ((rc = ds_ckpt_check_out(out, model, force, 0, NULL))) return ds_tool_report(rc);
    ds_dir_lock lock = {0}; /* one writer per output directory */
    if (ds_ckpt_out_is_dir(out) && (rc = ds_dir_lock_take(&lock, out))) return ds_tool_report(rc);

    ds_ckpt_convert_opts co = {
        .target = !strcmp(to, "fp8") ? DS_CONV_TO_FP8 : !strcmp(to, "bf16") ? DS_CONV_TO_BF16 : DS_CONV_TO_F32,
        .scale_fmt = !strcmp(scale_fmt, "ue8m0") ? DS_FP8_SCALE_UE8M0 : DS_FP8_SCALE_F32,
        .max_shard_bytes = (uint64_t)shard,
        .report = on_tensor,
        .progress = !quiet,
        .check = check_input,
    };
    report_ctx rctx = {{0}};
    co.report_ctx = &rctx;
    ds_info("ds-quantize: %s -> %s, to %s%s", model, out, to, co.target == DS_CONV_TO_FP8 ? (co.scale_fmt ? " (ue8m0 scales)" : " (f32 scales)") : "");
    if (report) {
        if ((rc = ds_metrics_open(&rctx.m, report, 0))) {
            ds_dir_lock_release(&lock);
            return ds_tool_report(rc);
        }
        write_config_record(&rctx.m, model, out, to, scale_fmt, shard);
    }
    ds_ckpt_convert_stats st;
    rc = ds_ckpt_convert(model, out, &co, &st);
    ds_dir_lock_release(&lock);
    if (report) ds_metrics_close(&rctx.m);
    if (rc) return ds_tool_report(rc);
    ds_info("ds-quantize: %d tensors -> %d (%d quantized, %d dequantized, %d cast), %.1f MB -> %.1f MB in %.2f s",
            st.tensors_in, st.tensors_out, st.quantized, st.dequantized, st.cast, st.bytes_in / 1e6, st.bytes_out / 1e6,
            st.seconds);
    if (st.quantized)
        ds_info("ds-quantize: quantization error: relative Frobenius %.4g over all weights, worst tensor %.4g (%s), "
                "max abs %.3g",
                ds_fp8_err_rel_fro(&st.err_quant), st.worst_rel_fro, st.worst_name, st.err_quant.max_abs);
    return 0;
}
