/* CPU ops: causal attention (with segment masking) that keeps only the per-row logsumexp.
 *
 * Work is split into query blocks of QB rows of one (sequence, head); each block multiplies against the
 * keys it can see with single-threaded sgemm calls from its OpenMP thread. The backward recomputes the
 * probabilities of each block from q, k and lse, so no [T, T] tensor outlives a block. */
#include "ops/cpu_internal.h"
#include "ops/cpu_math.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define QB 64

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* start[b*T + i] = first position of the segment (maximal run of equal ids) holding position i */
static void segment_starts(int32_t *start, const int32_t *seg, int B, int T) {
    for (int b = 0; b < B; b++) {
        const int32_t *s = seg ? seg + (size_t)b * T : NULL;
        int32_t *st = start + (size_t)b * T;
        for (int i = 0; i < T; i++) st[i] = (s && i > 0 && s[i] == s[i - 1]) ? st[i - 1] : (s ? i : 0);
    }
}

/* S[r, c] = scale * q_{i0+r}·k_{lo+c}, then masked (c outside [start_i - lo, i - lo] -> -inf) */
static void block_scores(float *S, int ldS, const float *q, const float *k, int ldq, int ldk, int i0, int nq, int lo,
                         int nk, int dqk, float scale, const int32_t *start) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, dqk, scale, q + (size_t)i0 * ldq, ldq,
                k + (size_t)lo * ldk, ldk, 0.0f, S, ldS);
    for (int r = 0; r < nq; r++) {
        int i = i0 + r;
        float *s = S + (size_t)r * ldS;
        for (int c = 0; c < start[i] - lo; c++) s[c] = -INFINITY;
        for (int c = i - lo + 1; c < nk; c++) s[c] = -INFINITY;
    }
}

/* workspace: segment starts [B*T] int32, then per thread P and dP blocks [QB, T] and D [QB] */
static size_t per_thread(int T) { return (size_t)2 * QB * T + QB; }
static size_t starts_bytes(int B, int T) { return ((sizeof(int32_t) * (size_t)B * T) + 63) & ~(size_t)63; }

size_t ds_cpu_attn_ws_bytes(int B, int T, int H, int dqk, int dv) {
    return starts_bytes(B, T) + sizeof(float) * (size_t)max_threads() * per_thread(T);
}

void ds_cpu_attn_fwd(float *o, float *lse, const float *q, const float *k, const float *v, const int32_t *seg,
                     int B, int T, int H, int dqk, int dv, float scale, void *ws) {
    int nqb = (T + QB - 1) / QB;
    int32_t *start = ws;
    float *scratch = (float *)((char *)ws + starts_bytes(B, T));
    segment_starts(start, seg, B, T);
    int ldq = H * dqk, ldv = H * dv;
    ds_cpu_blas_single();
#pragma omp parallel for schedule(dynamic, 1)
    for (long task = 0; task < (long)B * H * nqb; task++) {
        int qb = (int)(task % nqb), h = (int)(task / nqb % H), b = (int)(task / nqb / H);
        float *S = scratch + (size_t)thread_id() * per_thread(T);
        const int32_t *st = start + (size_t)b * T;
        size_t row0 = (size_t)b * T;
        const float *qh = q + row0 * ldq + (size_t)h * dqk, *kh = k + row0 * ldq + (size_t)h * dqk;
        const float *vh = v + row0 * ldv + (size_t)h * dv;
        int i0 = qb * QB, nq = i0 + QB <= T ? QB : T - i0, lo = st[i0], nk = i0 + nq - lo;
        block_scores(S, nk, qh, kh, ldq, ldq, i0, nq, lo, nk, dqk, scale, st);
        for (int r = 0; r < nq; r++) {
            float *s = S + (size_t)r * nk, mx = -INFINITY, sum = 0.0f;
            for (int c = 0; c < nk; c++) mx = s[c] > mx ? s[c] : mx;
#pragma omp simd reduction(+ : sum)
            for (int c = 0; c < nk; c++) {
                s[c] = ds_expf(s[c] - mx);
                sum += s[c];
            }
            float inv = 1.0f / sum;
#pragma omp simd
            for (int c = 0; c < nk; c++) s[c] *= inv;
            lse[(row0 + i0 + r) * H + h] = mx + logf(sum);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, dv, nk, 1.0f, S, nk, vh + (size_t)lo * ldv, ldv,
                    0.0f, o + (row0 + i0) * ldv + (size_t)h * dv, ldv);
    }
}

void ds_cpu_attn_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                     const float *v, const float *o, const float *lse, const int32_t *seg, int B, int T, int H,
                     int dqk, int dv_dim, float scale, void *ws) {
    int nqb = (T + QB - 1) / QB;
    int32_t *start = ws;
    float *scratch = (float *)((char *)ws + starts_bytes(B, T));
    size_t per = per_thread(T);
    segment_starts(start, seg, B, T);
    int ldq = H * dqk, ldv = H * dv_dim;
    ds_cpu_blas_single();
    /* one task per (sequence, head): dk and dv of that head collect every query block in order */
#pragma omp parallel for schedule(dynamic, 1)
    for (long task = 0; task < (long)B * H; task++) {
        int h = (int)(task % H), b = (int)(task / H);
        float *P = scratch + (size_t)thread_id() * per, *dP = P + (size_t)QB * T, *Dr = dP + (size_t)QB * T;
        const int32_t *st = start + (size_t)b * T;
        size_t row0 = (size_t)b * T, hq = (size_t)h * dqk, hv = (size_t)h * dv_dim;
        const float *qh = q + row0 * ldq + hq, *kh = k + row0 * ldq + hq, *vh = v + row0 * ldv + hv;
        const float *doh = dout + row0 * ldv + hv, *oh = o + row0 * ldv + hv;
        float *dqh = dq + row0 * ldq + hq, *dkh = dk + row0 * ldq + hq, *dvh = dv + row0 * ldv + hv;
        for (int i = 0; i < T; i++) {
            memset(dkh + (size_t)i * ldq, 0, sizeof(float) * dqk);
            memset(dvh + (size_t)i * ldv, 0, sizeof(float) * dv_dim);
        }
        for (int qb = 0; qb < nqb; qb++) {
            int i0 = qb * QB, nq = i0 + QB <= T ? QB : T - i0, lo = st[i0], nk = i0 + nq - lo;
            block_scores(P, nk, qh, kh, ldq, ldq, i0, nq, lo, nk, dqk, scale, st);
            for (int r = 0; r < nq; r++) {
                float *p = P + (size_t)r * nk, l = lse[(row0 + i0 + r) * H + h];
#pragma omp simd
                for (int c = 0; c < nk; c++) p[c] = ds_expf(p[c] - l);
                const float *dor = doh + (size_t)(i0 + r) * ldv, *orow = oh + (size_t)(i0 + r) * ldv;
                float d = 0.0f;
#pragma omp simd reduction(+ : d)
                for (int c = 0; c < dv_dim; c++) d += dor[c] * orow[c];
                Dr[r] = d;
            }
            /* dV[lo:] += P^T dO */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, dv_dim, nq, 1.0f, P, nk,
                        doh + (size_t)i0 * ldv, ldv, 1.0f, dvh + (size_t)lo * ldv, ldv);
            /* dP = dO V^T; dS = P ⊙ (dP - D) (scale folded into the next two products) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, dv_dim, 1.0f, doh + (size_t)i0 * ldv, ldv,
                        vh + (size_t)lo * ldv, ldv, 0.0f, dP, nk);
            for (int r = 0; r < nq; r++) {
                float *p = P + (size_t)r * nk, *g = dP + (size_t)r * nk, d = Dr[r];
#pragma omp simd
                for (int c = 0; c < nk; c++) g[c] = p[c] * (g[c] - d);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, dqk, nk, scale, dP, nk, kh + (size_t)lo * ldq,
                        ldq, 0.0f, dqh + (size_t)i0 * ldq, ldq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, dqk, nq, scale, dP, nk, qh + (size_t)i0 * ldq,
                        ldq, 1.0f, dkh + (size_t)lo * ldq, ldq);
        }
    }
}
