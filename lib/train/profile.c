/* The --profile report (profile.h). */
#include "train/profile.h"

#include "core/log.h"
#include "ops/prof.h"
#include "train/trainer.h"

#include <string.h>

static void table(const ds_prof_stats *p) {
    const double n = (double)p->steps, step = 1e3 * p->step_s / n;
    double sum = 0, ops = 0, gemm = 0, flop = 0;
    for (int r = 0; r < DS_PROF_NREGION; r++) sum += 1e3 * p->region_s[r] / n, gemm += 1e3 * p->gemm_s[r] / n,
                                              flop += p->gemm_flop[r] / n;
    for (int k = 0; k < DS_PROF_NOP; k++) ops += 1e3 * p->op_s[k] / n;
    ds_info("profile %lld step(s), %.2f ms per step (the first step of the run left out when there are more)",
            (long long)p->steps, step);
    ds_info("  %-30s %9s %7s %9s %9s %9s %9s", "region (layer kind)", "ms/step", "share", "GEMM ms", "GFLOP",
            "recomp.", "GFLOP/s");
    for (int r = 0; r < DS_PROF_NREGION; r++) {
        double ms = 1e3 * p->region_s[r] / n, gms = 1e3 * p->gemm_s[r] / n;
        if (ds_prof_gemm_class(r) && p->gemm_flop[r] > 0)
            ds_info("  %-30s %9.2f %6.1f%% %9.2f %9.3f %9.3f %9.1f", ds_prof_region_name(r), ms, 100 * ms / step, gms,
                    p->gemm_flop[r] / n / 1e9, p->gemm_flop_rc[r] / n / 1e9, gms > 0 ? p->gemm_flop[r] / n / gms / 1e6 : 0);
        else if (ms > 0)
            ds_info("  %-30s %9.2f %6.1f%%", ds_prof_region_name(r), ms, 100 * ms / step);
    }
    ds_info("  %-30s %9.2f %6.1f%% %9.2f %9.3f %9s %9.1f", "sum", sum, 100 * sum / step, gemm, flop / 1e9, "",
            gemm > 0 ? flop / gemm / 1e6 : 0);
    ds_info("  %-30s %9s %9s %7s", "op", "calls/step", "ms/step", "share");
    for (int k = 0; k < DS_PROF_NOP; k++)
        if (p->op_calls[k])
            ds_info("  %-30s %9.1f %9.2f %6.1f%%", ds_prof_op_name(k), (double)p->op_calls[k] / n,
                    1e3 * p->op_s[k] / n, 100e3 * p->op_s[k] / n / step);
    ds_info("  %-30s %9s %9.2f %6.1f%%", "outside ops (host code)", "", step - ops, 100 * (step - ops) / step);
    ds_info("  GEMMs %.2f ms per step at %.1f GFLOP/s; %.1f%% of the step outside GEMMs", gemm,
            gemm > 0 ? flop / gemm / 1e6 : 0, 100 * (step - gemm) / step);
}

static int record(const ds_prof_stats *p, ds_metrics *metrics) {
    const double n = (double)p->steps;
    double gemm = 0;
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "profile");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kint(&w, "steps", p->steps);
    ds_train_knum(&w, "step_ms", 1e3 * p->step_s / n);
    ds_jsonw_key(&w, "regions");
    ds_jsonw_obj_begin(&w);
    for (int r = 0; r < DS_PROF_NREGION; r++) {
        gemm += p->gemm_s[r];
        ds_jsonw_key(&w, ds_prof_region_key(r));
        ds_jsonw_obj_begin(&w);
        ds_train_knum(&w, "ms", 1e3 * p->region_s[r] / n);
        if (ds_prof_gemm_class(r)) {
            ds_jsonw_kstr(&w, "gemm_class", ds_prof_gemm_class(r));
            ds_train_knum(&w, "gemm_ms", 1e3 * p->gemm_s[r] / n);
            ds_train_knum(&w, "gemm_flop", p->gemm_flop[r] / n);
            ds_train_knum(&w, "gemm_flop_recompute", p->gemm_flop_rc[r] / n);
        }
        ds_jsonw_obj_end(&w);
    }
    ds_jsonw_obj_end(&w);
    ds_jsonw_key(&w, "ops");
    ds_jsonw_obj_begin(&w);
    double ops = 0;
    for (int k = 0; k < DS_PROF_NOP; k++) {
        ops += p->op_s[k];
        if (!p->op_calls[k]) continue;
        ds_jsonw_key(&w, ds_prof_op_name(k));
        ds_jsonw_obj_begin(&w);
        ds_train_knum(&w, "ms", 1e3 * p->op_s[k] / n);
        ds_train_knum(&w, "calls", (double)p->op_calls[k] / n);
        ds_jsonw_obj_end(&w);
    }
    ds_jsonw_obj_end(&w);
    ds_train_knum(&w, "outside_ops_ms", 1e3 * (p->step_s - ops) / n);
    ds_train_knum(&w, "gemm_ms", 1e3 * gemm / n);
    ds_train_knum(&w, "outside_gemm_share", p->step_s > 0 ? (p->step_s - gemm) / p->step_s : 0);
    ds_jsonw_obj_end(&w);
    ds_jsonw_obj_end(&w);
    int rc = ds_metrics_write(metrics, &w);
    ds_jsonw_free(&w);
    return rc;
}

int ds_train_profile_report(ds_metrics *metrics) {
    ds_prof_stats p;
    ds_prof_get(&p);
    if (p.steps <= 0) return 0;
    table(&p);
    return metrics ? record(&p, metrics) : 0;
}
