/* bf16 GEMMs: the AMX kernel (packing with rounding, 2 x 2 tiles of C per step) and the sgemm fallback. */
#include "ops/gemm_bf16.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#define DS_AMX_BUILD 1
#else
#define DS_AMX_BUILD 0
#endif

#include "ops/cpu_internal.h"

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_max_threads(void) { return 1; }
#endif

/* ---- the choice of kernel ---------------------------------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_amx, g_off; /* g_off: switched off by ds_gemm_bf16_use_amx(0) */
static char g_kernel[160];

#define ARCH_GET_XCOMP_PERM_ 0x1022
#define ARCH_REQ_XCOMP_PERM_ 0x1023
#define XFEATURE_XTILEDATA_ 18

static void choose_kernel(void) {
    const char *env = getenv("DS_AMX");
    if (env && !strcmp(env, "0")) {
        snprintf(g_kernel, sizeof g_kernel, "sgemm on bf16-rounded operands (DS_AMX=0)");
        return;
    }
#if DS_AMX_BUILD
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24)) ||
        !__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) {
        snprintf(g_kernel, sizeof g_kernel, "sgemm on bf16-rounded operands (this CPU has no AMX-BF16)");
        return;
    }
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & (3u << 17)) != (3u << 17)) { /* XTILECFG and XTILEDATA enabled by the OS */
        snprintf(g_kernel, sizeof g_kernel, "sgemm on bf16-rounded operands (the OS has not enabled AMX state)");
        return;
    }
    /* Linux grants the 8 KiB tile state only on request, process-wide; a thread that touched a tile without
     * it would get SIGILL. Asked once here, before any parallel region runs a tile instruction. */
    unsigned long perm = 0;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM_, XFEATURE_XTILEDATA_) ||
        syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM_, &perm) || !(perm & (1ul << XFEATURE_XTILEDATA_))) {
        snprintf(g_kernel, sizeof g_kernel, "sgemm on bf16-rounded operands (the kernel refused AMX: %s)",
                 strerror(errno));
        return;
    }
    g_amx = 1;
    snprintf(g_kernel, sizeof g_kernel, "AMX bf16 tiles (_tile_dpbf16ps, fp32 accumulation)");
#else
    snprintf(g_kernel, sizeof g_kernel, "sgemm on bf16-rounded operands (not an x86-64 build)");
#endif
}

int ds_gemm_bf16_amx(void) {
    pthread_once(&g_once, choose_kernel);
    return g_amx && !g_off;
}

int ds_gemm_bf16_use_amx(int on) {
    const int was = ds_gemm_bf16_amx();
    g_off = !on;
    return was;
}

const char *ds_gemm_bf16_kernel(void) {
    pthread_once(&g_once, choose_kernel);
    return g_kernel;
}

/* ---- shared pieces ----------------------------------------------------------------------------------- */

/* A grow-only buffer of the calling thread (no allocation once the largest product was seen). */
typedef struct {
    void *p;
    size_t cap;
} scratch_buf;

static void *grow(scratch_buf *s, size_t bytes) {
    if (bytes <= s->cap) return s->p;
    const size_t want = (bytes + bytes / 4 + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, want)) return NULL;
    free(s->p);
    s->p = p, s->cap = want;
    return p;
}

/* One product of a call: C = alpha op(A) op(B) + beta C, with its place in the packs and the block list. */
typedef struct {
    int ta, tb, M, N, K;
    const void *A, *B;
    void *C;
    int lda, ldb, ldc;
    int mt, nt, kt;     /* 16-row tiles of op(A) (even), 16-column tiles of op(B) (even), 32-wide K tiles */
    int nbc;            /* 32-column blocks per N chunk: the blocks run chunk by chunk, row blocks inside */
    size_t a_at, b_at;  /* first tile of this product in the A and B packs */
    size_t blk0;        /* first 32 x 32 block of C in the call's block list */
    uint16_t *bpk;      /* op(B)'s tiles: the call's scratch or a cached weight pack */
    int pack_b;         /* 1: the run packs op(B) into bpk (0: a cached pack, read as is) */
    const uint16_t *check; /* DS_BF16_PACK=check: the cached pack that bpk's fresh one must equal */
} prob;

typedef struct {
    float alpha, beta;
    ds_dtype at, bt, ct;
    int round_c; /* fp32 C rounded to the bf16 grid */
} call_args;

/* ---- cached weight packs ------------------------------------------------------------------------------ */

#define TILE_ELEMS 512 /* 16 rows x 32 bf16 = 1 KiB */

typedef enum { WPACK_OFF = 0, WPACK_ON = 1, WPACK_CHECK = 2 } pack_mode;

typedef struct {
    const float *base;
    size_t n;
} wrange;

/* One weight operand's packed op(B), keyed by what determines the pack: the pointer, the layout and shape. */
typedef struct {
    const void *B; /* NULL: an empty slot */
    int tb, N, K, ldb;
    uint64_t gen;  /* the generation of its last use */
    int filled;    /* tiles hold the pack of generation gen */
    int reused;    /* the pack was read again in generation gen */
    uint16_t *tiles; /* NULL: no pack kept */
    size_t bytes;
} wpack;

static struct {
    pthread_mutex_t mu;
    int mode; /* -1: not read from DS_BF16_PACK yet */
    wrange *r;
    int nr, cap_r;
    wpack *e;
    size_t cap, n; /* open addressing (linear probing), at most half full */
    uint64_t gen;  /* bumped by every params_changed: a pack from an older generation is rebuilt */
    ds_gemm_bf16_pack_stats st;
} g_wp = {.mu = PTHREAD_MUTEX_INITIALIZER, .mode = -1, .gen = 1};

static pack_mode wpack_mode(void) {
    if (g_wp.mode < 0) {
        const char *v = getenv("DS_BF16_PACK");
        g_wp.mode = v && !strcmp(v, "0") ? WPACK_OFF : v && !strcmp(v, "check") ? WPACK_CHECK : WPACK_ON;
    }
    return (pack_mode)g_wp.mode;
}

int ds_gemm_bf16_pack_mode(int mode) {
    pthread_mutex_lock(&g_wp.mu);
    const int was = wpack_mode();
    if (mode >= 0) g_wp.mode = mode > 2 ? 2 : mode;
    pthread_mutex_unlock(&g_wp.mu);
    return was;
}

void ds_gemm_bf16_pack_stats_get(ds_gemm_bf16_pack_stats *out) {
    pthread_mutex_lock(&g_wp.mu);
    *out = g_wp.st;
    out->limit = 0;
    for (int i = 0; i < g_wp.nr; i++) out->limit += g_wp.r[i].n * sizeof(float) / 4 * 5;
    pthread_mutex_unlock(&g_wp.mu);
}

static size_t wpack_slot(const void *B, int tb, size_t cap) {
    const uint64_t h = ((uint64_t)(uintptr_t)B >> 2 ^ (uint64_t)tb) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}

static int wpack_insert(wpack *tab, size_t cap, const wpack *w) {
    size_t i = wpack_slot(w->B, w->tb, cap);
    while (tab[i].B) i = (i + 1) & (cap - 1);
    tab[i] = *w;
    return (int)i;
}

/* The table rebuilt at capacity cap, dropping (and freeing) the packs of weights inside [lo, hi). */
static int wpack_rehash(size_t cap, const char *lo, const char *hi) {
    wpack *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    size_t n = 0;
    for (size_t i = 0; i < g_wp.cap; i++) {
        wpack *w = &g_wp.e[i];
        if (!w->B) continue;
        if ((const char *)w->B >= lo && (const char *)w->B < hi) {
            if (w->tiles) free(w->tiles), g_wp.st.bytes -= w->bytes;
            continue;
        }
        wpack_insert(t, cap, w), n++;
    }
    free(g_wp.e);
    g_wp.e = t, g_wp.cap = cap, g_wp.n = n;
    return 0;
}

void ds_gemm_bf16_params_changed(const float *base, size_t n) {
    if (!base || !n) return;
    pthread_mutex_lock(&g_wp.mu);
    g_wp.gen++; /* every pack is stale now: rebuilt on its next use (the writes that announce are whole steps) */
    int inside = 0;
    for (int i = 0; i < g_wp.nr && !inside; i++)
        inside = base >= g_wp.r[i].base && base + n <= g_wp.r[i].base + g_wp.r[i].n;
    if (!inside) {
        if (g_wp.nr == g_wp.cap_r) {
            const int cap = g_wp.cap_r ? 2 * g_wp.cap_r : 4;
            wrange *r = realloc(g_wp.r, (size_t)cap * sizeof *r);
            if (r) g_wp.r = r, g_wp.cap_r = cap;
        }
        if (g_wp.nr < g_wp.cap_r) g_wp.r[g_wp.nr++] = (wrange){base, n}; /* else: never cached, still right */
    }
    pthread_mutex_unlock(&g_wp.mu);
}

void ds_gemm_bf16_params_freed(const void *p) {
    if (!p) return;
    pthread_mutex_lock(&g_wp.mu);
    for (int i = 0; i < g_wp.nr; i++) {
        if ((const void *)g_wp.r[i].base != p) continue;
        const wrange r = g_wp.r[i];
        g_wp.r[i--] = g_wp.r[--g_wp.nr];
        /* the memory may come back as anything (activations): no pack of it may survive */
        if (g_wp.cap && wpack_rehash(g_wp.cap, (const char *)r.base, (const char *)(r.base + r.n))) {
            for (size_t k = 0; k < g_wp.cap; k++) /* no memory for a new table: drop every pack */
                if (g_wp.e[k].B) free(g_wp.e[k].tiles), g_wp.e[k].B = NULL;
            g_wp.n = 0, g_wp.st.bytes = 0;
        }
    }
    pthread_mutex_unlock(&g_wp.mu);
}

/* op(B) of p as a cached weight pack, under g_wp.mu: when B lies inside an announced parameter buffer and is
 * read more than once per generation, p->bpk is its pack, already filled (pack_b = 0) or to be filled by this
 * call (pack_b = 1); in check mode a filled pack goes to p->check and the call packs afresh into its scratch.
 * Nothing set: B is packed per call (not a weight, its first use in this generation, a weight read only once
 * per generation, the memory bound reached, or out of memory).
 * Only weights read twice or more between two announcements keep a pack (micro-batches, recomputation): a
 * step of one micro-batch reads each weight once per layout, and a pack of it would cost memory and save
 * nothing. So an entry first only marks the use; the second use in the same generation fills a pack, and a
 * pack that was reused in its generation is refilled at its first use in the next (one pack per step). */
static void wpack_find(prob *p, pack_mode mode) {
    const float *B = p->B;
    const size_t span = p->tb ? (size_t)(p->N - 1) * p->ldb + p->K : (size_t)(p->K - 1) * p->ldb + p->N;
    size_t limit = 0;
    int in = 0;
    for (int i = 0; i < g_wp.nr; i++) {
        in |= B >= g_wp.r[i].base && B + span <= g_wp.r[i].base + g_wp.r[i].n;
        limit += g_wp.r[i].n * sizeof(float) / 4 * 5; /* both layouts at 2 bytes: the fp32 size, + 1/4 padding */
    }
    if (!in) return;
    wpack *w = NULL;
    for (size_t i = g_wp.cap ? wpack_slot(B, p->tb, g_wp.cap) : 0; g_wp.cap && g_wp.e[i].B; i = (i + 1) & (g_wp.cap - 1))
        if (g_wp.e[i].B == B && g_wp.e[i].tb == p->tb && g_wp.e[i].N == p->N && g_wp.e[i].K == p->K &&
            g_wp.e[i].ldb == p->ldb) {
            w = &g_wp.e[i];
            break;
        }
    if (!w) { /* the first use: marked only */
        if (2 * (g_wp.n + 1) > g_wp.cap && wpack_rehash(g_wp.cap ? 2 * g_wp.cap : 256, NULL, NULL)) return;
        const wpack nw = {.B = B, .tb = p->tb, .N = p->N, .K = p->K, .ldb = p->ldb, .gen = g_wp.gen};
        wpack_insert(g_wp.e, g_wp.cap, &nw);
        g_wp.n++;
        return;
    }
    if (w->gen == g_wp.gen && w->filled) {
        g_wp.st.reused++, w->reused = 1;
        if (mode == WPACK_CHECK) p->check = w->tiles;
        else p->bpk = w->tiles, p->pack_b = 0;
        return;
    }
    if (w->gen != g_wp.gen && !w->reused) { /* read once in its last generation: no pack kept */
        if (w->tiles) free(w->tiles), g_wp.st.bytes -= w->bytes;
        w->tiles = NULL, w->bytes = 0, w->filled = 0, w->gen = g_wp.gen;
        return;
    }
    /* the second use in this generation, or the first after a generation that reused it: fill the pack */
    if (!w->tiles) {
        const size_t bytes = (size_t)p->nt * p->kt * TILE_ELEMS * sizeof(uint16_t);
        if (g_wp.st.bytes + bytes > limit) {
            g_wp.st.over++;
            return;
        }
        void *t = NULL;
        if (posix_memalign(&t, 64, bytes)) return;
        w->tiles = t, w->bytes = bytes, g_wp.st.bytes += bytes;
    }
    w->reused = w->gen == g_wp.gen; /* a second use now counts as a reuse; a refill waits for its own */
    w->gen = g_wp.gen, w->filled = 1, g_wp.st.built++;
    p->bpk = w->tiles, p->pack_b = 1;
}

/* The packs p was to fill were not filled (the call failed before running): stale again. */
static void wpack_unfill(const prob *ps, int np) {
    pthread_mutex_lock(&g_wp.mu);
    for (int q = 0; q < np; q++)
        for (size_t i = 0; ps[q].pack_b && ps[q].b_at == SIZE_MAX && i < g_wp.cap; i++)
            if (g_wp.e[i].tiles == ps[q].bpk) g_wp.e[i].filled = 0, g_wp.e[i].reused = 1; /* refilled next use */
    pthread_mutex_unlock(&g_wp.mu);
}

/* ---- AMX ----------------------------------------------------------------------------------------------- */
#if DS_AMX_BUILD

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

static inline __mmask16 first(int n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* fp32 bits rounded to bf16 to nearest even, NaN kept quiet (ds_f32_to_bf16's rule), as dwords holding the
 * bf16 bits in the high half and zeros in the low half. */
AMX_TARGET static inline __m512i rne_bits(__m512i u) {
    const __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

/* Up to 16 values of type t at p (n of them; the rest 0) as rne_bits dwords (bf16 values widened). */
AMX_TARGET static inline __m512i ld16(const void *p, ds_dtype t, int n) {
    const __mmask16 m = first(n);
    if (!m) return _mm512_setzero_si512();
    if (t == DS_BF16) return _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16);
    return rne_bits(_mm512_maskz_loadu_epi32(m, p));
}

/* 32 consecutive values (n valid) as 32 bf16 in order: the high halves of ld16's two vectors. */
AMX_TARGET static inline __m512i ld32(const void *p, ds_dtype t, int n) {
    const size_t es = t == DS_BF16 ? 2 : 4;
    const __m512i x0 = ld16(p, t, n), x1 = n > 16 ? ld16((const char *)p + 16 * es, t, n - 16) : _mm512_setzero_si512();
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25,
                                         23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(x0, odd, x1);
}

/* Two rows' 16 values interleaved into VNNI pairs: dword i = (r0[i], r1[i]). */
AMX_TARGET static inline __m512i pair16(const void *r0, const void *r1, ds_dtype t, int n) {
    const __m512i a = r0 ? ld16(r0, t, n) : _mm512_setzero_si512(), b = r1 ? ld16(r1, t, n) : _mm512_setzero_si512();
    return _mm512_or_si512(_mm512_srli_epi32(a, 16), b);
}

/* In-register transpose of 16 x 16 dwords (v[i] becomes column i). */
AMX_TARGET static void transpose16(__m512i v[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i+q]: column 4L+q of rows 4i..4i+3, in lane L */
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int q = 0; q < 4; q++) {
        const __m512i e0 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0x88), e1 = _mm512_shuffle_i32x4(u[q], u[4 + q], 0xdd);
        const __m512i f0 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0x88),
                      f1 = _mm512_shuffle_i32x4(u[8 + q], u[12 + q], 0xdd);
        v[q] = _mm512_shuffle_i32x4(e0, f0, 0x88);
        v[8 + q] = _mm512_shuffle_i32x4(e0, f0, 0xdd);
        v[4 + q] = _mm512_shuffle_i32x4(e1, f1, 0x88);
        v[12 + q] = _mm512_shuffle_i32x4(e1, f1, 0xdd);
    }
}

static inline const void *at_elem(const void *base, ds_dtype t, size_t i) {
    return (const char *)base + i * (t == DS_BF16 ? 2 : 4);
}

/* Tile (it, kk) of op(A): rows 16 it.., K columns 32 kk..; zero outside M x K. */
AMX_TARGET static void pack_a(uint16_t *dst, const prob *p, ds_dtype t, int it, int kk) {
    const int m0 = it * 16, k0 = kk * 32;
    if (!p->ta) {
        for (int r = 0; r < 16; r++) {
            const int m = m0 + r;
            const __m512i v = m < p->M ? ld32(at_elem(p->A, t, (size_t)m * p->lda + k0), t, p->K - k0)
                                       : _mm512_setzero_si512();
            _mm512_store_si512(dst + r * 32, v);
        }
        return;
    }
    __m512i v[16]; /* A stored [K, M]: pairs of K rows, then rows of the tile are the columns */
    for (int j = 0; j < 16; j++) {
        const int k = k0 + 2 * j;
        const void *r0 = k < p->K && m0 < p->M ? at_elem(p->A, t, (size_t)k * p->lda + m0) : NULL;
        const void *r1 = k + 1 < p->K && m0 < p->M ? at_elem(p->A, t, (size_t)(k + 1) * p->lda + m0) : NULL;
        v[j] = pair16(r0, r1, t, p->M - m0);
    }
    transpose16(v);
    for (int r = 0; r < 16; r++) _mm512_store_si512(dst + r * 32, v[r]);
}

/* Tile (jt, kk) of op(B) in VNNI form: row r holds (op(B)[k0+2r][n], op(B)[k0+2r+1][n]) for the 16 n. */
AMX_TARGET static void pack_b(uint16_t *dst, const prob *p, ds_dtype t, int jt, int kk) {
    const int n0 = jt * 16, k0 = kk * 32;
    if (!p->tb) {
        for (int r = 0; r < 16; r++) {
            const int k = k0 + 2 * r;
            const void *r0 = k < p->K && n0 < p->N ? at_elem(p->B, t, (size_t)k * p->ldb + n0) : NULL;
            const void *r1 = k + 1 < p->K && n0 < p->N ? at_elem(p->B, t, (size_t)(k + 1) * p->ldb + n0) : NULL;
            _mm512_store_si512(dst + r * 32, pair16(r0, r1, t, p->N - n0));
        }
        return;
    }
    __m512i v[16]; /* B stored [N, K]: a row's 32 K values are 16 pairs; the tile is their transpose */
    for (int n = 0; n < 16; n++)
        v[n] = n0 + n < p->N ? ld32(at_elem(p->B, t, (size_t)(n0 + n) * p->ldb + k0), t, p->K - k0)
                             : _mm512_setzero_si512();
    transpose16(v);
    for (int r = 0; r < 16; r++) _mm512_store_si512(dst + r * 32, v[r]);
}


typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* One 32 x 32 block of C (row block bi, column block bj of product p) into acc [32 x 32] fp32: tiles 0-3 the
 * four 16 x 16 quarters, 4-5 two A tiles, 6-7 two B tiles; each A and B tile feeds two products. */
AMX_TARGET static void amx_block(const prob *p, const uint16_t *ap, int bi, int bj, float *acc) {
    const size_t kt = (size_t)p->kt;
    const uint16_t *a0 = ap + (p->a_at + (size_t)(2 * bi) * kt) * TILE_ELEMS, *a1 = a0 + kt * TILE_ELEMS;
    const uint16_t *b0 = p->bpk + (size_t)(2 * bj) * kt * TILE_ELEMS, *b1 = b0 + kt * TILE_ELEMS;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (size_t kk = 0; kk < kt; kk++) {
        _tile_loadd(4, a0 + kk * TILE_ELEMS, 64);
        _tile_loadd(6, b0 + kk * TILE_ELEMS, 64);
        _tile_loadd(5, a1 + kk * TILE_ELEMS, 64);
        _tile_loadd(7, b1 + kk * TILE_ELEMS, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 16 * 32, 128);
    _tile_stored(3, acc + 16 * 32 + 16, 128);
}

/* C = alpha acc + beta C over the block's part inside M x N (beta = 0: C not read), stored as c->ct. */
AMX_TARGET static void amx_store(const prob *p, const call_args *c, const float *acc, int bi, int bj) {
    const int i0 = bi * 32, j0 = bj * 32, rows = p->M - i0 < 32 ? p->M - i0 : 32, cols = p->N - j0;
    const __m512 al = _mm512_set1_ps(c->alpha), be = _mm512_set1_ps(c->beta);
    for (int r = 0; r < rows; r++)
        for (int h = 0; h < 2 && cols > 16 * h; h++) {
            const __mmask16 m = first(cols - 16 * h);
            const size_t at = (size_t)(i0 + r) * p->ldc + j0 + 16 * h;
            __m512 v = _mm512_mul_ps(_mm512_load_ps(acc + r * 32 + 16 * h), al);
            if (c->ct == DS_BF16) {
                uint16_t *d = (uint16_t *)p->C + at;
                if (c->beta != 0.0f) {
                    const __m512i old = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, d)), 16);
                    v = _mm512_fmadd_ps(_mm512_castsi512_ps(old), be, v);
                }
                _mm512_mask_cvtepi32_storeu_epi16(d, m, _mm512_srli_epi32(rne_bits(_mm512_castps_si512(v)), 16));
            } else {
                float *d = (float *)p->C + at;
                if (c->beta != 0.0f) v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, d), be, v);
                if (c->round_c) v = _mm512_castsi512_ps(rne_bits(_mm512_castps_si512(v)));
                _mm512_mask_storeu_ps(d, m, v);
            }
        }
}

static const prob *find_prob(const prob *ps, int np, size_t b) {
    int lo = 0, hi = np - 1; /* the last product whose first block is <= b */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (ps[mid].blk0 <= b) lo = mid;
        else hi = mid - 1;
    }
    return &ps[lo];
}

/* Every product of the list in one parallel region: the packs (all threads), a barrier, then the blocks. */
AMX_TARGET static void amx_run(const prob *ps, int np, const call_args *c, uint16_t *ap, size_t nblk, int threads) {
#pragma omp parallel num_threads(threads)
    {
        for (int q = 0; q < np; q++) {
            const prob *p = &ps[q];
            /* tiles in the order of the operand's memory: a K-major operand (A with ta, B without tb) is read a
             * band of 32 rows at a time across all its columns, not down 64-byte columns (a page-crossing stride
             * per row that the prefetchers do not follow: 2-3x slower packs) */
#pragma omp for schedule(static) nowait
            for (int t = 0; t < p->mt * p->kt; t++) {
                const int it = p->ta ? t % p->mt : t / p->kt, kk = p->ta ? t / p->mt : t % p->kt;
                pack_a(ap + (p->a_at + (size_t)it * p->kt + kk) * TILE_ELEMS, p, c->at, it, kk);
            }
            if (!p->pack_b) continue; /* a cached weight pack */
#pragma omp for schedule(static) nowait
            for (int t = 0; t < p->nt * p->kt; t++) {
                const int jt = p->tb ? t / p->kt : t % p->nt, kk = p->tb ? t % p->kt : t / p->nt;
                pack_b(p->bpk + ((size_t)jt * p->kt + kk) * TILE_ELEMS, p, c->bt, jt, kk);
            }
        }
#pragma omp barrier
        tile_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.palette = 1;
        for (int i = 0; i < 8; i++) cfg.colsb[i] = 64, cfg.rows[i] = 16;
        _tile_loadconfig(&cfg);
        float acc[32 * 32] __attribute__((aligned(64)));
        const size_t chunk = nblk / (4 * (size_t)threads) > 0 ? nblk / (4 * (size_t)threads) : 1;
#pragma omp for schedule(dynamic, chunk)
        for (size_t b = 0; b < nblk; b++) {
            const prob *p = find_prob(ps, np, b);
            const int nb = p->nt / 2, mb = p->mt / 2, local = (int)(b - p->blk0);
            const int chunk0 = local / (mb * p->nbc) * p->nbc, in = local - chunk0 * mb;
            const int width = nb - chunk0 < p->nbc ? nb - chunk0 : p->nbc, bi = in / width, bj = chunk0 + in % width;
            amx_block(p, ap, bi, bj, acc);
            amx_store(p, c, acc, bi, bj);
        }
        (void)chunk; /* unused without OpenMP */
        _tile_release(); /* a thread without tile state saves/restores less on context switches */
    }
}

static _Thread_local scratch_buf g_pack, g_probs;

static size_t b_tiles_of(const prob *p) { return (size_t)p->nt * p->kt; }

/* Lay out the products' packs and blocks and run them; -1 when the packs cannot be allocated. */
static int amx_call(prob *ps, int np, const call_args *c) {
    size_t a_tiles = 0, b_tiles = 0, nblk = 0;
    double flops = 0;
    const pack_mode mode = c->bt == DS_F32 ? wpack_mode() : WPACK_OFF;
    if (mode != WPACK_OFF) pthread_mutex_lock(&g_wp.mu);
    for (int q = 0; q < np; q++) {
        prob *p = &ps[q];
        p->mt = (p->M + 31) / 32 * 2, p->nt = (p->N + 31) / 32 * 2, p->kt = (p->K + 31) / 32;
        /* an N chunk's packed B (32 columns x K per block) kept to about 1 MiB, half of a core's L2, so that it
         * stays there while every row block passes over it (a B larger than L2 otherwise streams from L3
         * once per row block) */
        p->nbc = (int)((1 << 20) / ((size_t)p->kt * 2 * TILE_ELEMS * sizeof(uint16_t)));
        if (p->nbc < 1) p->nbc = 1;
        p->a_at = a_tiles, p->b_at = SIZE_MAX, p->blk0 = nblk;
        p->bpk = NULL, p->pack_b = 1, p->check = NULL;
        if (mode != WPACK_OFF) wpack_find(p, mode); /* a weight: its cached pack, or a new one to fill */
        if (!p->bpk) p->b_at = b_tiles, b_tiles += b_tiles_of(p);
        a_tiles += (size_t)p->mt * p->kt, nblk += (size_t)(p->mt / 2) * (p->nt / 2);
        flops += 2.0 * p->M * p->N * p->K;
    }
    if (mode != WPACK_OFF) pthread_mutex_unlock(&g_wp.mu);
    if (!np) return 0;
    uint16_t *ap = grow(&g_pack, (a_tiles + b_tiles) * TILE_ELEMS * sizeof(uint16_t));
    if (!ap) {
        if (mode != WPACK_OFF) wpack_unfill(ps, np);
        return -1;
    }
    for (int q = 0; q < np; q++)
        if (ps[q].b_at != SIZE_MAX) ps[q].bpk = ap + (a_tiles + ps[q].b_at) * TILE_ELEMS;
    int threads = omp_get_max_threads();
    if (flops < (double)(1 << 22)) threads = 1; /* a parallel region costs more than such a product */
    if ((size_t)threads > nblk) threads = (int)nblk;
    amx_run(ps, np, c, ap, nblk, threads);
    for (int q = 0; q < np; q++) /* check mode: the products ran on fresh packs; the cached ones must equal them */
        if (ps[q].check && memcmp(ps[q].check, ps[q].bpk, b_tiles_of(&ps[q]) * TILE_ELEMS * sizeof(uint16_t))) {
            pthread_mutex_lock(&g_wp.mu);
            g_wp.st.stale++;
            pthread_mutex_unlock(&g_wp.mu);
        }
    return 0;
}
#else
static int amx_call(prob *ps, int np, const call_args *c) { return (void)wpack_find, (void)wpack_unfill, -1; }
static _Thread_local scratch_buf g_probs;
#endif

/* ---- the fallback: sgemm on operands rounded (or widened) to fp32 ------------------------------------------ */

static _Thread_local scratch_buf g_fb[3];

/* The span of a row-major operand (rows x cols at stride ld, type t) as fp32 values on the bf16 grid, same
 * stride, in scratch slot i (what lies between rows is converted too: harmless); NULL when out of memory. */
static const float *as_f32(int i, const void *x, ds_dtype t, int64_t rows, int64_t cols, int64_t ld) {
    if (rows <= 0 || cols <= 0) return x;
    const size_t n = (size_t)((rows - 1) * ld + cols);
    float *d = grow(&g_fb[i], n * sizeof(float));
    if (!d) return NULL;
    if (t == DS_BF16) {
        const uint16_t *s = x;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t k = 0; k < n; k++) d[k] = ds_bf16_to_f32(s[k]);
    } else {
        const float *s = x;
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t k = 0; k < n; k++) d[k] = ds_bf16_grid(s[k]);
    }
    return d;
}

void ds_bf16_round_rows(float *x, int64_t ld, int64_t rows, int64_t cols) {
    if (ld == cols && rows > 1) cols *= rows, rows = 1; /* contiguous: one flat pass, split across threads below */
    if (rows == 1 && cols > 65536) {
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < cols; j++) x[j] = ds_bf16_grid(x[j]);
        return;
    }
#pragma omp parallel for schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) x[r * ld + j] = ds_bf16_grid(x[r * ld + j]);
}

/* fp32 operands whose copy failed run unrounded (the numbers stay right to fp32; only the emulation is lost) */
static const float *or_raw(const float *r, const void *x, ds_dtype t) { return r || t != DS_F32 ? r : x; }

static int fallback_gemm(int ta, int tb, int M, int N, int K, const call_args *c, const void *A, int lda,
                         const void *B, int ldb, void *C, int ldc) {
    const float *a = or_raw(as_f32(0, A, c->at, ta ? K : M, ta ? M : K, lda), A, c->at);
    const float *b = or_raw(as_f32(1, B, c->bt, tb ? N : K, tb ? K : N, ldb), B, c->bt);
    if (!a || !b) return -1;
    if (c->ct == DS_F32) {
        ds_cpu_gemm(ta, tb, M, N, K, c->alpha, a, lda, b, ldb, c->beta, C, ldc);
        if (c->round_c) ds_bf16_round_rows(C, ldc, M, N);
        return 0;
    }
    float *t = grow(&g_fb[2], (size_t)M * N * sizeof(float));
    if (!t) return -1;
    uint16_t *ch = C;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N && c->beta != 0.0f; j++) t[(size_t)i * N + j] = ds_bf16_to_f32(ch[(size_t)i * ldc + j]);
    ds_cpu_gemm(ta, tb, M, N, K, c->alpha, a, lda, b, ldb, c->beta, t, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) ch[(size_t)i * ldc + j] = ds_f32_to_bf16(t[(size_t)i * N + j]);
    return 0;
}

/* ---- entry points ------------------------------------------------------------------------------------------ */

/* C = beta C over M x N (K = 0 or alpha = 0; beta = 0 clears NaN too), rounded as the product would be. */
static void scale_c(int M, int N, float beta, void *C, ds_dtype ct, int ldc, int round_c) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            if (ct == DS_BF16) {
                uint16_t *c = (uint16_t *)C + (size_t)i * ldc + j;
                *c = beta == 0.0f ? 0 : ds_f32_to_bf16(beta * ds_bf16_to_f32(*c));
            } else {
                float *c = (float *)C + (size_t)i * ldc + j;
                *c = beta == 0.0f ? 0.0f : beta * *c;
                if (round_c) *c = ds_bf16_grid(*c);
            }
        }
}

static int gemm_call(int ta, int tb, int M, int N, int K, const call_args *c, const void *A, int lda, const void *B,
                     int ldb, void *C, int ldc) {
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0 || c->alpha == 0.0f) {
        scale_c(M, N, c->beta, C, c->ct, ldc, c->round_c);
        return 0;
    }
    if (ds_gemm_bf16_amx()) {
        prob p = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .A = A, .B = B, .C = C, .lda = lda, .ldb = ldb, .ldc = ldc};
        if (!amx_call(&p, 1, c)) return 0;
    }
    return fallback_gemm(ta, tb, M, N, K, c, A, lda, B, ldb, C, ldc);
}

void ds_gemm_bf16(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                  float beta, float *C, int ldc, int round_c) {
    const call_args c = {.alpha = alpha, .beta = beta, .at = DS_F32, .bt = DS_F32, .ct = DS_F32, .round_c = round_c};
    gemm_call(ta, tb, M, N, K, &c, A, lda, B, ldb, C, ldc);
}

int ds_gemm_dt(int ta, int tb, int M, int N, int K, float alpha, const void *A, ds_dtype at, int lda, const void *B,
               ds_dtype bt, int ldb, float beta, void *C, ds_dtype ct, int ldc) {
    if ((at != DS_F32 && at != DS_BF16) || (bt != DS_F32 && bt != DS_BF16) || (ct != DS_F32 && ct != DS_BF16))
        return -1;
    const call_args c = {.alpha = alpha, .beta = beta, .at = at, .bt = bt, .ct = ct};
    return gemm_call(ta, tb, M, N, K, &c, A, lda, B, ldb, C, ldc);
}

void ds_gemm_bf16_rows(int ng, const int64_t *off, int tb, int N, int K, float alpha, const float *A, int lda,
                       const float *B, size_t strideB, int ldb, float beta, float *C, int ldc, int round_c) {
    if (ng <= 0 || N <= 0) return;
    const call_args c = {.alpha = alpha, .beta = beta, .at = DS_F32, .bt = DS_F32, .ct = DS_F32, .round_c = round_c};
    if (K <= 0 || alpha == 0.0f) {
        scale_c((int)(off[ng] - off[0]), N, beta, C + (size_t)off[0] * ldc, DS_F32, ldc, round_c);
        return;
    }
    prob *ps = ds_gemm_bf16_amx() ? grow(&g_probs, (size_t)ng * sizeof(prob)) : NULL;
    if (ps) {
        int np = 0;
        for (int g = 0; g < ng; g++)
            if (off[g + 1] > off[g])
                ps[np++] = (prob){.ta = 0, .tb = tb, .M = (int)(off[g + 1] - off[g]), .N = N, .K = K,
                                  .A = A + (size_t)off[g] * lda, .lda = lda, .B = B + (size_t)g * strideB, .ldb = ldb,
                                  .C = C + (size_t)off[g] * ldc, .ldc = ldc};
        if (!amx_call(ps, np, &c)) return;
    }
    const float *a = or_raw(as_f32(0, A, DS_F32, off[ng], K, lda), A, DS_F32);
    const int64_t bspan = (int64_t)((size_t)(ng - 1) * strideB + (size_t)((tb ? N : K) - 1) * ldb + (tb ? K : N));
    const float *b = or_raw(as_f32(1, B, DS_F32, 1, bspan, 0), B, DS_F32);
    ds_cpu_gemm_rows(ng, off, tb, N, K, alpha, a, lda, b, strideB, ldb, beta, C, ldc);
    if (round_c) ds_bf16_round_rows(C + (size_t)off[0] * ldc, ldc, off[ng] - off[0], N);
}

void ds_gemm_bf16_wgrad(int ng, const int64_t *off, int M, int N, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, size_t strideC, int ldc) {
    if (ng <= 0 || M <= 0 || N <= 0) return;
    const call_args c = {.alpha = alpha, .beta = beta, .at = DS_F32, .bt = DS_F32, .ct = DS_F32};
    prob *ps = ds_gemm_bf16_amx() ? grow(&g_probs, (size_t)ng * sizeof(prob)) : NULL;
    if (ps) {
        int np = 0;
        for (int g = 0; g < ng; g++)
            if (off[g + 1] > off[g] && alpha != 0.0f)
                ps[np++] = (prob){.ta = 1, .tb = 0, .M = M, .N = N, .K = (int)(off[g + 1] - off[g]),
                                  .A = A + (size_t)off[g] * lda, .lda = lda, .B = B + (size_t)off[g] * ldb, .ldb = ldb,
                                  .C = C + (size_t)g * strideC, .ldc = ldc};
        if (!amx_call(ps, np, &c)) {
            for (int g = 0; g < ng && beta != 1.0f; g++) /* an empty group leaves beta C_g */
                if (off[g + 1] <= off[g] || alpha == 0.0f) scale_c(M, N, beta, C + (size_t)g * strideC, DS_F32, ldc, 0);
            return;
        }
    }
    const float *a = or_raw(as_f32(0, A, DS_F32, off[ng], M, lda), A, DS_F32);
    const float *b = or_raw(as_f32(1, B, DS_F32, off[ng], N, ldb), B, DS_F32);
    ds_cpu_gemm_wgrad(ng, off, M, N, alpha, a, lda, b, ldb, beta, C, strideC, ldc);
}
