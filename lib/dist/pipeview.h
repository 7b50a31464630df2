/* pipeview.h — what `ds-pretrain --print-schedule` shows of a pipeline schedule (dist/pipesched.h).
 *
 * Owns: the timeline as text (as Figure 5 of the DeepSeek-V3 report: one line per rank, a cell per op
 * with its micro-batch and kind, overlapped pairs joined, idle time dotted), the same timeline as a PNG
 * (core/plot.h), and the bubble and memory accounting of the report's Table 2 for the three schedules
 * beside what the generated schedules measure. All of it drawn at the view costs below, the ones the
 * report's figures use (forward, input-gradient and weight-gradient chunks equal; a full backward the
 * two halves; an F&B pair the sum of its ops): there Table 2's closed forms are exact.
 */
#ifndef DS_DIST_PIPEVIEW_H
#define DS_DIST_PIPEVIEW_H

#include "core/strbuf.h"
#include "dist/pipesched.h"

/* F = 1, B = 2 (so B's input half = W = 1), F&B = 3, no transfer time. */
extern const ds_pipe_costs ds_pipe_view_costs;

/* The timeline at the view costs: a title line, a line per rank ("rank R |" then one cell per op, a
 * time unit as `unit` columns: "<mb><op>" left-aligned and '|' at the op's end; pairs as
 * "<mb>F&<mb>BW"; idle units as dots; then the rank's bubble and peak activations), and a legend. */
int ds_pipe_timeline_text(const ds_pipe_schedule *s, ds_strbuf *out);

/* The timeline as a PNG at `path` (atomic; "-" = stdout): a row per rank, a box per op coloured by
 * kind (lighter for chunk 1, the reverse direction) with its micro-batch number where it fits, a black
 * frame around each overlapped pair, and a legend. */
int ds_pipe_timeline_png(const ds_pipe_schedule *s, const char *path);

/* Table 2 for PP stages and n_mb micro-batches: per schedule its bubble formula, the formula's value
 * and the simulated bubble (largest over the ranks) at the view costs, parameters per rank (1x, 1x,
 * 2x: chunks held) and peak activations (PP, PP, PP+1) formula and measured. A schedule that cannot
 * run with these numbers (DualPipe's requirements) says why in its row. */
int ds_pipe_table2_text(int pp, int n_mb, ds_strbuf *out);

#endif
