// CDecompress: the kernel payload decompressors, over Debian's zlib, liblz4
// and libzstd.
//
// Each call takes a whole input buffer and a whole output buffer: the kernel
// tells us the decompressed size up front (the 4-byte trailer of the bzImage
// payload), so there is no streaming. The result is the number of bytes
// written (>= 0) or one of the negative SWL_DC_* codes below. No call reads or
// writes outside [in, in+in_len) and [out, out+out_cap).
#ifndef CDECOMPRESS_H
#define CDECOMPRESS_H

#include <stddef.h>
#include <stdint.h>

/// The input is not valid data of the format (bad header, checksum, block).
#define SWL_DC_CORRUPT (-1)
/// The data decompresses to more than `out_cap` bytes.
#define SWL_DC_OVERFLOW (-2)
/// The library could not allocate its state.
#define SWL_DC_NOMEM (-3)
/// The input ends before the compressed stream does.
#define SWL_DC_TRUNCATED (-4)
/// A size does not fit the library's integer types.
#define SWL_DC_TOO_LARGE (-5)

/// Inflates one gzip member. Bytes after the member are ignored.
long swl_gunzip(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);

/// Decompresses the LZ4 legacy frame format that the kernel build uses
/// (`lz4 -l`): the magic 0x184C2102, then [u32 LE block size][block]... with
/// each block at most 8 MiB decompressed. A block size equal to the magic
/// starts a new frame. The input must end exactly after a block.
long swl_unlz4_legacy(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);

/// Decompresses one or more concatenated zstd frames.
long swl_unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);

// ---- compressors, for the tests only ------------------------------------------
// The tests build payloads in memory rather than committing binary fixtures.
// They return the compressed length, or a negative SWL_DC_* code.

/// A bound on the compressed size of `len` bytes for any of the test compressors.
size_t swl_testing_compress_bound(size_t len);
/// gzip (deflate level 9, gzip wrapper).
long swl_testing_gzip(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
/// LZ4 legacy frame, 8 MiB blocks, like `lz4 -l`.
long swl_testing_lz4_legacy(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
/// One zstd frame.
long swl_testing_zstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);

// ---- streaming decompressors -------------------------------------------------
// For image layers, whose decompressed size is not known up front: the caller
// feeds input and drains output in pieces, with memory bounded by the library
// state (zlib: a 32 KiB window; zstd: at most a 128 MiB window, the library's
// default limit; frames that need more are refused with SWL_DC_TOO_LARGE).

/// A gzip stream (inflate with windowBits 16 + 15).
#define SWL_DS_GZIP 1
/// A zstd stream (ZSTD_decompressStream).
#define SWL_DS_ZSTD 2

/// swl_dstream_step made progress or needs more input or output room.
#define SWL_DS_MORE 0
/// swl_dstream_step finished a gzip member or a zstd frame, with all of its
/// output written.
#define SWL_DS_END 1

/// An opaque streaming decompressor.
typedef struct swl_dstream swl_dstream;

/// A decompressor of `kind` (SWL_DS_GZIP or SWL_DS_ZSTD), or NULL when the
/// kind is unknown or memory runs out.
swl_dstream *swl_dstream_new(int kind);

/// Decompresses from [in, in+in_len) into [out, out+out_cap). Sets *in_used to
/// the input bytes consumed and *out_made to the output bytes written (both
/// within the buffers, even on error). Returns SWL_DS_MORE, SWL_DS_END, or a
/// negative SWL_DC_* code (SWL_DC_CORRUPT, SWL_DC_NOMEM, SWL_DC_TOO_LARGE).
/// With SWL_DS_MORE and nothing consumed or made, the decompressor needs more
/// input than it was given. After SWL_DS_END a gzip stream must be reset
/// (swl_dstream_reset) before the next member; a zstd stream starts the next
/// frame by itself. After an error only swl_dstream_free is allowed.
int swl_dstream_step(swl_dstream *s, const uint8_t *in, size_t in_len, size_t *in_used,
                     uint8_t *out, size_t out_cap, size_t *out_made);

/// Prepares for the next gzip member or zstd frame. Returns 0, or a negative
/// SWL_DC_* code.
int swl_dstream_reset(swl_dstream *s);

/// Frees the decompressor (NULL is allowed).
void swl_dstream_free(swl_dstream *s);

#endif
