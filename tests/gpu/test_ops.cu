/* GPU test: every op of the CUDA backend (ds_ops_cuda) against the CPU backend (ds_ops_cpu) on the same
 * fresh random inputs. Written outputs are poisoned (NaN) on the GPU first; accumulated outputs start from
 * the same random values on both sides. Thresholds by precision: fp32 ops to ~1e-5 relative (1e-6 for
 * plain arithmetic), GEMMs by mode (f32 1e-5, TF32 3e-3, bf16 1e-2). Integer outputs (expert choices,
 * bucket offsets and orders) must match exactly, and repeated runs must give the same bits. */
#include "gpu_test.h"

#include <vector>

extern "C" {
#include "ops/ops.h"
#include "ops_cuda.h"
}

static const ds_ops *C, *G;

/* a host array and its device copy */
struct Arr {
    std::vector<float> h;
    float *d = nullptr;
    explicit Arr(size_t n = 0) : h(n) {}
    Arr(const Arr &o) : h(o.h) {} /* a copy has its own (not yet allocated) device buffer */
    Arr &operator=(const Arr &) = delete;
    ~Arr() { if (d) G->free(d); }
    size_t n() const { return h.size(); }
    Arr &rand(uint64_t stream, float std = 1.f) {
        ds_randn_fill(h.data(), h.size(), gpu_test_seed, stream, std);
        return *this;
    }
    float *dev() { /* upload (allocating once) */
        if (!d) d = (float *)G->alloc(h.size() * 4 + 4);
        G->copy(d, h.data(), h.size() * 4, DS_COPY_H2D);
        return d;
    }
    float *poisoned() {
        if (!d) d = (float *)G->alloc(h.size() * 4 + 4);
        ds_cuda_poison(d, h.size() * 4);
        return d;
    }
    std::vector<float> down() const {
        std::vector<float> o(h.size());
        G->sync();
        G->copy(o.data(), d, h.size() * 4, DS_COPY_D2H);
        return o;
    }
};

struct IArr {
    std::vector<int32_t> h;
    int32_t *d = nullptr;
    explicit IArr(size_t n = 0) : h(n) {}
    IArr(const IArr &o) : h(o.h) {}
    IArr &operator=(const IArr &) = delete;
    ~IArr() { if (d) G->free(d); }
    int32_t *dev() {
        if (!d) d = (int32_t *)G->alloc(h.size() * 4 + 4);
        G->copy(d, h.data(), h.size() * 4, DS_COPY_H2D);
        return d;
    }
    int32_t *poisoned() {
        if (!d) d = (int32_t *)G->alloc(h.size() * 4 + 4);
        ds_cuda_poison(d, h.size() * 4);
        return d;
    }
    std::vector<int32_t> down() const {
        std::vector<int32_t> o(h.size());
        G->sync();
        G->copy(o.data(), d, h.size() * 4, DS_COPY_D2H);
        return o;
    }
};

/* ||gpu - cpu|| / ||cpu|| with non-finite GPU values counted */
static void expect_close(const char *what, const std::vector<float> &gpu, const std::vector<float> &cpu, double tol) {
    std::vector<double> ref(cpu.begin(), cpu.end());
    err_stats e = compare(gpu.data(), DS_F32, ref.data(), ref.size());
    int status = ds_ops_cuda_status();
    CHECK(status == 0 && e.nonfinite == 0 && e.rel <= tol, "%s: rel err %.3g <= %.3g (%zu non-finite, max abs %.3g)%s%s",
          what, e.rel, tol, e.nonfinite, e.maxabs, status ? ": " : "", status ? ds_errmsg() : "");
}

static void expect_same(const char *what, const std::vector<int32_t> &gpu, const std::vector<int32_t> &cpu) {
    size_t bad = 0;
    for (size_t i = 0; i < cpu.size(); i++) bad += gpu[i] != cpu[i];
    CHECK(bad == 0 && ds_ops_cuda_status() == 0, "%s: identical (%zu of %zu differ)", what, bad, cpu.size());
}

/* ---- GEMM ------------------------------------------------------------------------------------------------ */

TEST(gemm_modes_transposes_beta) {
    const int M = 67, N = 45, K = 80;
    const ds_cuda_gemm_mode modes[] = {DS_CUDA_GEMM_F32, DS_CUDA_GEMM_TF32, DS_CUDA_GEMM_BF16};
    const double tols[] = {1e-5, 3e-3, 1e-2};
    const char *names[] = {"f32", "tf32", "bf16"};
    for (int mi = 0; mi < 3; mi++) {
        ds_ops_cuda_set_gemm(modes[mi]);
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                Arr A((size_t)(ta ? K : M) * lda), B((size_t)(tb ? N : K) * ldb), Cc((size_t)M * ldc);
                A.rand(1); B.rand(2); Cc.rand(3);
                float beta = ta ? 0.5f : 0.f;
                if (beta == 0.f) Cc.h[5] = NAN; /* beta 0 must ignore C, NaN included */
                Arr Cg = Cc;
                Cg.dev();
                G->gemm(ta, tb, M, N, K, 1.5f, A.dev(), lda, B.dev(), ldb, beta, Cg.d, ldc);
                C->gemm(ta, tb, M, N, K, 1.5f, A.h.data(), lda, B.h.data(), ldb, beta, Cc.h.data(), ldc);
                char what[96];
                snprintf(what, sizeof what, "gemm %s ta %d tb %d beta %.1f (strided)", names[mi], ta, tb, beta);
                expect_close(what, Cg.down(), Cc.h, tols[mi]);
            }
    }
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
    /* K = 0: C = beta C */
    Arr Cc((size_t)8 * 8);
    Cc.rand(4);
    Arr Cg = Cc;
    Cg.dev();
    G->gemm(0, 0, 8, 8, 0, 1.f, Cg.d, 8, Cg.d, 8, 0.25f, Cg.d, 8);
    C->gemm(0, 0, 8, 8, 0, 1.f, Cc.h.data(), 8, Cc.h.data(), 8, 0.25f, Cc.h.data(), 8);
    expect_close("gemm K = 0 scales C by beta", Cg.down(), Cc.h, 1e-7);
}

TEST(grouped_gemms) {
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_F32);
    const int ng = 5, N = 48, K = 40;
    const int64_t off[ng + 1] = {0, 7, 7, 30, 31, 50}; /* one empty group */
    for (int tb = 0; tb < 2; tb++) {
        Arr A((size_t)50 * K), B((size_t)ng * N * K), Cc((size_t)50 * N);
        A.rand(10); B.rand(11); Cc.rand(12);
        Arr Cg = Cc;
        Cg.dev();
        G->gemm_rows(ng, off, tb, N, K, 1.f, A.dev(), K, B.dev(), (size_t)N * K, tb ? K : N, 1.f, Cg.d, N);
        C->gemm_rows(ng, off, tb, N, K, 1.f, A.h.data(), K, B.h.data(), (size_t)N * K, tb ? K : N, 1.f, Cc.h.data(), N);
        expect_close(tb ? "gemm_rows tb=1 (accumulate)" : "gemm_rows tb=0 (accumulate)", Cg.down(), Cc.h, 1e-5);
    }
    const int Mw = 24, Nw = 36;
    Arr A((size_t)50 * Mw), B((size_t)50 * Nw), Cc((size_t)ng * Mw * Nw);
    A.rand(13); B.rand(14); Cc.rand(15);
    Arr Cg = Cc;
    Cg.dev();
    G->gemm_wgrad(ng, off, Mw, Nw, 0.5f, A.dev(), Mw, B.dev(), Nw, 1.f, Cg.d, (size_t)Mw * Nw, Nw);
    C->gemm_wgrad(ng, off, Mw, Nw, 0.5f, A.h.data(), Mw, B.h.data(), Nw, 1.f, Cc.h.data(), (size_t)Mw * Nw, Nw);
    expect_close("gemm_wgrad (empty group keeps C)", Cg.down(), Cc.h, 1e-5);
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
}

/* A parameter buffer announced through params_changed: bf16 GEMMs read its bf16 copy (the numbers of the
 * per-call conversion), copies into the buffer make the copy stale, a kernel write is seen only once it is
 * announced (which is what proves the copy is used), and grouped expert GEMMs read it too. */
TEST(weight_shadows) {
    ds_ops_cuda_set_gemm(DS_CUDA_GEMM_BF16);
    const int M = 33, N = 40, K = 64, E = 3;
    const size_t nw = (size_t)N * K, np = nw * (1 + E); /* [W | E experts], each [N, K] */
    Arr P(np), X((size_t)M * K), Y((size_t)M * N), Yc((size_t)M * N);
    P.rand(20);
    X.rand(21);
    float *pd = P.dev(), *xd = X.dev();
    G->gemm(0, 1, M, N, K, 1.f, xd, K, pd, K, 0.f, Y.poisoned(), N); /* not announced: converted per call */
    std::vector<float> per_call = Y.down();
    G->params_changed(pd, np);
    G->gemm(0, 1, M, N, K, 1.f, xd, K, pd, K, 0.f, Y.poisoned(), N);
    expect_close("announced buffer: the bf16 copy gives the per-call conversion's product", Y.down(), per_call, 1e-6);
    P.rand(22);
    P.dev(); /* a copy into the buffer */
    G->gemm(0, 1, M, N, K, 1.f, xd, K, pd, K, 0.f, Y.poisoned(), N);
    C->gemm(0, 1, M, N, K, 1.f, X.h.data(), K, P.h.data(), K, 0.f, Yc.h.data(), N);
    std::vector<float> fresh = Y.down();
    expect_close("after a copy into the buffer the next GEMM reads the new weights", fresh, Yc.h, 1e-2);
    G->scale(pd, 2.f, np); /* a kernel write, not announced: the stale copy is still read */
    G->gemm(0, 1, M, N, K, 1.f, xd, K, pd, K, 0.f, Y.poisoned(), N);
    expect_close("an unannounced kernel write is not seen (the copy is what the GEMM reads)", Y.down(), fresh, 1e-6);
    G->params_changed(pd, np);
    G->gemm(0, 1, M, N, K, 1.f, xd, K, pd, K, 0.f, Y.poisoned(), N);
    for (auto &v : Yc.h) v *= 2.f;
    expect_close("announced: the doubled weights are read", Y.down(), Yc.h, 1e-2);
    const int64_t off[E + 1] = {0, 10, 10, M}; /* expert 1 empty */
    Arr Yr((size_t)M * N), Yrc((size_t)M * N);
    for (auto &v : P.h) v *= 2.f;
    G->gemm_rows(E, off, 1, N, K, 1.f, xd, K, pd + nw, nw, K, 0.f, Yr.poisoned(), N);
    C->gemm_rows(E, off, 1, N, K, 1.f, X.h.data(), K, P.h.data() + nw, nw, K, 0.f, Yrc.h.data(), N);
    expect_close("grouped expert GEMM reads the experts' bf16 copy", Yr.down(), Yrc.h, 1e-2);
}

/* ---- elementwise, norms, RoPE ----------------------------------------------------------------------------- */

TEST(elementwise) {
    const size_t n = 100003;
    Arr a(n), b(n), y(n);
    a.rand(20); b.rand(21); y.rand(22);
    Arr yg = y;
    G->add(yg.poisoned(), a.dev(), b.dev(), n);
    C->add(y.h.data(), a.h.data(), b.h.data(), n);
    expect_close("add", yg.down(), y.h, 1e-7);
    yg.h = y.h;
    yg.dev();
    G->axpy(yg.d, -0.75f, a.d, n);
    C->axpy(y.h.data(), -0.75f, a.h.data(), n);
    expect_close("axpy", yg.down(), y.h, 1e-6);
    G->scale(yg.d, 3.f, n);
    C->scale(y.h.data(), 3.f, n);
    expect_close("scale", yg.down(), y.h, 1e-6);
    Arr src((size_t)30 * 50), dst((size_t)30 * 40);
    src.rand(23); dst.rand(24);
    Arr dg = dst;
    dg.dev();
    G->copy2d(dg.d, 40, src.dev(), 50, 30, 33);
    C->copy2d(dst.h.data(), 40, src.h.data(), 50, 30, 33);
    expect_close("copy2d", dg.down(), dst.h, 0);
}

TEST(rmsnorm) {
    const int n = 77, d = 300, ld = 320;
    Arr x((size_t)n * ld), w(d), y((size_t)n * ld), rstd(n);
    x.rand(30); w.rand(31); y.rand(32);
    Arr yg = y, rg = rstd;
    yg.dev();
    G->rmsnorm_fwd(yg.d, ld, rg.poisoned(), x.dev(), ld, w.dev(), n, d, 1e-6f);
    C->rmsnorm_fwd(y.h.data(), ld, rstd.h.data(), x.h.data(), ld, w.h.data(), n, d, 1e-6f);
    expect_close("rmsnorm_fwd y (strided)", yg.down(), y.h, 2e-6);
    expect_close("rmsnorm_fwd rstd", rg.down(), rstd.h, 2e-6);
    Arr dy((size_t)n * ld), dx((size_t)n * ld), dw(d);
    dy.rand(33); dx.rand(34); dw.rand(35);
    Arr dxg = dx, dwg = dw;
    dxg.dev(); dwg.dev();
    rstd.dev();
    G->rmsnorm_bwd(dxg.d, ld, dwg.d, dy.dev(), ld, x.d, ld, w.d, rstd.d, n, d);
    C->rmsnorm_bwd(dx.h.data(), ld, dw.h.data(), dy.h.data(), ld, x.h.data(), ld, w.h.data(), rstd.h.data(), n, d);
    expect_close("rmsnorm_bwd dx (accumulate)", dxg.down(), dx.h, 2e-6);
    expect_close("rmsnorm_bwd dw (accumulate)", dwg.down(), dw.h, 2e-6);
}

TEST(rope) {
    const int n = 50, nh = 3, half = 16, ld_head = 40, ld_row = nh * ld_head, off = 8;
    IArr pos(n);
    for (int i = 0; i < n; i++) pos.h[i] = i * 37 % 5000;
    Arr inv(half), cs((size_t)n * half * 2), x((size_t)n * ld_row);
    for (int j = 0; j < half; j++) inv.h[j] = powf(10000.f, -2.f * j / (2 * half));
    x.rand(40);
    Arr csg = cs;
    G->rope_table(csg.poisoned(), pos.dev(), n, inv.dev(), half, 1.25f);
    C->rope_table(cs.h.data(), pos.h.data(), n, inv.h.data(), half, 1.25f);
    expect_close("rope_table", csg.down(), cs.h, 2e-6);
    for (int interleaved = 1; interleaved >= 0; interleaved--)
        for (int inverse = 0; inverse < 2; inverse++) {
            Arr xg = x;
            xg.dev();
            cs.dev();
            Arr xc = x;
            G->rope(xg.d, n, nh, ld_row, ld_head, off, half, interleaved, cs.d, inverse);
            C->rope(xc.h.data(), n, nh, ld_row, ld_head, off, half, interleaved, cs.h.data(), inverse);
            char what[64];
            snprintf(what, sizeof what, "rope%s (%s pairs)", inverse ? " inverse" : "",
                     interleaved ? "adjacent" : "half-split");
            expect_close(what, xg.down(), xc.h, 1e-6);
        }
}

/* ---- attention ---------------------------------------------------------------------------------------------- */

/* mode f32: the exact flash kernel, to fp32 rounding; bf16: the tensor-core path, to bf16 rounding */
static void attn_case(const char *name, int B, int T, int H, int dqk, int dv, bool segs, ds_cuda_gemm_mode mode) {
    const bool exact = mode == DS_CUDA_GEMM_F32;
    const double tol_o = exact ? 1e-5 : 1e-2, tol_lse = exact ? 1e-6 : 5e-3, tol_d = exact ? 2e-5 : 2e-2;
    ds_cuda_gemm_mode before = ds_ops_cuda_gemm();
    ds_ops_cuda_set_gemm(mode);
    const size_t nq = (size_t)B * T * H;
    Arr q(nq * dqk), k(nq * dqk), v(nq * dv), o(nq * dv), lse(nq), dout(nq * dv);
    q.rand(50); k.rand(51); v.rand(52); dout.rand(53);
    IArr seg(segs ? (size_t)B * T : 0);
    if (segs)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) seg.h[(size_t)b * T + t] = b * 100 + t / (7 + 3 * b); /* packed samples */
    const int32_t *sg_d = segs ? seg.dev() : nullptr, *sg_h = segs ? seg.h.data() : nullptr;
    float scale = 1.f / sqrtf((float)dqk);
    std::vector<unsigned char> wsc(C->attn_ws_bytes(B, T, H, dqk, dv));
    void *wsg = G->alloc(G->attn_ws_bytes(B, T, H, dqk, dv));
    Arr og = o, lg = lse;
    G->attn_fwd(og.poisoned(), lg.poisoned(), q.dev(), k.dev(), v.dev(), sg_d, B, T, H, dqk, dv, scale, wsg);
    C->attn_fwd(o.h.data(), lse.h.data(), q.h.data(), k.h.data(), v.h.data(), sg_h, B, T, H, dqk, dv, scale, wsc.data());
    char what[128];
    snprintf(what, sizeof what, "attn_fwd %s: o", name);
    expect_close(what, og.down(), o.h, tol_o);
    snprintf(what, sizeof what, "attn_fwd %s: lse", name);
    expect_close(what, lg.down(), lse.h, tol_lse);
    Arr dq(nq * dqk), dk(nq * dqk), dvv(nq * dv);
    Arr dqg = dq, dkg = dk, dvg = dvv;
    o.dev(); lse.dev();
    std::vector<float> first;
    for (int rep = 0; rep < 2; rep++) {
        G->attn_bwd(dqg.poisoned(), dkg.poisoned(), dvg.poisoned(), dout.dev(), q.d, k.d, v.d, o.d, lse.d, sg_d, B, T, H,
                    dqk, dv, scale, wsg);
        if (rep == 0) first = dkg.down();
    }
    C->attn_bwd(dq.h.data(), dk.h.data(), dvv.h.data(), dout.h.data(), q.h.data(), k.h.data(), v.h.data(), o.h.data(),
                lse.h.data(), sg_h, B, T, H, dqk, dv, scale, wsc.data());
    snprintf(what, sizeof what, "attn_bwd %s: dq", name);
    expect_close(what, dqg.down(), dq.h, tol_d);
    snprintf(what, sizeof what, "attn_bwd %s: dk", name);
    std::vector<float> dk2 = dkg.down();
    expect_close(what, dk2, dk.h, tol_d);
    snprintf(what, sizeof what, "attn_bwd %s: dv", name);
    expect_close(what, dvg.down(), dvv.h, tol_d);
    CHECK(!memcmp(first.data(), dk2.data(), dk2.size() * 4), "attn_bwd %s: repeat gives the same bits", name);
    G->free(wsg);
    ds_ops_cuda_set_gemm(before);
}

TEST(attention) {
    const ds_cuda_gemm_mode modes[2] = {DS_CUDA_GEMM_F32, DS_CUDA_GEMM_BF16};
    const char *tag[2] = {"exact kernel", "tensor cores"};
    for (int m = 0; m < 2; m++) {
        char name[96];
        snprintf(name, sizeof name, "small causal, %s", tag[m]);
        attn_case(name, 2, 77, 3, 24, 16, false, modes[m]);
        snprintf(name, sizeof name, "packed samples, %s", tag[m]);
        attn_case(name, 2, 90, 2, 40, 24, true, modes[m]);
        snprintf(name, sizeof name, "V3 head dims, %s", tag[m]);
        attn_case(name, 1, 70, 2, 192, 128, false, modes[m]);
    }
    attn_case("bench head dims at T = 1024, tensor cores", 2, 1024, 2, 96, 64, true, DS_CUDA_GEMM_BF16);
}

/* ---- SwiGLU, embedding, log-softmax, MLA assembly -------------------------------------------------------------- */

TEST(swiglu_embed_logsoftmax_kv) {
    const size_t n = 5000;
    Arr g(n), u(n), h(n), dh(n), dg(n), du(n);
    g.rand(60, 3.f); u.rand(61); dh.rand(62);
    Arr hg = h;
    G->swiglu_fwd(hg.poisoned(), g.dev(), u.dev(), n);
    C->swiglu_fwd(h.h.data(), g.h.data(), u.h.data(), n);
    expect_close("swiglu_fwd", hg.down(), h.h, 1e-6);
    Arr dgg = dg, dug = du;
    G->swiglu_bwd(dgg.poisoned(), dug.poisoned(), dh.dev(), g.d, u.d, n);
    C->swiglu_bwd(dg.h.data(), du.h.data(), dh.h.data(), g.h.data(), u.h.data(), n);
    expect_close("swiglu_bwd dg", dgg.down(), dg.h, 1e-6);
    expect_close("swiglu_bwd du", dug.down(), du.h, 1e-6);

    const int V = 1000, d = 48, nt = 300;
    IArr tok(nt);
    for (int i = 0; i < nt; i++) tok.h[i] = i % 17 == 3 ? -1 : (i * 7919) % 41; /* repeats, and -1 */
    Arr table((size_t)V * d), x((size_t)nt * d), dtab((size_t)V * d), dx((size_t)nt * d);
    table.rand(63); dtab.rand(64); dx.rand(65);
    Arr xg = x;
    G->embed_fwd(xg.poisoned(), table.dev(), tok.dev(), nt, d);
    C->embed_fwd(x.h.data(), table.h.data(), tok.h.data(), nt, d);
    expect_close("embed_fwd (-1 rows zero)", xg.down(), x.h, 0);
    Arr dtg = dtab;
    dtg.dev();
    G->embed_bwd(dtg.d, dx.dev(), tok.d, nt, d);
    C->embed_bwd(dtab.h.data(), dx.h.data(), tok.h.data(), nt, d);
    expect_close("embed_bwd (repeated tokens, accumulate)", dtg.down(), dtab.h, 1e-6);

    const int rows = 40;
    IArr tgt(rows);
    for (int i = 0; i < rows; i++) tgt.h[i] = i % 9 == 4 ? -1 : (i * 131) % V;
    Arr logits((size_t)rows * V), logp(rows), lse(rows), ent(rows), dlogp(rows), dlog((size_t)rows * V);
    logits.rand(66, 4.f); dlogp.rand(67);
    Arr lpg = logp, lsg = lse, eng = ent, dlg = dlog;
    G->logsoftmax_fwd(lpg.poisoned(), lsg.poisoned(), eng.poisoned(), logits.dev(), tgt.dev(), rows, V);
    C->logsoftmax_fwd(logp.h.data(), lse.h.data(), ent.h.data(), logits.h.data(), tgt.h.data(), rows, V);
    expect_close("logsoftmax_fwd logp", lpg.down(), logp.h, 2e-6);
    expect_close("logsoftmax_fwd lse", lsg.down(), lse.h, 1e-6);
    expect_close("logsoftmax_fwd entropy", eng.down(), ent.h, 1e-5);
    lse.dev();
    G->logsoftmax_bwd(dlg.poisoned(), logits.d, lse.d, tgt.d, dlogp.dev(), rows, V);
    C->logsoftmax_bwd(dlog.h.data(), logits.h.data(), lse.h.data(), tgt.h.data(), dlogp.h.data(), rows, V);
    expect_close("logsoftmax_bwd", dlg.down(), dlog.h, 2e-6);

    const int nn = 33, H = 4, dn = 16, dr = 8, dv = 12, ldk = 40;
    Arr kvb((size_t)nn * H * (dn + dv)), kpe((size_t)nn * ldk), kk((size_t)nn * H * (dn + dr)), vv((size_t)nn * H * dv);
    kvb.rand(68); kpe.rand(69);
    Arr kg = kk, vg = vv;
    G->mla_kv_expand(kg.poisoned(), vg.poisoned(), kvb.dev(), kpe.dev(), ldk, nn, H, dn, dr, dv);
    C->mla_kv_expand(kk.h.data(), vv.h.data(), kvb.h.data(), kpe.h.data(), ldk, nn, H, dn, dr, dv);
    expect_close("mla_kv_expand k", kg.down(), kk.h, 0);
    expect_close("mla_kv_expand v", vg.down(), vv.h, 0);
    Arr dkk((size_t)nn * H * (dn + dr)), dvv((size_t)nn * H * dv), dkvb((size_t)nn * H * (dn + dv)), dkpe((size_t)nn * ldk);
    dkk.rand(70); dvv.rand(71); dkpe.rand(72);
    Arr dkvg = dkvb, dkpg = dkpe;
    dkpg.dev();
    G->mla_kv_expand_bwd(dkvg.poisoned(), dkpg.d, ldk, dkk.dev(), dvv.dev(), nn, H, dn, dr, dv);
    C->mla_kv_expand_bwd(dkvb.h.data(), dkpe.h.data(), ldk, dkk.h.data(), dvv.h.data(), nn, H, dn, dr, dv);
    expect_close("mla_kv_expand_bwd dkvb", dkvg.down(), dkvb.h, 0);
    expect_close("mla_kv_expand_bwd dkpe", dkpg.down(), dkpe.h, 1e-6);
}

/* ---- MoE ------------------------------------------------------------------------------------------------------ */

/* underflow: every third token's logits near -120 (sigmoid scores exactly 0), the next ones' near -80 (scores
 * ~1e-35, their sum far below DS_ROUTE_RENORM_EPS): weights, backward and balance loss stay finite and agree */
static void moe_case(const char *name, ds_route_params rp, ds_score_fn fn, int underflow = 0) {
    const int B = 3, T = 40, n = B * T, E = rp.n_experts, K = rp.top_k;
    rp.score_fn = fn;
    Arr logits((size_t)n * E), scores((size_t)n * E), bias(E);
    logits.rand(80, 2.f); bias.rand(81, 0.1f);
    if (underflow)
        for (int t = 0; t < n; t++)
            for (int e = 0; e < E; e++) logits.h[(size_t)t * E + e] -= t % 3 == 0 ? 120.f : t % 3 == 1 ? 80.f : 0.f;
    Arr sg = scores;
    G->router_scores(sg.poisoned(), logits.dev(), n, E, fn);
    C->router_scores(scores.h.data(), logits.h.data(), n, E, fn);
    char what[128];
    snprintf(what, sizeof what, "%s: router_scores", name);
    expect_close(what, sg.down(), scores.h, 1e-6);
    /* selection from identical scores (the CPU's) must be identical; every 7th token is padding (keep 0: not
     * routed, left out of the balance loss, its slots -1 through bucket, gather and combine) */
    scores.dev();
    IArr idx((size_t)n * K), keep(n);
    for (int t = 0; t < n; t++) keep.h[t] = t % 7 != 3;
    Arr w((size_t)n * K);
    IArr ig = idx;
    Arr wg = w;
    G->moe_topk(ig.poisoned(), wg.poisoned(), scores.d, bias.dev(), keep.dev(), n, &rp);
    C->moe_topk(idx.h.data(), w.h.data(), scores.h.data(), bias.h.data(), keep.h.data(), n, &rp);
    snprintf(what, sizeof what, "%s: moe_topk experts", name);
    expect_same(what, ig.down(), idx.h);
    snprintf(what, sizeof what, "%s: moe_topk weights", name);
    expect_close(what, wg.down(), w.h, 1e-6);
    idx.dev();
    Arr dw((size_t)n * K), dlog((size_t)n * E);
    dw.rand(82); dlog.rand(83);
    Arr dlg = dlog;
    dlg.dev();
    G->moe_topk_bwd(dlg.d, dw.dev(), scores.d, idx.d, n, &rp);
    C->moe_topk_bwd(dlog.h.data(), dw.h.data(), scores.h.data(), idx.h.data(), n, &rp);
    snprintf(what, sizeof what, "%s: moe_topk_bwd (accumulate)", name);
    expect_close(what, dlg.down(), dlog.h, 1e-6);
    Arr loss(B), dl2((size_t)n * E);
    dl2.rand(84);
    Arr lg = loss, dl2g = dl2;
    dl2g.dev();
    G->moe_balance(lg.poisoned(), dl2g.d, 0.01f, scores.d, idx.d, B, T, &rp);
    C->moe_balance(loss.h.data(), dl2.h.data(), 0.01f, scores.h.data(), idx.h.data(), B, T, &rp);
    snprintf(what, sizeof what, "%s: moe_balance loss", name);
    expect_close(what, lg.down(), loss.h, 1e-6);
    snprintf(what, sizeof what, "%s: moe_balance grad (accumulate)", name);
    expect_close(what, dl2g.down(), dl2.h, 1e-6);

    /* bucket, gather, combine: m dispatched rows (the padding's slots are left out) */
    const int d = 24;
    IArr off(E + 1), order(n * K), where(n * K);
    IArr og = off, org = order, wg2 = where;
    G->moe_bucket(og.poisoned(), org.poisoned(), wg2.poisoned(), idx.d, n, K, E);
    C->moe_bucket(off.h.data(), order.h.data(), where.h.data(), idx.h.data(), n, K, E);
    const int m = off.h[E];
    snprintf(what, sizeof what, "%s: moe_bucket offsets (%d of %d slots dispatched)", name, m, n * K);
    expect_same(what, og.down(), off.h);
    snprintf(what, sizeof what, "%s: moe_bucket order (stable; the slots left out after, in slot order)", name);
    expect_same(what, org.down(), order.h);
    snprintf(what, sizeof what, "%s: moe_bucket where", name);
    expect_same(what, wg2.down(), where.h);
    order.dev(); where.dev();
    Arr src((size_t)n * d), dst((size_t)m * d), ye((size_t)m * d), y((size_t)n * d);
    src.rand(85); ye.rand(86); y.rand(87);
    Arr dg = dst;
    G->moe_gather(dg.poisoned(), src.dev(), order.d, m, K, d);
    C->moe_gather(dst.h.data(), src.h.data(), order.h.data(), m, K, d);
    snprintf(what, sizeof what, "%s: moe_gather", name);
    expect_close(what, dg.down(), dst.h, 0);
    Arr ds2 = src;
    ds2.dev();
    G->moe_gather_bwd(ds2.d, ye.dev(), where.d, n, K, d);
    C->moe_gather_bwd(src.h.data(), ye.h.data(), where.h.data(), n, K, d);
    snprintf(what, sizeof what, "%s: moe_gather_bwd (accumulate)", name);
    expect_close(what, ds2.down(), src.h, 1e-6);
    Arr yg = y;
    yg.dev();
    w.dev();
    G->moe_combine(yg.d, ye.d, w.d, where.d, n, K, d);
    C->moe_combine(y.h.data(), ye.h.data(), w.h.data(), where.h.data(), n, K, d);
    snprintf(what, sizeof what, "%s: moe_combine (accumulate)", name);
    expect_close(what, yg.down(), y.h, 1e-6);
    Arr xs = ye;
    xs.dev();
    G->moe_scale_rows(xs.d, w.d, order.d, m, d);
    C->moe_scale_rows(ye.h.data(), w.h.data(), order.h.data(), m, d);
    snprintf(what, sizeof what, "%s: moe_scale_rows", name);
    expect_close(what, xs.down(), ye.h, 1e-7);
    Arr z((size_t)m * d), act((size_t)m * d), dact((size_t)m * d), dwc((size_t)n * K);
    z.rand(88); act.rand(89);
    Arr dag = dact, dwg2 = dwc;
    G->moe_combine_bwd(dag.poisoned(), dwg2.dev(), z.dev(), act.dev(), w.d, order.d, m, d); /* padding's dw: not written */
    C->moe_combine_bwd(dact.h.data(), dwc.h.data(), z.h.data(), act.h.data(), w.h.data(), order.h.data(), m, d);
    snprintf(what, sizeof what, "%s: moe_combine_bwd dact", name);
    expect_close(what, dag.down(), dact.h, 1e-7);
    snprintf(what, sizeof what, "%s: moe_combine_bwd dw", name);
    expect_close(what, dwg2.down(), dwc.h, 1e-6);
}

TEST(moe) {
    ds_route_params v3 = {64, 6, 8, 3, DS_GROUP_TOP2SUM, DS_SCORE_FN_SIGMOID, 1, 2.5f};
    moe_case("sigmoid, 8 groups top-3 by top-2 sum, renorm", v3, DS_SCORE_FN_SIGMOID);
    ds_route_params v2 = {48, 4, 4, 2, DS_GROUP_MAX, DS_SCORE_FN_SOFTMAX, 0, 1.0f};
    moe_case("softmax, 4 groups top-2 by max", v2, DS_SCORE_FN_SOFTMAX);
    ds_route_params greedy = {256, 8, 1, 1, DS_GROUP_NONE, DS_SCORE_FN_SIGMOID, 1, 1.0f};
    moe_case("sigmoid, 256 experts, no groups", greedy, DS_SCORE_FN_SIGMOID);
    moe_case("sigmoid renorm, scores underflowing", v3, DS_SCORE_FN_SIGMOID, 1);
}

int main(int argc, char **argv) {
    gpu_test_begin("test_ops");
    C = ds_ops_cpu();
    G = ds_ops_cuda();
    if (!G) {
        printf("Bail out! %s\n", ds_errmsg());
        return 1;
    }
    return tap_run(argc, argv);
}
