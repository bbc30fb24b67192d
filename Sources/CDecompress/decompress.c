// The decompressors behind CDecompress.h. See the header for the contract.
#include "CDecompress.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <lz4.h>
#include <zstd.h>
#include <zstd_errors.h>

// ---- gzip ------------------------------------------------------------------------

long swl_gunzip(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    // zlib counts in uInt (32 bits); the kernel caps us far below that.
    if (in_len > UINT_MAX || out_cap > UINT_MAX || out_cap > LONG_MAX) return SWL_DC_TOO_LARGE;
    z_stream s;
    memset(&s, 0, sizeof s);
    // 16 + MAX_WBITS: expect a gzip wrapper (header and CRC-32/ISIZE trailer).
    if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) return SWL_DC_NOMEM;
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)in_len;
    s.next_out = out;
    s.avail_out = (uInt)out_cap;
    int rc = inflate(&s, Z_FINISH);
    long result;
    if (rc == Z_STREAM_END) {
        result = (long)s.total_out;
    } else if (rc == Z_BUF_ERROR || rc == Z_OK) {
        // Z_FINISH with all input available: stuck either for output room or
        // for more input.
        result = s.avail_out == 0 ? SWL_DC_OVERFLOW : SWL_DC_TRUNCATED;
    } else if (rc == Z_MEM_ERROR) {
        result = SWL_DC_NOMEM;
    } else {
        result = SWL_DC_CORRUPT;
    }
    inflateEnd(&s);
    return result;
}

// ---- LZ4 legacy ------------------------------------------------------------------

#define LZ4_LEGACY_MAGIC 0x184C2102u
#define LZ4_LEGACY_BLOCK (8u << 20)

static uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

long swl_unlz4_legacy(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (out_cap > LONG_MAX) return SWL_DC_TOO_LARGE;
    if (in_len < 4 || load_le32(in) != LZ4_LEGACY_MAGIC) return SWL_DC_CORRUPT;
    // No block can be bigger than the worst case of compressing 8 MiB.
    const uint32_t max_block = (uint32_t)LZ4_compressBound((int)LZ4_LEGACY_BLOCK);
    size_t pos = 4, produced = 0;
    while (pos < in_len) {
        if (in_len - pos < 4) return SWL_DC_TRUNCATED;
        uint32_t n = load_le32(in + pos);
        pos += 4;
        if (n == LZ4_LEGACY_MAGIC) continue;  // a new frame, concatenated
        if (n == 0 || n > max_block) return SWL_DC_CORRUPT;
        if (n > in_len - pos) return SWL_DC_TRUNCATED;
        size_t room = out_cap - produced;
        int cap = room < LZ4_LEGACY_BLOCK ? (int)room : (int)LZ4_LEGACY_BLOCK;
        int r = LZ4_decompress_safe((const char *)in + pos, (char *)out + produced, (int)n, cap);
        if (r < 0) {
            if (room >= LZ4_LEGACY_BLOCK) return SWL_DC_CORRUPT;
            // LZ4 reports "would not fit" like corruption. Tell them apart by
            // retrying into a full-size scratch block (error path only).
            char *scratch = malloc(LZ4_LEGACY_BLOCK);
            if (!scratch) return SWL_DC_NOMEM;
            int again = LZ4_decompress_safe((const char *)in + pos, scratch, (int)n, (int)LZ4_LEGACY_BLOCK);
            free(scratch);
            return again < 0 ? SWL_DC_CORRUPT : SWL_DC_OVERFLOW;
        }
        produced += (size_t)r;
        pos += n;
    }
    return (long)produced;
}

// ---- zstd ------------------------------------------------------------------------

long swl_unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (out_cap > LONG_MAX) return SWL_DC_TOO_LARGE;
    ZSTD_DCtx *d = ZSTD_createDCtx();
    if (!d) return SWL_DC_NOMEM;
    // The kernel compresses with `zstd -22 --ultra` (large windows). Decoding
    // into one flat buffer needs no window allocation, so allow any size.
    // 31 is ZSTD_WINDOWLOG_MAX_64, which zstd.h only defines for static linking.
    ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, 31);
    size_t r = ZSTD_decompressDCtx(d, out, out_cap, in, in_len);
    ZSTD_freeDCtx(d);
    if (!ZSTD_isError(r)) return (long)r;
    switch (ZSTD_getErrorCode(r)) {
    case ZSTD_error_dstSize_tooSmall: return SWL_DC_OVERFLOW;
    case ZSTD_error_srcSize_wrong: return SWL_DC_TRUNCATED;
    case ZSTD_error_memory_allocation: return SWL_DC_NOMEM;
    default: return SWL_DC_CORRUPT;
    }
}

// ---- test compressors --------------------------------------------------------------

size_t swl_testing_compress_bound(size_t len) {
    // The largest of the three formats' worst cases, plus framing.
    size_t z = compressBound((uLong)len) + 64;
    size_t l = len + len / 255 + 16 + 8 * (len / LZ4_LEGACY_BLOCK + 1) + 8;
    size_t s = ZSTD_compressBound(len);
    size_t m = z > l ? z : l;
    return m > s ? m : s;
}

long swl_testing_gzip(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (in_len > UINT_MAX || out_cap > UINT_MAX) return SWL_DC_TOO_LARGE;
    z_stream s;
    memset(&s, 0, sizeof s);
    if (deflateInit2(&s, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) return SWL_DC_NOMEM;
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)in_len;
    s.next_out = out;
    s.avail_out = (uInt)out_cap;
    int rc = deflate(&s, Z_FINISH);
    long result = rc == Z_STREAM_END ? (long)s.total_out : SWL_DC_OVERFLOW;
    deflateEnd(&s);
    return result;
}

long swl_testing_lz4_legacy(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    if (out_cap < 4) return SWL_DC_OVERFLOW;
    store_le32(out, LZ4_LEGACY_MAGIC);
    size_t pos = 0, w = 4;
    while (pos < in_len) {
        size_t chunk = in_len - pos < LZ4_LEGACY_BLOCK ? in_len - pos : LZ4_LEGACY_BLOCK;
        if (out_cap - w < 4) return SWL_DC_OVERFLOW;
        size_t room = out_cap - w - 4;
        int cap = room > INT_MAX ? INT_MAX : (int)room;
        int n = LZ4_compress_default((const char *)in + pos, (char *)out + w + 4, (int)chunk, cap);
        if (n <= 0) return SWL_DC_OVERFLOW;
        store_le32(out + w, (uint32_t)n);
        w += 4 + (size_t)n;
        pos += chunk;
    }
    return (long)w;
}

long swl_testing_zstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap) {
    size_t r = ZSTD_compress(out, out_cap, in, in_len, 3);
    return ZSTD_isError(r) ? SWL_DC_OVERFLOW : (long)r;
}

// ---- streaming decompressors -------------------------------------------------------

struct swl_dstream {
    int kind;
    z_stream z;
    ZSTD_DCtx *zstd;
};

swl_dstream *swl_dstream_new(int kind) {
    if (kind != SWL_DS_GZIP && kind != SWL_DS_ZSTD) return NULL;
    swl_dstream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->kind = kind;
    if (kind == SWL_DS_GZIP) {
        // 16 + MAX_WBITS: a gzip wrapper only (magic, CRC-32 and ISIZE checked).
        if (inflateInit2(&s->z, 16 + MAX_WBITS) != Z_OK) {
            free(s);
            return NULL;
        }
    } else {
        s->zstd = ZSTD_createDCtx();
        if (!s->zstd) {
            free(s);
            return NULL;
        }
        // The library's default streaming window limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT,
        // 128 MiB), spelled out: a hostile frame cannot make us allocate more.
        ZSTD_DCtx_setParameter(s->zstd, ZSTD_d_windowLogMax, 27);
    }
    return s;
}

int swl_dstream_step(swl_dstream *s, const uint8_t *in, size_t in_len, size_t *in_used,
                     uint8_t *out, size_t out_cap, size_t *out_made) {
    *in_used = 0;
    *out_made = 0;
    if (s->kind == SWL_DS_GZIP) {
        // zlib counts in uInt: give it at most UINT_MAX of each per call.
        uInt avail_in = in_len > UINT_MAX ? UINT_MAX : (uInt)in_len;
        uInt avail_out = out_cap > UINT_MAX ? UINT_MAX : (uInt)out_cap;
        s->z.next_in = (Bytef *)in;
        s->z.avail_in = avail_in;
        s->z.next_out = out;
        s->z.avail_out = avail_out;
        int rc = inflate(&s->z, Z_NO_FLUSH);
        *in_used = avail_in - s->z.avail_in;
        *out_made = avail_out - s->z.avail_out;
        s->z.next_in = NULL;
        s->z.next_out = NULL;
        switch (rc) {
        case Z_OK: return SWL_DS_MORE;
        case Z_BUF_ERROR: return SWL_DS_MORE;  // no progress possible: needs input (or room)
        case Z_STREAM_END: return SWL_DS_END;
        case Z_MEM_ERROR: return SWL_DC_NOMEM;
        default: return SWL_DC_CORRUPT;        // Z_DATA_ERROR, Z_NEED_DICT, Z_STREAM_ERROR
        }
    }
    ZSTD_inBuffer zin = {in, in_len, 0};
    ZSTD_outBuffer zout = {out, out_cap, 0};
    size_t r = ZSTD_decompressStream(s->zstd, &zout, &zin);
    *in_used = zin.pos;
    *out_made = zout.pos;
    if (!ZSTD_isError(r)) return r == 0 ? SWL_DS_END : SWL_DS_MORE;
    switch (ZSTD_getErrorCode(r)) {
    case ZSTD_error_memory_allocation: return SWL_DC_NOMEM;
    case ZSTD_error_frameParameter_windowTooLarge: return SWL_DC_TOO_LARGE;
    default: return SWL_DC_CORRUPT;
    }
}

int swl_dstream_reset(swl_dstream *s) {
    if (s->kind == SWL_DS_GZIP) return inflateReset(&s->z) == Z_OK ? 0 : SWL_DC_CORRUPT;
    size_t r = ZSTD_DCtx_reset(s->zstd, ZSTD_reset_session_only);
    return ZSTD_isError(r) ? SWL_DC_CORRUPT : 0;
}

void swl_dstream_free(swl_dstream *s) {
    if (!s) return;
    if (s->kind == SWL_DS_GZIP) inflateEnd(&s->z);
    else ZSTD_freeDCtx(s->zstd);
    free(s);
}
