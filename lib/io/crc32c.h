/* crc32c.h — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of token shard frames.
 *
 * Owns: one checksum function, SSE4.2's crc32 instruction where the compiler targets it, else
 * slicing-by-8 tables. crc32c("123456789") = 0xE3069283 (RFC 3720).
 */
#ifndef DS_IO_CRC32C_H
#define DS_IO_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a running CRC: start with crc = 0. */
uint32_t ds_crc32c(uint32_t crc, const void *data, size_t n);
/* The table version, whatever the target (tests compare the two). */
uint32_t ds_crc32c_portable(uint32_t crc, const void *data, size_t n);

#endif
