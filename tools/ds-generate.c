/* ds-generate — Generate text from a checkpoint with the MLA latent KV cache, or score texts. */
#include "core/cli.h"
#include "core/err.h"
#include "core/file.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/rng.h"
#include "core/threads.h"
#include "dist/comm.h"
#include "fp8/linear.h"
#include "fp8/resident.h"
#include "io/checkpoint.h"
#include "infer/chatsess.h"
#include "infer/epinfer.h"
#include "infer/forward.h"
#include "infer/gencfg.h"
#include "infer/generate.h"
#include "infer/kvcache.h"
#include "infer/kvstream.h"
#include "infer/load.h"
#include "infer/score.h"
#include "infer/server.h"
#include "infer/textgen.h"
#include "ops/device.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
    const char *model, *chat_template, *prefill, *metrics, *device, *serve, *output, *decode_from, *expert_loads, *record_loads, *dtype;
    ds_strlist prompts, stops;
    int max_new, top_k, batch, ctx, prefill_chunk, threads, mtp, jsonl, chat, drop_oldest, score, ids, truncate, no_bos, ignore_eos, w8a8, fp8_expand;
    int prefill_only, ep, redundant;
    int quiet, verbose;
    double temperature, top_p;
    uint64_t seed;
} A = {.max_new = DS_GEN_MAX_NEW, .temperature = DS_GEN_TEMPERATURE, .top_k = DS_GEN_TOP_K, .top_p = DS_GEN_TOP_P, .batch = 8, .prefill = "naive", .prefill_chunk = 256,
       .device = "cpu", .dtype = "fp32"};

static const ds_opt opts[] = {
    {"model", 'm', DS_OPT_STR, &A.model, "CKPT", "checkpoint: directory, .safetensors file, or - (stream)"},
    {"prompt", 0, DS_OPT_STRLIST, &A.prompts, "TEXT", "a prompt (else one per stdin line, text or JSONL)"},
    {"max-new", 0, DS_OPT_INT, &A.max_new, "N", "new tokens per prompt (before it: generation_config.json's)", NULL, 1, 1e9},
    {"temperature", 0, DS_OPT_FLOAT, &A.temperature, "T", "sampling temperature; 0 = greedy (before it: generation_config.json's)", NULL, 0, 1e6},
    {"top-k", 0, DS_OPT_INT, &A.top_k, "K", "sample from the K most likely tokens; 0 = all (before it: the file's)", NULL, 0, 1e9},
    {"top-p", 0, DS_OPT_FLOAT, &A.top_p, "P", "nucleus: smallest set of tokens with mass >= P (before it: the file's)", NULL, 1e-9, 1},
    {"seed", 0, DS_OPT_SEED, &A.seed, "S", "sampling seed (with the prompt's index, fixes every draw)"},
    {"stop", 0, DS_OPT_STRLIST, &A.stops, "STR", "end a completion where this text appears (not included)"},
    {"mtp", 0, DS_OPT_FLAG, &A.mtp, NULL, "speculative decoding: the MTP module drafts, the model verifies"},
    {"jsonl", 0, DS_OPT_FLAG, &A.jsonl, NULL, "one JSON object per prompt (completion, tokens, logprobs, ...)"},
    {"chat", 0, DS_OPT_FLAG, &A.chat, NULL, "render plain prompts as a user turn through the chat template; with a "
     "terminal on stdin, a conversation (/reset, /exit; Ctrl-C stops a reply)"},
    {"chat-drop-oldest", 0, DS_OPT_FLAG, &A.drop_oldest, NULL, "interactive chat: when the context is full, drop the "
     "oldest turns (else the turn is refused)"},
    {"chat-template", 0, DS_OPT_STR, &A.chat_template, "FILE", "chat template (default: built in, share/chat_template)"},
    {"score", 0, DS_OPT_FLAG, &A.score, NULL, "print each input's per-token log-probabilities instead"},
    {"ids", 0, DS_OPT_FLAG, &A.ids, NULL, "input lines are space-separated token ids (no tokenizer needed)"},
    {"batch", 0, DS_OPT_INT, &A.batch, "N", "sequences decoded together", NULL, 1, 1024},
    {"ctx", 0, DS_OPT_INT, &A.ctx, "N", "context length; 0 = max_position_embeddings", NULL, 0, 1e9},
    {"truncate", 0, DS_OPT_FLAG, &A.truncate, NULL, "cut over-long prompts from the front instead of failing"},
    {"prefill", 0, DS_OPT_CHOICE, &A.prefill, "FORM", "attention form for prompts", "naive|absorbed"},
    {"prefill-chunk", 0, DS_OPT_INT, &A.prefill_chunk, "N", "prompt tokens per forward", NULL, 1, 1e6},
    {"no-bos", 0, DS_OPT_FLAG, &A.no_bos, NULL, "do not prepend the BOS token to plain prompts"},
    {"ignore-eos", 0, DS_OPT_FLAG, &A.ignore_eos, NULL, "keep generating after the EOS token(s) (fixed lengths)"},
    {"device", 0, DS_OPT_CHOICE, &A.device, "DEV", "where the network runs (cuda: one GPU, device 0)", "cpu|cuda"},
    {"w8a8", 0, DS_OPT_FLAG, &A.w8a8, NULL, "FP8 W8A8: Linear weights in 128x128 blocks, inputs in 1x128 tiles (E4M3), "
     "block-scaled products; kv_b, router, head and eh_proj stay fp32 (DeepSeek's inference)"},
    {"fp8-expand", 0, DS_OPT_FLAG, &A.fp8_expand, NULL, "expand an FP8 checkpoint's Linear weights to fp32 at load "
     "(by default they stay FP8: on the CPU mapped from the file, dequantized by tile in the GEMMs; on the GPU in "
     "device memory, multiplied in FP8 with 1x128-quantized activations)"},
    {"dtype", 0, DS_OPT_CHOICE, &A.dtype, "TYPE", "the weights in memory: fp32, or bf16 (rounded to nearest even, or "
     "mapped as they are from a BF16 checkpoint; half the memory and the bytes a decode step reads; activations, "
     "norms and sums stay fp32; an FP8 checkpoint's FP8 weights stay FP8 or expand to fp32)", "fp32|bf16"},
    {"serve", 0, DS_OPT_STR, &A.serve, "HOST:PORT", "serve the OpenAI API over HTTP (host 127.0.0.1 unless given; port 0: "
     "any free one, printed); --batch sequences decode together; SIGINT/SIGTERM stop after the requests in flight"},
    {"prefill-only", 0, DS_OPT_FLAG, &A.prefill_only, NULL, "disaggregation: run the prompts only and write each one's latent KV "
     "cache, first token and MTP state to -o (docs/formats.md \"Prefill stream\")"},
    {"output", 'o', DS_OPT_STR, &A.output, "FILE", "--prefill-only: where the stream goes (- = stdout)"},
    {"decode-from", 0, DS_OPT_STR, &A.decode_from, "FILE", "disaggregation: continue the prompts of a --prefill-only stream "
     "(- = stdin) with this model; sampling settings come from the stream"},
    {"ep", 0, DS_OPT_INT, &A.ep, "N", "expert parallelism over the N ranks of mpirun (N = the world): each holds "
     "its E/N routed experts; rank 0 runs the sequences and writes the output", NULL, 1, 4096},
    {"redundant-experts", 0, DS_OPT_INT, &A.redundant, "R", "--ep: R more expert slots per rank for replicas of "
     "the most loaded experts of --expert-loads (EPLB)", NULL, 0, 4096},
    {"expert-loads", 0, DS_OPT_STR, &A.expert_loads, "FILE", "--ep: where replicas go: loads from --record-loads"},
    {"record-loads", 0, DS_OPT_STR, &A.record_loads, "FILE", "write the tokens routed to each expert of each layer "
     "during this run (JSON; docs/formats.md \"Expert loads\")"},
    {"threads", 0, DS_OPT_INT, &A.threads, "N", "CPU threads; 0 = all cores", NULL, 0, 4096},
    {"metrics", 0, DS_OPT_STR, &A.metrics, "FILE", "write the configuration and the run's statistics as JSONL"},
    {"quiet", 'q', DS_OPT_FLAG, &A.quiet, NULL, "no progress or statistics on stderr"},
    {"verbose", 'v', DS_OPT_FLAG, &A.verbose, NULL, "more detail on stderr"},
    {0}};

static void report_cache(const ds_config *c, ds_jsonw *rec) {
    ds_kv_bytes f32, b16;
    ds_kvcache_bytes_per_token(c, 4, &f32);
    ds_kvcache_bytes_per_token(c, 2, &b16);
    ds_info("kv cache: %d floats per token per layer (latent %d + rope key %d) x %d layers = %.0f B/token fp32 "
            "(%.0f bf16); standard MHA with %d heads x %d: %.0f B/token bf16 (%.1fx), expanded MLA K/V %.1fx",
            c->kv_lora_rank + c->qk_rope_head_dim, c->kv_lora_rank, c->qk_rope_head_dim, c->num_hidden_layers,
            f32.mla, b16.mla, c->num_attention_heads, c->v_head_dim, b16.mha, b16.mha / b16.mla,
            b16.mla_full / b16.mla);
    ds_jsonw_knum(rec, "kv_bytes_per_token_fp32", f32.mla);
    ds_jsonw_knum(rec, "kv_bytes_per_token_mha_fp32", f32.mha);
    ds_jsonw_knum(rec, "kv_ratio_mha", f32.mha / f32.mla);
}

/* --ep and --record-loads: the engine's expert parallelism and load counters */
static struct {
    ds_comm comm;
    int have_comm;
    ds_infer_ep *ep;
    ds_expert_loads loads;
    int serving; /* a rank > 0 serves its experts: its errors are its own (before, rank 0 meets the same) */
} G;

/* --ep: the MPI group, the model's share of the experts (mo), after loading the replicas' placement. */
static int ep_setup(ds_model_opts *mo) {
    DS_TRY(ds_comm_init(&G.comm, NULL, NULL));
    G.have_comm = 1;
    if (G.comm.size != A.ep)
        return ds_fail(DS_EUSAGE, "--ep %d: mpirun started %d ranks (expert parallelism spans the world)", A.ep, G.comm.size);
    if (G.comm.rank) ds_log_set_level(DS_LOG_QUIET); /* rank 0 reports */
    mo->ep_size = A.ep, mo->ep_rank = G.comm.rank, mo->ep_comm = &G.comm;
    mo->fp8_resident = 0; /* replicas are fp32 copies: the experts are expanded */
    return DS_OK;
}

/* A failure every rank meets (loading): rank 0 reports it; leave MPI without waiting for the others. */
static int ep_fail(int rc) {
    if (G.have_comm && G.comm.rank) ds_err_silence();
    rc = ds_tool_report(rc);
    if (G.have_comm) ds_comm_abandon(&G.comm);
    return rc;
}

/* After generation: each rank's share of the (token, expert) pairs, and --record-loads. */
static int ep_report(const ds_config *c) {
    int rc = DS_OK;
    if (G.ep) {
        double per[4096], mx = 0, sum = 0;
        rc = ds_infer_ep_rank_loads(G.ep, per);
        char line[1024];
        int o = 0;
        for (int r = 0; !rc && r < A.ep; r++) {
            mx = per[r] > mx ? per[r] : mx;
            sum += per[r];
            if (o < 900) o += snprintf(line + o, sizeof line - (size_t)o, " %.0f", per[r]);
        }
        if (!rc)
            ds_info("expert load per rank (token-expert pairs computed, %d+%d slots per rank):%s; max %.0f, mean %.1f, "
                    "max/mean %.3f", c->n_routed_experts / A.ep, A.redundant, line, mx, sum / A.ep, sum > 0 ? mx * A.ep / sum : 0);
    }
    if (!rc && A.record_loads && (!G.have_comm || !G.comm.rank)) rc = ds_expert_loads_write(A.record_loads, c, &G.loads);
    return rc;
}

static volatile sig_atomic_t chat_interrupt;
static void on_sigint(int sig) { (void)sig; chat_interrupt = 1; }

/* --chat with a terminal on stdin: a conversation, turn by turn (infer/chatsess.h) */
static int run_chat(ds_loaded *L, const ds_chat_template *tpl, const ds_gen_settings *gs, int ctx, const ds_ops *lin) {
    ds_chat_opts o = {.tok = L->tok, .tpl = tpl, .sampling = {gs->temperature, gs->top_k, gs->top_p, A.seed},
                      .max_new = gs->max_new, .eos = gs->eos, .stops = A.stops.v, .n_stops = A.stops.n,
                      .prefill_chunk = A.prefill_chunk, .drop_oldest = A.drop_oldest, .interrupt = &chat_interrupt,
                      .prefill_form = strcmp(A.prefill, "naive") ? DS_ATTN_ABSORBED : DS_ATTN_NAIVE};
    if (!L->tok) return ds_fail(DS_EUSAGE, "--chat needs a tokenizer (the checkpoint has none)");
    struct sigaction sa = {.sa_handler = on_sigint}; /* no SA_RESTART: Ctrl-C must end a read at the prompt */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    ds_info("chat: Enter sends a message; /reset forgets the conversation, /exit quits, Ctrl-C stops a reply");
    return ds_chat_terminal(L->model, &o, ctx, lin, STDIN_FILENO, stdout);
}

static int run_generate(ds_loaded *L, ds_prompt_reader *rd, const ds_gen_settings *gs, int ctx, const ds_ops *lin,
                        ds_metrics *mf) {
    const ds_config *c = ds_model_config(L->model);
    const float *bias[1024];
    ds_infer_model im;
    if (c->num_hidden_layers + c->num_nextn_predict_layers > 1024) return ds_fail(DS_ERR, "too many layers");
    ds_infer_model_of(L->model, &im, bias);
    /* max_length alone (transformers'): new tokens up to it, less the prompt, within the context */
    int max_new = gs->max_length ? (gs->max_length < ctx - 1 ? gs->max_length : ctx - 1) : gs->max_new;
    ds_gen_opts go = {.sampling = {gs->temperature, gs->top_k, gs->top_p, A.seed}, .max_new = max_new,
                      .max_length = gs->max_length, .eos_id = -1, .eos_more = gs->eos, .mtp = A.mtp, .batch = A.batch, .prefill_chunk = A.prefill_chunk,
                      .prefill_form = strcmp(A.prefill, "naive") ? DS_ATTN_ABSORBED : DS_ATTN_NAIVE,
                      .truncate = A.truncate};
    DS_TRY(ds_sampling_check(&go.sampling));
    int rows = A.prefill_chunk > 2 * A.batch ? A.prefill_chunk : 2 * A.batch;
    ds_infer_opts io = {.max_tokens = rows, .slots = A.batch, .max_len = ctx, .mtp = A.mtp, .serial_flops = 5e7,
                        .linear_ops = lin};
    ds_writer_opts wo = {.out = stdout, .tok = L->tok, .jsonl = A.jsonl, .stops = A.stops.v, .n_stops = A.stops.n,
                         .eos = -1, .eos_more = &gs->eos, .mtp = A.mtp};
    ds_infer *e = NULL;
    ds_gen_writer *w = NULL;
    ds_gen_stats st;
    ds_atomic out = {0};           /* --prefill-only: the stream */
    ds_kvs_writer *kw = NULL;
    ds_kvs_reader *kr = NULL;      /* --decode-from */
    FILE *kf = NULL;
    int rc = ds_gen_writer_open(&w, &wo);
    if (!rc) rc = ds_infer_create(&e, &im, ds_model_ops(L->model), &io);
    if (!rc) ds_infer_set_ep(e, G.ep);
    if (!rc) ds_infer_count_loads(e, G.loads.load);
    ds_gen_io cb = {.src = rd, .next = ds_prompt_reader_next_cb, .sink = w, .on_token = ds_gen_writer_token,
                    .on_done = ds_gen_writer_done};
    if (!rc && A.prefill_only && !(rc = ds_is_stdio(A.output) ? ds_check_binary_stdout(0) : DS_OK) &&
        !(rc = ds_atomic_open(&out, A.output)) && !(rc = ds_kvs_writer_open(&kw, out.f, A.output, c, A.mtp)))
        ds_kvs_io_prefill(&cb, kw);
    if (!rc && A.decode_from) {
        kf = ds_is_stdio(A.decode_from) ? stdin : fopen(A.decode_from, "rb");
        if (!kf) rc = ds_fail(DS_ERR, "cannot open: %s", A.decode_from);
        else if (!(rc = ds_kvs_reader_open(&kr, kf, A.decode_from, c))) ds_kvs_io_decode(&cb, kr);
        if (!rc && A.mtp && !ds_kvs_reader_mtp_layers(kr))
            rc = ds_fail(DS_EUSAGE, "--mtp: the prefill stream carries no MTP state (prefill with --mtp): %s", A.decode_from);
    }
    double t0 = ds_now();
    if (!rc) rc = ds_generate(e, &go, &cb, &st);
    if (!rc && G.ep) rc = ds_infer_ep_announce(G.ep, 0); /* the other ranks stop serving */
    int64_t k_rec = 0, k_bytes = 0, k_tok = 0;
    if (kw) ds_kvs_writer_counts(kw, &k_rec, &k_bytes, &k_tok);
    int rc2 = ds_kvs_writer_close(kw, !rc);
    if (!rc) rc = rc2;
    if (out.f && !rc) rc = ds_atomic_commit(&out);
    else if (out.f) ds_atomic_abort(&out);
    ds_kvs_reader_free(kr);
    if (kf && kf != stdin) fclose(kf);
    char first[1024], hint[1024]; /* the error that stopped generation, not the unfinished output it left */
    snprintf(first, sizeof first, "%s", ds_errmsg());
    snprintf(hint, sizeof hint, "%s", ds_errhint());
    rc2 = ds_gen_writer_close(w);
    if (!rc && !A.prefill_only) rc = rc2;
    else if (rc && rc2) {
        ds_fail(rc, "%s", first);
        if (*hint) ds_hint("%s", hint);
    }
    ds_infer_free(e);
    if (rc) return rc;
    if (A.prefill_only) {
        ds_kv_bytes kb;
        ds_kvcache_bytes_per_token(c, 4, &kb);
        ds_info("prefill stream: %lld prompts, %lld prompt tokens in %.2f s; %lld bytes = %.0f B per prompt token "
                "(the MLA cache: %.0f B/token fp32 over %d layers%s)", (long long)k_rec, (long long)k_tok, ds_now() - t0,
                (long long)k_bytes, k_tok ? (double)k_bytes / k_tok : 0.0, kb.mla, c->num_hidden_layers,
                A.mtp ? ", plus the MTP layer's" : "");
    }
    if (A.decode_from) ds_info("decoded from the prefill stream in %.2f s", ds_now() - t0);
    double pf = st.prefill_s > 0 ? st.prompt_tokens / st.prefill_s : 0, dc = st.decode_s > 0 ? (st.new_tokens - st.prompts) / st.decode_s : 0;
    ds_info("%lld prompts: %lld prompt tokens, %lld new; prefill %.1f tok/s, decode %.1f tok/s over %lld steps",
            (long long)st.prompts, (long long)st.prompt_tokens, (long long)st.new_tokens, pf, dc,
            (long long)st.decode_steps);
    if (A.mtp && st.drafted)
        ds_info("mtp: %lld of %lld drafts accepted (%.1f%%): %.2f tokens per sequence per decode step",
                (long long)st.accepted, (long long)st.drafted, 100.0 * st.accepted / st.drafted,
                (double)(st.drafted + st.accepted) / st.drafted);
    if (mf->f) {
        ds_jsonw r;
        ds_jsonw_init(&r);
        ds_jsonw_obj_begin(&r);
        ds_jsonw_kstr(&r, "record", "summary");
        ds_jsonw_kint(&r, "prompts", st.prompts);
        ds_jsonw_kint(&r, "prompt_tokens", st.prompt_tokens);
        ds_jsonw_kint(&r, "new_tokens", st.new_tokens);
        ds_jsonw_knum(&r, "prefill_tokens_per_s", pf);
        ds_jsonw_knum(&r, "decode_tokens_per_s", dc);
        ds_jsonw_kint(&r, "decode_steps", st.decode_steps);
        ds_jsonw_kint(&r, "mtp_drafted", st.drafted);
        ds_jsonw_kint(&r, "mtp_accepted", st.accepted);
        ds_jsonw_obj_end(&r);
        rc = ds_metrics_write(mf, &r);
        ds_jsonw_free(&r);
    }
    return rc;
}

static void serve_ready(void *ctx, int port) {
    const ds_serve_opts *so = ctx;
    printf("http://%s:%d\n", so->host, port); /* stdout: a script reads the port from here */
    fflush(stdout);
    ds_info("serving '%s' at http://%s:%d/v1 (batch %d); SIGINT or SIGTERM stops", so->model_name, so->host, port,
            A.batch);
}

/* --serve: the engine sized for the batch and the context, behind the HTTP server (infer/server.h). */
static int run_serve(ds_loaded *L, const ds_chat_template *tpl, const ds_gen_settings *gs, int ctx, const ds_ops *lin) {
    const ds_config *c = ds_model_config(L->model);
    const float *bias[1024];
    ds_infer_model im;
    if (c->num_hidden_layers + c->num_nextn_predict_layers > 1024) return ds_fail(DS_ERR, "too many layers");
    ds_infer_model_of(L->model, &im, bias);
    char name[256];
    ds_serve_model_name(A.model, name, sizeof name);
    ds_serve_opts so = {.model_name = name, .tok = L->tok, .chat = tpl, .bos = A.no_bos ? -1 : c->bos_token_id,
                        .gen = {.sampling = {gs->temperature, gs->top_k, gs->top_p, A.seed}, .max_new = ctx - 1, .eos_id = -1,
                                .eos_more = gs->eos, .mtp = A.mtp, .batch = A.batch, .prefill_chunk = A.prefill_chunk,
                                .prefill_form = strcmp(A.prefill, "naive") ? DS_ATTN_ABSORBED : DS_ATTN_NAIVE},
                        .default_max_tokens = gs->max_new, .max_length = gs->max_length, .max_n = 64, .max_body = 8u << 20};
    DS_TRY(ds_serve_parse_addr(A.serve, &so));
    int rows = A.prefill_chunk > 2 * A.batch ? A.prefill_chunk : 2 * A.batch;
    ds_infer_opts io = {.max_tokens = rows, .slots = A.batch, .max_len = ctx, .mtp = A.mtp, .serial_flops = 5e7,
                        .linear_ops = lin};
    ds_infer *e = NULL;
    ds_serve_stats st;
    int rc = ds_infer_create(&e, &im, ds_model_ops(L->model), &io);
    if (!rc) rc = ds_serve_until_signal(e, &so, serve_ready, &so, &st);
    ds_infer_free(e);
    if (!rc)
        ds_info("served %lld requests (%lld refused, %lld cancelled): %lld prompt tokens, %lld generated in %lld decode steps",
                (long long)st.requests, (long long)st.errors, (long long)st.cancelled, (long long)st.prompt_tokens,
                (long long)st.completion_tokens, (long long)st.gen.decode_steps);
    return rc;
}

int main(int argc, char **argv) {
    ds_tool_init("ds-generate");
    ds_ops_cpu_blas_reexec(argv); /* a wrongly detected OpenBLAS kernel: run again with the right one */
    const ds_cli cli = {
        .name = "ds-generate",
        .usage = "-m CKPT [OPTIONS]",
        .summary = "Generate text from a checkpoint with the MLA latent KV cache (absorbed attention over the "
                   "normalised KV latent and the rotated RoPE key), several prompts decoded together, optional "
                   "MTP speculative decoding; or, with --score, print each input's per-token log-probabilities. FP8 "
                   "checkpoints stay FP8 in memory (on the CPU dequantized by tile inside the GEMMs; with --device cuda in "
                   "device memory, multiplied by cuBLASLt's block-scaled FP8 GEMM with activations quantized 1x128, "
                   "as DeepSeek's inference does; --fp8-expand expands them at load); --w8a8 runs the Linear layers in FP8 (weights and "
                   "activations); --dtype bf16 holds the weights in bf16 (the products equal fp32 ones over the same "
                   "bf16-rounded weights, bit for bit). "
                   "Prompts come from --prompt, or one per stdin line: plain text, JSONL ({\"prompt\": ...} or "
                   "{\"messages\": [...]}), or token ids with --ids. "
                   "The checkpoint's generation_config.json sets the sampling defaults as in transformers (do_sample "
                   "false = greedy; temperature, top_k, top_p, max_new_tokens, max_length counting the prompt, eos_token_id "
                   "as one id or a list); options given here win; stderr's 'sampling' line says where each value came from.",
        .example = "  ds-generate -m ckpt/sft --chat --prompt 'What is 2+2?' --max-new 64 --temperature 0\n"
                   "  ds-quantize -m ckpt/sft -o - --to fp8 | ds-generate -m - --prompt 'Once upon a time'\n"
                   "  ds-generate -m ckpt/sft --jsonl --mtp < prompts.jsonl > out.jsonl\n"
                   "  ds-generate -m ckpt/sft --prefill-only -o - < prompts.jsonl | ds-generate -m ckpt/sft --decode-from -\n"
                   "  echo '0 17 42 9' | ds-generate -m ckpt/sft --score --ids\n"
                   "  ds-generate -m ckpt/fp8 --w8a8 --score < heldout.jsonl   # see bench/fp8_quality.sh",
        .opts = opts,
    };
    int first;
    int rc = ds_cli_parse(&cli, argc, argv, &first);
    if (rc >= 0) return rc;
    if (first < argc) return ds_usage_error("unexpected argument '%s'", argv[first]);
    if (!A.model) return ds_usage_error("-m/--model is required");
    if (A.prompts.n && A.ids) return ds_usage_error("--prompt and --ids do not go together");
    if (ds_is_stdio(A.model) && !A.prompts.n && !A.serve && !A.decode_from)
        return ds_usage_error("%s - reads the checkpoint from stdin: give prompts with --prompt", ds_cli_opt(&A.model, "-m"));
    if (A.score && (A.mtp || A.stops.n)) return ds_usage_error("--score takes no --mtp or --stop");
    if (A.serve && (A.score || A.prompts.n || A.ids || A.jsonl || A.stops.n))
        return ds_usage_error("--serve takes its prompts and stop strings from requests: no --score, --prompt, --ids, --jsonl or --stop");
    if (A.prefill_only && (!A.output || A.score || A.serve || A.jsonl || A.stops.n || A.decode_from))
        return ds_usage_error("--prefill-only writes the stream to -o FILE: no --score, --serve, --jsonl, --stop or --decode-from");
    if (A.output && !A.prefill_only) return ds_usage_error("-o/--output goes with --prefill-only");
    if (A.decode_from && (A.prompts.n || A.ids || A.score || A.serve || A.chat))
        return ds_usage_error("--decode-from takes its prompts from the stream: no --prompt, --ids, --score, --serve or --chat");
    if (A.decode_from && ds_is_stdio(A.decode_from) && ds_is_stdio(A.model))
        return ds_usage_error("--decode-from - and -m - both read stdin");
    if ((A.ep > 1 || A.record_loads) && (A.serve || A.score || A.chat || strcmp(A.device, "cpu") || A.w8a8))
        return ds_usage_error("--ep and --record-loads run batch generation on the CPU: no --serve, --score, --chat, --device or --w8a8");
    if ((A.redundant || A.expert_loads) && A.ep < 2) return ds_usage_error("--redundant-experts and --expert-loads go with --ep N (N > 1)");
    if (A.expert_loads && !A.redundant) return ds_usage_error("--expert-loads places replicas: give --redundant-experts R");
    if (A.quiet) ds_log_set_level(DS_LOG_QUIET);
    if (A.verbose) ds_log_set_level(DS_LOG_VERBOSE);
    ds_threads_set(A.threads);
    if (!ds_cli_given(&A.seed)) A.seed = ds_seed_draw(); /* as llama.cpp: a random seed, printed and recorded */

    ds_metrics mf = {0};
    if (A.metrics && (rc = ds_metrics_open(&mf, A.metrics, 0))) return ds_tool_report(rc);
    ds_loaded L;
    /* the training forward's activations serve --score only: sized for one sequence of the context
     * (max_seq 0: the config's max_position_embeddings) */
    if (A.w8a8 && strcmp(A.device, "cpu"))
        return ds_usage_error("--w8a8 runs on the CPU in this build: drop --device %s or --w8a8", A.device);
    const int bf16 = !strcmp(A.dtype, "bf16");
    if (bf16 && (strcmp(A.device, "cpu") || A.w8a8 || A.fp8_expand || A.ep > 1))
        return ds_usage_error("--dtype bf16 holds the weights in bf16 on the CPU: not with %s",
                              strcmp(A.device, "cpu") ? "--device cuda (its GEMMs read a bf16 copy already)"
                              : A.w8a8 ? "--w8a8 (it quantizes fp32 weights)"
                              : A.fp8_expand ? "--fp8-expand (FP8 weights stay FP8 with --dtype bf16; expanded they are fp32)"
                                             : "--ep (its expert replicas are fp32)");
    ds_ops fp8; /* --w8a8: the Linear layers' table (the engine and the scoring model copy it) */
    ds_fp8_linear_ops(&fp8, ds_ops_cpu());
    ds_model_opts mo = {.max_batch = 1, .max_seq = A.score ? A.ctx : 1, .linear_ops = A.w8a8 ? &fp8 : NULL,
                        .kv_b_on_ops = 1, .fp8_resident = !A.fp8_expand && !A.w8a8, .bf16_resident = bf16};
    if ((rc = ds_ops_for_device(A.device, &mo.ops))) return ds_tool_report(rc);
    if (A.ep > 1 && (rc = ep_setup(&mo))) return rc == DS_EUSAGE ? ds_usage_error("%s", ds_errmsg()) : ds_tool_report(rc);
    double t0 = ds_now();
    if ((rc = ds_load_checkpoint(A.model, &mo, &L))) return ep_fail(rc);
    ds_chat_template tpl; /* --chat-template, else the checkpoint's tokenizer_config.json, else built in */
    int have_tpl = 1;
    if (A.chat) rc = ds_chat_template_select(&tpl, A.chat_template, L.tokenizer_config, L.tokenizer_config_len, A.model);
    else rc = ds_chat_template_select_if_readable(&tpl, A.chat_template, L.tokenizer_config, L.tokenizer_config_len,
                                                  A.model, &have_tpl);
    if (rc) {
        ds_loaded_free(&L);
        return ds_tool_report(rc);
    }
    const ds_config *c = ds_model_config(L.model);
    /* the Linear GEMMs: FP8-resident weights bring their own; --w8a8 its table; else the backend's */
    const ds_ops *lin = L.fp8_resident && !L.bf16_resident ? ds_model_linear_ops(L.model) : A.w8a8 ? &fp8 : NULL;
    int ctx = A.ctx ? A.ctx : c->max_position_embeddings;
    /* sampling defaults: built in, then the checkpoint's generation_config.json, then the options given */
    ds_gen_settings gs = {.temperature = A.temperature, .top_k = A.top_k, .top_p = A.top_p, .max_new = A.max_new,
                          .src_temperature = ds_cli_given(&A.temperature) ? "--temperature" : "default",
                          .src_top_k = ds_cli_given(&A.top_k) ? "--top-k" : "default",
                          .src_top_p = ds_cli_given(&A.top_p) ? "--top-p" : "default",
                          .src_max_new = ds_cli_given(&A.max_new) ? "--max-new" : "default",
                          .src_eos = A.ignore_eos ? "--ignore-eos" : "config.json"};
    if (!A.ignore_eos && c->eos_token_id >= 0) gs.eos.id[gs.eos.n++] = c->eos_token_id;
    if (!rc && L.generation_config) {
        ds_gen_config gc;
        char where[600];
        snprintf(where, sizeof where, "%s/generation_config.json", A.model);
        rc = ds_gen_config_parse(L.generation_config, L.generation_config_len, where, &gc);
        unsigned given = (ds_cli_given(&A.temperature) ? DS_GIVEN_TEMPERATURE : 0) | (ds_cli_given(&A.top_k) ? DS_GIVEN_TOP_K : 0) |
                         (ds_cli_given(&A.top_p) ? DS_GIVEN_TOP_P : 0) | (ds_cli_given(&A.max_new) ? DS_GIVEN_MAX_NEW : 0) |
                         (A.ignore_eos ? DS_GIVEN_EOS : 0);
        if (!rc) ds_gen_config_apply(&gc, given, &gs);
    }
    for (int i = 0; !rc && i < gs.eos.n; i++)
        if (gs.eos.id[i] >= c->vocab_size)
            rc = ds_fail(DS_ERR, "%s: eos_token_id %d is not below the vocabulary size %d: %s", gs.src_eos,
                         (int)gs.eos.id[i], c->vocab_size, A.model);
    if (rc && rc != DS_EUSAGE) { /* before any report of a configuration that will not run */
        ds_loaded_free(&L);
        ds_chat_template_free(&tpl);
        return ds_tool_report(rc);
    }
    if (A.mtp && !L.has_mtp) rc = ds_fail(DS_EUSAGE, "--mtp: the checkpoint has no MTP module: %s", A.model);
    if (!rc && A.record_loads) {
        G.loads = (ds_expert_loads){.n_layers = c->num_hidden_layers + c->num_nextn_predict_layers, .E = c->n_routed_experts};
        G.loads.load = calloc((size_t)G.loads.n_layers * (size_t)(G.loads.E > 0 ? G.loads.E : 1), sizeof(double));
        if (!G.loads.load) rc = ds_fail(DS_ERR, "--record-loads: out of memory");
    }
    if (!rc && A.ep > 1) {
        ds_expert_loads el = {0};
        if (A.expert_loads) rc = ds_expert_loads_read(A.expert_loads, c, &el);
        int rows = A.prefill_chunk > 2 * A.batch ? A.prefill_chunk : 2 * A.batch;
        if (!rc) rc = ds_infer_ep_create(&G.ep, &G.comm, L.model, A.redundant, A.expert_loads ? &el : NULL, rows);
        ds_expert_loads_free(&el);
    }

    ds_jsonw cfgrec;
    ds_jsonw_init(&cfgrec);
    ds_jsonw_obj_begin(&cfgrec);
    ds_jsonw_kstr(&cfgrec, "record", "config");
    ds_jsonw_kstr(&cfgrec, "model", A.model);
    ds_jsonw_kstr(&cfgrec, "mode", A.score ? "score" : "generate");
    ds_jsonw_kint(&cfgrec, "ctx", ctx);
    ds_jsonw_kint(&cfgrec, "batch", A.batch);
    ds_jsonw_kint(&cfgrec, "max_new", gs.max_new);
    ds_jsonw_kint(&cfgrec, "max_length", gs.max_length);
    ds_jsonw_knum(&cfgrec, "temperature", gs.temperature);
    ds_jsonw_kint(&cfgrec, "top_k", gs.top_k);
    ds_jsonw_knum(&cfgrec, "top_p", gs.top_p);
    char seed[24]; /* a string, as the training tools': JSON readers cannot hold every 64-bit value */
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)A.seed);
    ds_jsonw_kstr(&cfgrec, "seed", seed);
    ds_jsonw_kbool(&cfgrec, "mtp", A.mtp);
    ds_jsonw_kbool(&cfgrec, "w8a8", A.w8a8);
    ds_jsonw_kstr(&cfgrec, "dtype", A.dtype);
    ds_jsonw_kint(&cfgrec, "threads", ds_threads_get());
    ds_jsonw_kstr(&cfgrec, "device", A.device);
    ds_info("ds-generate: %s (%s) loaded in %.2f s: %d layers, hidden %d, %d heads, vocab %d%s%s; ctx %d, "
            "batch %d, %d threads, device %s", A.model, L.tok ? "with tokenizer" : "no tokenizer", ds_now() - t0,
            c->num_hidden_layers, c->hidden_size, c->num_attention_heads, c->vocab_size, L.has_mtp ? ", MTP" : "",
            A.mtp ? " (speculating)" : "", ctx, A.batch, ds_threads_get(), A.device);
    if (!A.score) {
        char line[512];
        ds_gen_settings_describe(&gs, line, sizeof line);
        ds_info("sampling %s", line);
    }
    if (!ds_cli_given(&A.seed) && gs.temperature > 0 && !A.score) /* when it matters: sampling */
        ds_info("seed    %llu (random: --seed repeats the draws)", (unsigned long long)A.seed);
    if (!A.score) report_cache(c, &cfgrec);
    ds_jsonw_obj_end(&cfgrec);
    if (!rc && mf.f) rc = ds_metrics_write(&mf, &cfgrec);
    ds_jsonw_free(&cfgrec);

    ds_prompt_opts po = {.format = A.ids ? DS_INPUT_IDS : DS_INPUT_AUTO, .tok = L.tok, .chat = have_tpl ? &tpl : NULL,
                         .chat_prompts = A.chat, .generation_prompt = !A.score,
                         .bos = A.no_bos ? -1 : c->bos_token_id, .vocab = c->vocab_size};
    ds_prompt_reader *rd = NULL;
    /* a person at a terminal: the interactive chat; piped input keeps the batch */
    const int chat_tty = !A.serve && !A.prefill_only && A.chat && !A.prompts.n && !A.score && !A.ids && !A.jsonl && isatty(STDIN_FILENO);
    if (!rc && chat_tty && A.mtp) rc = ds_fail(DS_EUSAGE, "--mtp: the interactive chat does not speculate");
    if (!rc && G.have_comm && G.comm.rank) { /* experts only: rank 0 runs the sequences */
        G.serving = 1;
        rc = ds_infer_ep_serve(G.ep);
    }
    else if (!rc && A.serve) rc = run_serve(&L, have_tpl ? &tpl : NULL, &gs, ctx, lin);
    else if (!rc && chat_tty) rc = run_chat(&L, &tpl, &gs, ctx, lin);
    else if (!rc && !A.decode_from) rc = ds_prompt_reader_open(&rd, &po, A.prompts.n ? A.prompts.v : NULL, A.prompts.n, stdin, "stdin");
    if (!rc && A.serve) {
    } else if (!rc && A.score) {
        ds_score_stats ss;
        rc = ds_score(L.model, rd, stdout, ctx, &ss);
        if (!rc) ds_info("scored %lld inputs, %lld tokens in %.2f s", (long long)ss.inputs, (long long)ss.tokens, ss.seconds);
    } else if (!rc && !chat_tty && !(G.have_comm && G.comm.rank)) {
        rc = run_generate(&L, rd, &gs, ctx, lin, &mf);
    }
    double dev_used; /* what the weights' report promised, next to what the device gave (bench/gpu_fp8_resident.sh) */
    if (!rc && !ds_ops_on_host(mo.ops) && !ds_device_memory_used(mo.ops, &dev_used))
        ds_info("device memory: %.3f GiB taken by this run (weights, cache, activations, workspaces)",
                dev_used / 1073741824.0);
    if (!rc) rc = ep_report(c);
    if (!rc && A.w8a8) rc = ds_fp8_linear_status(); /* a failure inside an FP8 GEMM (out of memory) */
    if (!rc && (L.fp8_resident || L.bf16_resident)) rc = ds_fp8_resident_status();
    ds_prompt_reader_free(rd);
    ds_loaded_free(&L);
    ds_chat_template_free(&tpl);
    ds_metrics_close(&mf);
    ds_strlist_free(&A.prompts);
    ds_strlist_free(&A.stops);
    ds_infer_ep_free(G.ep);
    ds_expert_loads_free(&G.loads);
    if (rc && G.have_comm && G.comm.rank && !G.serving) ds_err_silence();
    rc = rc == DS_EUSAGE ? ds_usage_error("%s", ds_errmsg()) : ds_tool_report(rc);
    /* a failed rank leaves without MPI_Finalize (the others may wait for it): mpirun then ends the job */
    if (G.have_comm && rc) ds_comm_abandon(&G.comm);
    else if (G.have_comm) ds_comm_finalize(&G.comm);
    return rc;
}
