/* The --profile report (profile.h). */
#include "train/profile.h"

#include "core/log.h"
#include "ops/prof.h"
#include "train/trainer.h"

#include <string.h>

/* a rate in GFLOP/s from FLOPs and seconds (0 without time) */
static double gflops(double flop, double s) { return s > 0 ? flop / s / 1e9 : 0; }

static void table(const ds_prof_stats *p) {
    const double n = (double)p->steps, step = 1e3 * p->step_s / n, step_cpu = 1e3 * p->step_cpu_s / n;
    double sum = 0, sum_cpu = 0, ops = 0, gemm = 0, gemm_cpu = 0, flop = 0;
    for (int r = 0; r < DS_PROF_NREGION; r++) {
        sum += 1e3 * p->region_s[r] / n, sum_cpu += 1e3 * p->region_cpu_s[r] / n;
        gemm += 1e3 * p->gemm_s[r] / n, gemm_cpu += 1e3 * p->gemm_cpu_s[r] / n, flop += p->gemm_flop[r] / n;
    }
    for (int k = 0; k < DS_PROF_NOP; k++) ops += 1e3 * p->op_s[k] / n;
    ds_info("profile %lld step(s), %.2f ms per step (the first step of the run left out when there are more)",
            (long long)p->steps, step);
    ds_info("  CPU ms: process CPU time, all threads; busy: CPU ms / ms, the threads at work on average");
    ds_info("  %-30s %9s %7s %9s %5s %9s %9s %9s %9s %9s", "region (layer kind)", "ms/step", "share", "CPU ms", "busy",
            "GEMM ms", "GFLOP", "recomp.", "GFLOP/s", "/CPU-s");
    for (int r = 0; r < DS_PROF_NREGION; r++) {
        double ms = 1e3 * p->region_s[r] / n, cms = 1e3 * p->region_cpu_s[r] / n, gms = 1e3 * p->gemm_s[r] / n;
        double gflop = p->gemm_flop[r] / n;
        if (ds_prof_gemm_class(r) && p->gemm_flop[r] > 0)
            ds_info("  %-30s %9.2f %6.1f%% %9.2f %5.2f %9.2f %9.3f %9.3f %9.1f %9.1f", ds_prof_region_name(r), ms,
                    100 * ms / step, cms, ms > 0 ? cms / ms : 0, gms, gflop / 1e9, p->gemm_flop_rc[r] / n / 1e9,
                    gflops(gflop, gms / 1e3), gflops(gflop, p->gemm_cpu_s[r] / n));
        else if (ms > 0)
            ds_info("  %-30s %9.2f %6.1f%% %9.2f %5.2f", ds_prof_region_name(r), ms, 100 * ms / step, cms, cms / ms);
    }
    ds_info("  %-30s %9.2f %6.1f%% %9.2f %5.2f %9.2f %9.3f %9s %9.1f %9.1f", "sum", sum, 100 * sum / step, sum_cpu,
            sum > 0 ? sum_cpu / sum : 0, gemm, flop / 1e9, "", gflops(flop, gemm / 1e3), gflops(flop, gemm_cpu / 1e3));
    ds_info("  %-30s %9s %9s %7s %9s %5s", "op", "calls/step", "ms/step", "share", "CPU ms", "busy");
    for (int k = 0; k < DS_PROF_NOP; k++)
        if (p->op_calls[k]) {
            double ms = 1e3 * p->op_s[k] / n, cms = 1e3 * p->op_cpu_s[k] / n;
            ds_info("  %-30s %9.1f %9.2f %6.1f%% %9.2f %5.2f", ds_prof_op_name(k), (double)p->op_calls[k] / n, ms,
                    100 * ms / step, cms, ms > 0 ? cms / ms : 0);
        }
    ds_info("  %-30s %9s %9.2f %6.1f%%", "outside ops (host code)", "", step - ops, 100 * (step - ops) / step);
    ds_info("  GEMMs %.2f ms per step at %.1f GFLOP/s (%.1f GFLOP per CPU-second); %.1f%% of the step outside GEMMs",
            gemm, gflops(flop, gemm / 1e3), gflops(flop, gemm_cpu / 1e3), 100 * (step - gemm) / step);
    ds_info("  step CPU time %.2f ms (%.2f threads busy on average)", step_cpu, step > 0 ? step_cpu / step : 0);
}

static int record(const ds_prof_stats *p, ds_metrics *metrics) {
    const double n = (double)p->steps;
    double gemm = 0, gemm_cpu = 0;
    ds_jsonw w;
    ds_jsonw_init(&w);
    ds_jsonw_obj_begin(&w);
    ds_jsonw_key(&w, "profile");
    ds_jsonw_obj_begin(&w);
    ds_jsonw_kint(&w, "steps", p->steps);
    ds_train_knum(&w, "step_ms", 1e3 * p->step_s / n);
    ds_train_knum(&w, "step_cpu_ms", 1e3 * p->step_cpu_s / n);
    ds_jsonw_key(&w, "regions");
    ds_jsonw_obj_begin(&w);
    for (int r = 0; r < DS_PROF_NREGION; r++) {
        gemm += p->gemm_s[r], gemm_cpu += p->gemm_cpu_s[r];
        ds_jsonw_key(&w, ds_prof_region_key(r));
        ds_jsonw_obj_begin(&w);
        ds_train_knum(&w, "ms", 1e3 * p->region_s[r] / n);
        ds_train_knum(&w, "cpu_ms", 1e3 * p->region_cpu_s[r] / n);
        if (ds_prof_gemm_class(r)) {
            ds_jsonw_kstr(&w, "gemm_class", ds_prof_gemm_class(r));
            ds_train_knum(&w, "gemm_ms", 1e3 * p->gemm_s[r] / n);
            ds_train_knum(&w, "gemm_cpu_ms", 1e3 * p->gemm_cpu_s[r] / n);
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
        ds_train_knum(&w, "cpu_ms", 1e3 * p->op_cpu_s[k] / n);
        ds_train_knum(&w, "calls", (double)p->op_calls[k] / n);
        ds_jsonw_obj_end(&w);
    }
    ds_jsonw_obj_end(&w);
    ds_train_knum(&w, "outside_ops_ms", 1e3 * (p->step_s - ops) / n);
    ds_train_knum(&w, "gemm_ms", 1e3 * gemm / n);
    ds_train_knum(&w, "gemm_cpu_ms", 1e3 * gemm_cpu / n);
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
