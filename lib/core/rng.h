/* rng.h — counter-based random numbers (Philox-4x32-10).
 *
 * Owns: every random number libds draws. A number is a pure function of (seed, stream, index), so
 * the same values come out on the CPU and the GPU, with any thread count and in any order: weight
 * init, data shuffling, FIM, sampling and dropout-free training are reproducible bit for bit.
 * Streams separate independent uses (e.g. one stream per parameter tensor).
 */
#ifndef DS_CORE_RNG_H
#define DS_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

/* A seed from the operating system's entropy (getrandom, else /dev/urandom, else the clock and the
 * process id), for a run given no --seed: the tool prints and records it so the run can be repeated. */
uint64_t ds_seed_draw(void);

/* One Philox-4x32-10 block: key = seed, counter = (index, stream). Writes 4 uniform 32-bit words. */
void ds_philox4x32(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);

/* Uniform in [0, 1) with 24 random bits, from word w (0..3) of block (seed, stream, index). */
static inline float ds_u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

/* Sequential generator over one stream: draws blocks (seed, stream, 0), (seed, stream, 1), ... */
typedef struct {
    uint64_t seed, stream, index;
    uint32_t buf[4];
    int left;
} ds_rng;

void ds_rng_init(ds_rng *r, uint64_t seed, uint64_t stream);
uint32_t ds_rng_u32(ds_rng *r);
uint64_t ds_rng_u64(ds_rng *r);
double ds_rng_uniform(ds_rng *r);          /* [0, 1), 53 bits */
uint64_t ds_rng_below(ds_rng *r, uint64_t n); /* uniform in [0, n), unbiased */
double ds_rng_normal(ds_rng *r);           /* standard normal (Box-Muller) */

/* Fill x[i] = std * N(0,1) for i in [0, n), element i a function of (seed, stream, i) only.
 * Parallel and order-independent. */
void ds_randn_fill(float *x, size_t n, uint64_t seed, uint64_t stream, float std);
/* Fisher-Yates shuffle of 0..n-1 into perm, deterministic in (seed, stream). */
void ds_permutation(uint32_t *perm, size_t n, uint64_t seed, uint64_t stream);

/* Stream ids derived from a name (FNV-1a), so callers can key streams by parameter name. */
uint64_t ds_stream_id(const char *name);

#endif
