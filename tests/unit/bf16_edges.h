/* bf16_edges.h — fp32 bit patterns at the edges of rounding to bf16 and the bf16-grid values they must become
 * (nearest even, worked out by hand from the definition), for the rounding tests of the CPU and GPU tables. */
#ifndef DS_TESTS_BF16_EDGES_H
#define DS_TESTS_BF16_EDGES_H

#include <stdint.h>

static const uint32_t bf16_edges[][2] = {
    {0x3f808000u, 0x3f800000u}, /* tie between 1 and 1+2^-7: to even (down) */
    {0x3f818000u, 0x3f820000u}, /* tie, odd lower neighbour: up */
    {0x3f808001u, 0x3f810000u}, /* just above the tie: up */
    {0x3f807fffu, 0x3f800000u}, /* just below the tie: down */
    {0xbf818000u, 0xbf820000u}, /* negative tie: magnitude to even */
    {0x7f7fffffu, 0x7f800000u}, /* max finite fp32 rounds past bf16's max: Inf */
    {0x7f7f7fffu, 0x7f7f0000u}, /* below the last tie: bf16's max finite */
    {0x7f800000u, 0x7f800000u}, /* Inf */
    {0xff800000u, 0xff800000u}, /* -Inf */
    {0x7fc00000u, 0x7fc00000u}, /* quiet NaN */
    {0x7f800001u, 0x7fc00000u}, /* signalling NaN, payload only in the low half: made quiet */
    {0xffa12345u, 0xffe10000u}, /* negative NaN: sign and top payload kept, quiet */
    {0x00000001u, 0x00000000u}, /* smallest denormal: rounds to 0 (no flush: by value) */
    {0x00008000u, 0x00000000u}, /* denormal tie, even: 0 */
    {0x00018000u, 0x00020000u}, /* denormal tie, odd: up */
    {0x007fffffu, 0x00800000u}, /* largest denormal rounds up to the smallest normal */
    {0x80000000u, 0x80000000u}, /* -0 */
    {0x00800000u, 0x00800000u}, /* smallest normal, on the grid */
};
enum { BF16_EDGES = sizeof bf16_edges / sizeof bf16_edges[0] };

#endif
