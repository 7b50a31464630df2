/* grpo.h — the GRPO objective (DeepSeekMath, used by DeepSeek-V3 and R1; spec section 11.5) as
 * per-token coefficients for the model's backward pass.
 *
 * Owns: group-normalised advantages, the k3 estimator of KL(pi_theta || pi_ref), the clipped surrogate
 * of one token and its derivative with respect to the policy's log-probability, the two ways tokens
 * are averaged into the loss, and the statistics ds-rl logs about the update (KL, clip fractions,
 * ratio range, entropy). lib/rl is the RL module: it sits above lib/train (the shared trainer) and
 * lib/infer (the generation engine) and neither of them depends on it.
 *
 * For completion token t of sequence i, with l = log pi_theta(o_t), l_old the log-probability the
 * sampling pass reported and l_ref that of the frozen reference:
 *   rho    = exp(l - l_old)
 *   s      = min(rho*A_i, clip(rho, 1 - eps_low, 1 + eps_high)*A_i)
 *   kl     = exp(l_ref - l) - (l_ref - l) - 1                  (k3: >= 0, unbiased for KL(pi||pi_ref))
 *   loss_t = -s + beta*kl
 *   dloss_t/dl = -rho*A_i (0 where the clip is active) + beta*(1 - exp(l_ref - l))
 * The clip is active where it decides the min: A_i > 0 and rho > 1 + eps_high, or A_i < 0 and
 * rho < 1 - eps_low. The step's loss weighs each token by
 *   sequence averaging (default): 1 / (sequences in the step * |o_i|)  — DeepSeekMath's
 *                                  (1/G) sum_i (1/|o_i|) sum_t, then the mean over groups
 *   token averaging:              1 / (completion tokens in the step) — DAPO's token-level mean
 */
#ifndef DS_RL_GRPO_H
#define DS_RL_GRPO_H

#include <stdint.h>

typedef enum { DS_GRPO_AVG_SEQUENCE = 0, DS_GRPO_AVG_TOKEN = 1 } ds_grpo_avg;

typedef struct {
    double eps_low, eps_high; /* clip range [1 - eps_low, 1 + eps_high] (DeepSeekMath: 0.2 both) */
    double beta;              /* weight of the KL penalty (0: no reference model needed) */
    ds_grpo_avg avg;
} ds_grpo_opts;

/* Added to the group's standard deviation before dividing (as TRL does), so a group whose rewards
 * barely differ does not blow its advantages up. */
#define DS_GRPO_STD_EPS 1e-4
/* A group whose reward std is at most this counts as having no variance: its advantages are 0. */
#define DS_GRPO_ZERO_STD 1e-8

/* Advantages of n_groups groups of G >= 2 rewards each (group g = r[g*G .. g*G+G)):
 *   A = (r - mean) / (std + DS_GRPO_STD_EPS)   with scale_std (std: the unbiased sample deviation)
 *   A = r - mean                                without (Dr. GRPO)
 * and A = 0 exactly in a group with std <= DS_GRPO_ZERO_STD. group_std[n_groups] may be NULL.
 * Returns the number of such zero-variance groups. */
int ds_grpo_advantages(const double *r, int n_groups, int G, int scale_std, double *adv, double *group_std);

/* The k3 estimate of KL(pi || pi_ref) at one token. */
double ds_grpo_kl_k3(double logp, double ref_logp);

/* One token: its loss (before the averaging weight), d loss / d logp, and what the statistics need. */
typedef struct {
    double loss, loss_pg, kl, ratio, dlogp;
    int clip_low, clip_high; /* the clip is active at the low / high end */
} ds_grpo_token_out;

/* ref_logp is ignored when beta == 0. */
void ds_grpo_token(const ds_grpo_opts *o, double logp, double old_logp, double ref_logp, double adv,
                   ds_grpo_token_out *out);

/* What one optimizer step's update looked like (sums over its completion tokens). */
typedef struct {
    double loss, loss_pg, loss_kl; /* the step's loss and its two parts, weighted as the loss */
    double kl_sum, entropy_sum;    /* plain sums over tokens (means = sum / tokens) */
    int64_t tokens, entropy_tokens, clip_low, clip_high;
    double ratio_min, ratio_max;
} ds_grpo_stats;

void ds_grpo_stats_reset(ds_grpo_stats *st);

/* One sequence's completion tokens, in order. */
typedef struct {
    const float *logp;     /* [n] the current policy (training forward) */
    const float *old_logp; /* [n] from sampling */
    const float *ref_logp; /* [n] the reference, or NULL when beta == 0 */
    const float *entropy;  /* [n] the policy's entropy at each token, or NULL */
    int n;
    double adv;
    double weight;         /* each token's share of the step's loss (ds_grpo_weight) */
} ds_grpo_seq;

/* Each token's weight for a sequence of n tokens, in a step of n_seq sequences and n_tok tokens. */
double ds_grpo_weight(ds_grpo_avg avg, int n, int64_t n_seq, int64_t n_tok);

/* Writes dlogp[0..n) = d(step loss)/d logp and adds the sequence to st. */
void ds_grpo_seq_loss(const ds_grpo_opts *o, const ds_grpo_seq *s, float *dlogp, ds_grpo_stats *st);

#endif
