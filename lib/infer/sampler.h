/* sampler.h — choosing the next token from logits, and speculative-decoding acceptance.
 *
 * Owns: the sampling distribution (greedy, temperature, top-k, top-p; applied in that order, as
 * transformers' logits warpers do), the random draws behind it, the model log-probability reported
 * for a chosen token, and rejection sampling for speculative decoding (Leviathan et al. 2023,
 * "Fast Inference from Transformers via Speculative Decoding", Algorithm 1).
 *
 * Reproducibility: every draw is a pure function of (seed, sequence id, step, purpose) through
 * Philox (core/rng.h), so a prompt's completion does not depend on which other prompts share its
 * batch, on the thread count, or on the order sequences are processed.
 *
 * Distributions are dense arrays over the vocabulary plus the sorted list of token ids with
 * non-zero probability (the "support"); the support keeps resets and draws cheap when top-k/top-p
 * leave a few candidates out of 129K.
 */
#ifndef DS_INFER_SAMPLER_H
#define DS_INFER_SAMPLER_H

#include <stdint.h>

typedef struct {
    double temperature; /* 0: greedy (argmax, lowest id on ties) */
    int top_k;          /* 0: off */
    double top_p;       /* 1: off; keep the smallest most-likely set whose mass reaches top_p */
    uint64_t seed;
} ds_sampling;

/* A filtered, normalised distribution over V tokens. */
typedef struct {
    int V;
    double *p;    /* [V], zero outside the support */
    int32_t *ids; /* [V] storage; the first n entries are the support, ascending */
    int n;
} ds_dist;

int ds_dist_init(ds_dist *d, int V);
void ds_dist_free(ds_dist *d);

/* Scratch shared by the functions below (one per thread). */
typedef struct {
    double w;
    int32_t id;
} ds_scored_id;

typedef struct {
    int V;
    double *work;       /* [V] */
    ds_scored_id *rank; /* [V] */
} ds_sampler;

int ds_sampler_init(ds_sampler *s, int V);
void ds_sampler_free(ds_sampler *s);

/* Validate settings: temperature >= 0, top_k >= 0, 0 < top_p <= 1. Usage errors name the option. */
int ds_sampling_check(const ds_sampling *sp);

/* The distribution `sp` samples from, given raw logits (temperature 1). Non-finite logits are an
 * error ("logits: not finite"). */
int ds_sampler_dist(ds_sampler *s, const float *logits, const ds_sampling *sp, ds_dist *out);

/* What a draw is for; part of the Philox counter so the draws are independent. */
typedef enum { DS_DRAW_SAMPLE = 0, DS_DRAW_DRAFT = 1, DS_DRAW_ACCEPT = 2, DS_DRAW_RESIDUAL = 3 } ds_draw_purpose;

/* Uniform in [0, 1) with 53 bits, a function of (seed, seq, step, purpose) only. */
double ds_draw_uniform(uint64_t seed, uint64_t seq, uint64_t step, ds_draw_purpose purpose);

/* Inverse-CDF draw from d (support order) with uniform u. Returns a token id. */
int32_t ds_dist_draw(const ds_dist *d, double u);

/* log softmax(logits)[id] at temperature 1 (the model's own log-probability), in double. */
double ds_logprob(const float *logits, int V, int32_t id);
/* log softmax for every token: out[V]. */
void ds_log_softmax(const float *logits, int V, float *out);

/* Choose the next token of sequence `seq` at generation step `step` (0-based): builds the
 * distribution into d and draws from it (greedy needs no draw). */
int ds_sample_next(ds_sampler *s, const float *logits, const ds_sampling *sp, uint64_t seq, uint64_t step,
                   ds_dist *d, int32_t *token);

/* Speculative verification of one draft token x drawn from q, against the target distribution p.
 * Accepts with probability min(1, p(x)/q(x)); on rejection draws from norm(max(p - q, 0)), so the
 * emitted token is distributed exactly as p. With point masses (greedy) this accepts iff x is p's
 * argmax and otherwise returns that argmax. Returns 1 when accepted (*out = x), 0 otherwise. */
int ds_spec_verify(const ds_dist *p, const ds_dist *q, int32_t x, uint64_t seed, uint64_t seq, uint64_t step,
                   int32_t *out);

#endif
