/*
 * ebscore.c - see ebscore.h for the contract of every function.
 *
 * XXH3 comes from the system's xxhash.h (Debian: libxxhash-dev), compiled inline into
 * this file: no third-party source in our tree and nothing to link against.
 */
#if defined(__has_include)
#  if !__has_include(<xxhash.h>)
#    error "xxhash.h not found: install the xxHash development header (Debian/Ubuntu: apt-get install libxxhash-dev)"
#  endif
#endif

#define XXH_INLINE_ALL
#include <xxhash.h>

#if !defined(XXH_VERSION_NUMBER) || XXH_VERSION_NUMBER < 800
#  error "xxhash.h is too old: XXH3-128 needs xxHash >= 0.8 (Debian/Ubuntu: libxxhash-dev)"
#endif

#include <string.h>

#include "ebscore.h"

size_t ebs_fp_size(void)
{
    return EBS_FP_SIZE;
}

/*
 * All-zero test that stops at the first nonzero byte.
 *
 * Head bytes until the pointer is 8-byte aligned, then blocks of 64 bytes OR-ed
 * together as eight 64-bit words (the compiler turns this into vector loads), testing
 * once per block, then the tail.  A nonzero byte is thus found within the 64-byte block
 * that holds it: data that is not zero costs almost nothing to reject, which matters
 * because scan_chunks runs this before hashing every chunk.
 */
static int is_zero(const uint8_t *p, size_t len)
{
    while (len > 0 && ((uintptr_t)p & 7u) != 0) {
        if (*p != 0)
            return 0;
        p++;
        len--;
    }
    while (len >= 64) {
        uint64_t w[8];
        memcpy(w, p, sizeof w); /* aligned; memcpy keeps it free of aliasing rules */
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0)
            return 0;
        p += 64;
        len -= 64;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof w);
        if (w != 0)
            return 0;
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        if (*p != 0)
            return 0;
        p++;
        len--;
    }
    return 1;
}

int ebs_is_zero(const uint8_t *buf, size_t len)
{
    if (len == 0)
        return 1;
    if (buf == NULL)
        return 0;
    return is_zero(buf, len);
}

int ebs_fingerprint(const uint8_t *buf, size_t len, uint8_t *fp_out)
{
    XXH128_canonical_t canon;

    if (fp_out == NULL || (buf == NULL && len > 0))
        return EBS_EINVAL;
    XXH128_canonicalFromHash(&canon, XXH3_128bits(buf, len));
    memcpy(fp_out, canon.digest, EBS_FP_SIZE);
    return EBS_OK;
}

int ebs_scan_chunks(const uint8_t *buf, size_t len, size_t chunk_size, uint8_t *fps_out, uint8_t *zero_out)
{
    size_t i, off;

    if (chunk_size == 0)
        return EBS_EINVAL;
    if (len == 0)
        return EBS_OK;
    if (buf == NULL || fps_out == NULL || zero_out == NULL)
        return EBS_EINVAL;

    for (i = 0, off = 0; off < len; i++, off += chunk_size) {
        size_t n = len - off < chunk_size ? len - off : chunk_size;
        uint8_t *fp = fps_out + i * EBS_FP_SIZE;

        if (is_zero(buf + off, n)) {
            zero_out[i] = 1;
            memset(fp, 0, EBS_FP_SIZE);
        } else {
            XXH128_canonical_t canon;
            zero_out[i] = 0;
            XXH128_canonicalFromHash(&canon, XXH3_128bits(buf + off, n));
            memcpy(fp, canon.digest, EBS_FP_SIZE);
        }
        if (len - off <= chunk_size)
            break; /* last chunk; also keeps off + chunk_size from wrapping */
    }
    return EBS_OK;
}

int ebs_diff_records(const uint8_t *a, const uint8_t *b, size_t n, size_t width, uint32_t *idx_out, size_t *count_out)
{
    size_t i, count = 0, span;

    if (width == 0 || count_out == NULL)
        return EBS_EINVAL;
    *count_out = 0;
    if (n == 0)
        return EBS_OK;
    if (a == NULL || b == NULL || idx_out == NULL || n > SIZE_MAX / width)
        return EBS_EINVAL;
    if (n - 1 > UINT32_MAX)
        return EBS_EOVERFLOW;

    /*
     * Maps usually differ in few records: compare about 4 KiB of records with one
     * memcmp and only look at single records inside a span that differs.
     */
    span = width >= 4096 ? 1 : 4096 / width;
    for (i = 0; i < n; i += span) {
        size_t m = n - i < span ? n - i : span;
        size_t j;

        if (memcmp(a + i * width, b + i * width, m * width) == 0)
            continue;
        for (j = i; j < i + m; j++) {
            if (memcmp(a + j * width, b + j * width, width) != 0)
                idx_out[count++] = (uint32_t)j;
        }
    }
    *count_out = count;
    return EBS_OK;
}

int ebs_zero_runs(const uint8_t *buf, size_t len, size_t granule, uint32_t *runs_out, size_t max_runs, size_t *count_out)
{
    size_t off, count = 0;

    if (granule == 0 || count_out == NULL)
        return EBS_EINVAL;
    *count_out = 0;
    if (len == 0)
        return EBS_OK;
    if (buf == NULL || runs_out == NULL)
        return EBS_EINVAL;
    if (len > UINT32_MAX)
        return EBS_EOVERFLOW;

    for (off = 0; off < len; off += granule) {
        size_t n = len - off < granule ? len - off : granule;
        uint32_t zero = (uint32_t)is_zero(buf + off, n);

        if (count > 0 && runs_out[2 * count - 1] == zero) {
            runs_out[2 * count - 2] += (uint32_t)n; /* total <= len <= UINT32_MAX */
        } else {
            if (count == max_runs) {
                *count_out = count;
                return EBS_ENOSPC;
            }
            runs_out[2 * count] = (uint32_t)n;
            runs_out[2 * count + 1] = zero;
            count++;
        }
        if (len - off <= granule)
            break; /* keeps off + granule from wrapping */
    }
    *count_out = count;
    return EBS_OK;
}
