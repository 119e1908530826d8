/*
 * ebscore.h - the C core of ebsengine: byte crunching only.
 *
 * Every function takes pointer + length arguments, writes into caller-owned output
 * buffers, returns an int status (EBS_OK or a negative ebs_status) and never touches
 * Python or any global state, so the cffi wrapper (ebsengine/codec.py) calls it with
 * the GIL released and from any number of threads at once.
 *
 * This file is also the cffi cdef: csrc/build_ffi.py drops every line starting with
 * '#' and hands the rest to ffi.cdef().  So: keep declarations on plain lines, no
 * multi-line macros, and expose every size through a function (macros vanish from
 * the cdef).
 */
#ifndef EBSCORE_H
#define EBSCORE_H

#include <stddef.h>
#include <stdint.h>

/* Bytes in one fingerprint: XXH3-128 in canonical (big-endian) byte order. */
#define EBS_FP_SIZE 16

/* Status codes.  0 is success; every failure is negative. */
enum ebs_status {
    EBS_OK = 0,
    EBS_EINVAL = -1,     /* a bad argument: zero chunk_size/width/granule, NULL pointer */
    EBS_ENOSPC = -2,     /* the output array (max_runs) is too small */
    EBS_EOVERFLOW = -3   /* a result does not fit its uint32_t output field */
};

/* Returns EBS_FP_SIZE, so Python reads the size from C at import. */
size_t ebs_fp_size(void);

/*
 * Write the XXH3-128 digest of buf[0..len), canonical (big-endian), to fp_out
 * (EBS_FP_SIZE bytes).  Any len, 0 included; an all-zero buf gets its real digest.
 * Errors: EBS_EINVAL (NULL pointer).
 */
int ebs_fingerprint(const uint8_t *buf, size_t len, uint8_t *fp_out);

/*
 * Cut buf[0..len) into ceil(len / chunk_size) chunks (the last one may be short).
 * For chunk i:
 *   zero_out[i] = 1 and fps_out[16*i .. 16*i+16) = 0   if every byte of it is 0,
 *   zero_out[i] = 0 and fps_out[16*i .. 16*i+16) = XXH3-128 canonical digest otherwise.
 * fps_out holds EBS_FP_SIZE * nchunks bytes, zero_out holds nchunks bytes.
 * len == 0 writes nothing.  Errors: EBS_EINVAL (chunk_size == 0, NULL pointer).
 */
int ebs_scan_chunks(const uint8_t *buf, size_t len, size_t chunk_size, uint8_t *fps_out, uint8_t *zero_out);

/*
 * Compare a and b, each n records of `width` bytes, and write the index of every
 * record that differs, ascending, to idx_out (room for n entries); *count_out gets how
 * many were written.  Errors: EBS_EINVAL (width == 0, NULL pointer), EBS_EOVERFLOW
 * (n - 1 does not fit in uint32_t; nothing is compared).
 */
int ebs_diff_records(const uint8_t *a, const uint8_t *b, size_t n, size_t width, uint32_t *idx_out, size_t *count_out);

/*
 * Describe buf[0..len) as alternating runs at `granule` granularity: each granule
 * (the last one may be short) is zero if every byte of it is 0.  Adjacent granules of
 * the same kind merge, so neighbouring runs always differ.  Run k is written as the
 * pair runs_out[2k] = length in bytes, runs_out[2k+1] = 1 if zero else 0; runs_out
 * has room for max_runs pairs (2 * max_runs uint32_t).  *count_out gets the number of
 * pairs.  len == 0 gives zero runs.  A buffer of ceil(len/granule) granules never needs
 * more than that many runs.
 * Errors: EBS_EINVAL (granule == 0, NULL pointer), EBS_EOVERFLOW (len > UINT32_MAX,
 * as a run might not fit; split the buffer), EBS_ENOSPC (more than max_runs runs;
 * *count_out then holds max_runs and the runs written so far are valid).
 */
int ebs_zero_runs(const uint8_t *buf, size_t len, size_t granule, uint32_t *runs_out, size_t max_runs, size_t *count_out);

/* Returns 1 if buf[0..len) is all zero bytes (len == 0 included), else 0. */
int ebs_is_zero(const uint8_t *buf, size_t len);

#endif /* EBSCORE_H */
