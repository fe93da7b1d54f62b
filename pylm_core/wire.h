/* The PALM envelope on the wire: protobuf-3 varints and length-delimited
 * fields, parsed and written without touching Python objects (nogil).
 *
 * Schema (shared/API.md): pipeline=1 client=2 stage=3(int64) function=4
 * cache=5 (strings), payload=6 (bytes).  Two fields are pylm's own, skipped
 * as unknown fields by protobuf parsers (and kept by them when they
 * re-serialize), so pylm 0.14 peers are not disturbed:
 *   15 `error` (string): a remote exception, for our clients;
 *   16 `flags` (varint): PZ_FLAG_BATCH = the client takes batched replies;
 *   17 `call` (varint): the client's id of the call, so that a late reply
 *      of an earlier call (same pipeline, e.g. a session) is told apart;
 *   18 `lost` (varint): how many workers died holding this message (the
 *      Master's count for poison messages).
 *
 * A batch (pylm-to-pylm links only) is a frame holding several envelopes,
 * each preceded by its length as a varint.
 *
 * The parser accepts what protobuf accepts for that schema: any field order,
 * repeated fields (last wins), unknown fields and groups (skipped), a known
 * field with an unexpected wire type (treated as unknown).  It never reads
 * past `end` and reports the first problem as a negative code.
 */
#ifndef PYLM_WIRE_H
#define PYLM_WIRE_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <stdlib.h>

enum {
    PZ_F_PIPELINE = 0, PZ_F_CLIENT, PZ_F_FUNCTION, PZ_F_CACHE, PZ_F_PAYLOAD,
    PZ_F_ERROR, PZ_NSLICE
};

enum {
    PZ_OK = 0,
    PZ_E_VARINT = -1,      /* truncated or over-long varint (a tag or a
                              length over 5 bytes, as protobuf rejects) */
    PZ_E_FIELD0 = -2,      /* field number 0 or tag over 32 bits */
    PZ_E_WIRETYPE = -3,    /* wire type 6 or 7 */
    PZ_E_LENGTH = -4,      /* length-delimited field runs past the end */
    PZ_E_FIXED = -5,       /* truncated fixed32/fixed64 */
    PZ_E_UTF8 = -6,        /* a string field is not valid UTF-8 */
    PZ_E_GROUP = -7,       /* unbalanced or mismatched group */
    PZ_E_DEPTH = -8        /* groups nested too deeply */
};

#define PZ_MAX_DEPTH 100

typedef struct { const char *p; size_t n; } pz_slice;

#define PZ_FLAG_BATCH 1

typedef struct {
    pz_slice f[PZ_NSLICE];
    int64_t stage;
    uint64_t flags;
    uint64_t call;
    uint64_t lost;
    int bad_field;          /* field number of a UTF-8 failure, for messages */
} pz_env;

static const int pz_field_numbers[PZ_NSLICE] = {1, 2, 4, 5, 6, 15};

static inline int pz_read_varint(const char **pp, const char *end, uint64_t *out)
{
    const unsigned char *p = (const unsigned char *)*pp;
    uint64_t v = 0;
    int shift = 0;
    while (1) {
        if ((const char *)p >= end) return PZ_E_VARINT;
        unsigned char b = *p++;
        if (shift < 64) v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
        shift += 7;
        if (shift >= 70) return PZ_E_VARINT;
    }
    *pp = (const char *)p;
    *out = v;
    return PZ_OK;
}

/* A tag or a length: protobuf (upb's _upb_Decoder_DecodeTag/DecodeSize, and
 * C++'s ReadTag/ReadSize) reads these as at most 5 bytes and rejects a longer,
 * zero-padded varint even when its value would fit. */
static inline int pz_read_varint32(const char **pp, const char *end, uint64_t *out)
{
    const char *start = *pp;
    int rc = pz_read_varint(pp, end, out);
    if (rc < 0) return rc;
    if (*pp - start > 5) { *pp = start; return PZ_E_VARINT; }
    return PZ_OK;
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF),
 * as protobuf requires for proto3 strings. */
static inline int pz_utf8_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    /* the usual case, all ASCII (ids, method names): words OR-ed together,
     * the last one overlapping, and one test */
    if (n >= 8) {
        uint64_t acc = 0, w;
        size_t i;
        for (i = 0; i + 8 <= n; i += 8) {
            memcpy(&w, p + i, 8);
            acc |= w;
        }
        memcpy(&w, e - 8, 8);
        if (!((acc | w) & 0x8080808080808080ULL)) return 1;
    } else {
        unsigned char acc = 0;
        size_t i;
        for (i = 0; i < n; i++) acc |= p[i];
        if (!(acc & 0x80)) return 1;
    }
    while (p < e) {
        /* runs of ASCII (ids, method names) 8 bytes at a time */
        while (e - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ULL) break;
            p += 8;
        }
        if (p >= e) break;
        unsigned char c = *p;
        if (c < 0x80) { p++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (e - p < 2 || (p[1] & 0xC0) != 0x80) return 0;
            p += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (e - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && p[1] < 0xA0) return 0;
            if (c == 0xED && p[1] > 0x9F) return 0;
            p += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (e - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80
                || (p[3] & 0xC0) != 0x80) return 0;
            if (c == 0xF0 && p[1] < 0x90) return 0;
            if (c == 0xF4 && p[1] > 0x8F) return 0;
            p += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

/* Skip the value of a field with the given wire type (groups nest). */
static int pz_skip(const char **pp, const char *end, int wt, uint32_t field, int depth)
{
    uint64_t v;
    int rc;
    switch (wt) {
    case 0:
        return pz_read_varint(pp, end, &v);
    case 1:
        if (end - *pp < 8) return PZ_E_FIXED;
        *pp += 8;
        return PZ_OK;
    case 5:
        if (end - *pp < 4) return PZ_E_FIXED;
        *pp += 4;
        return PZ_OK;
    case 2:
        if ((rc = pz_read_varint32(pp, end, &v)) < 0) return rc;
        if (v > (uint64_t)(end - *pp)) return PZ_E_LENGTH;
        *pp += v;
        return PZ_OK;
    case 3:
        if (depth >= PZ_MAX_DEPTH) return PZ_E_DEPTH;
        while (1) {
            uint64_t tag;
            if (*pp >= end) return PZ_E_GROUP;
            if ((rc = pz_read_varint32(pp, end, &tag)) < 0) return rc;
            /* Field number 0 is only refused at the top level: inside a
             * skipped group upb skips it like any other field (its
             * upb_WireReader_SkipGroup reads values, not field numbers). */
            if (tag > 0xFFFFFFFFu) return PZ_E_FIELD0;
            int iwt = (int)(tag & 7);
            if (iwt == 4) {
                if ((uint32_t)(tag >> 3) != field) return PZ_E_GROUP;
                return PZ_OK;
            }
            if ((rc = pz_skip(pp, end, iwt, (uint32_t)(tag >> 3), depth + 1)) < 0) return rc;
        }
    case 4:
        return PZ_E_GROUP;
    default:
        return PZ_E_WIRETYPE;
    }
}

static inline int pz_slot_of(uint32_t field)
{
    switch (field) {
    case 1: return PZ_F_PIPELINE;
    case 2: return PZ_F_CLIENT;
    case 4: return PZ_F_FUNCTION;
    case 5: return PZ_F_CACHE;
    case 6: return PZ_F_PAYLOAD;
    case 15: return PZ_F_ERROR;
    default: return -1;
    }
}

/* Parse buf[0:n] into e (slices point into buf).  0 or a PZ_E_* code.
 * Its cost is per field (payloads are not scanned): tens of ns for a small
 * envelope, so the loops call it with the GIL held, once per envelope
 * (releasing and taking the GIL around it cost as much again). */
static int pz_parse(const char *buf, size_t n, pz_env *e)
{
    const char *p = buf, *end = buf + n;
    int rc, i;
    for (i = 0; i < PZ_NSLICE; i++) { e->f[i].p = buf; e->f[i].n = 0; }
    e->stage = 0;
    e->flags = 0;
    e->call = 0;
    e->lost = 0;
    e->bad_field = 0;
    while (p < end) {
        uint64_t tag, v;
        /* tags and lengths under 128 (all of ours but payloads' lengths
         * and ids past field 15) are one byte: read without the loop */
        if (!(*(const unsigned char *)p & 0x80)) {
            tag = *(const unsigned char *)p++;
        } else if ((rc = pz_read_varint32(&p, end, &tag)) < 0) {
            return rc;
        }
        if (tag > 0xFFFFFFFFu || (tag >> 3) == 0) return PZ_E_FIELD0;
        uint32_t field = (uint32_t)(tag >> 3);
        int wt = (int)(tag & 7);
        if (field == 3 && wt == 0) {
            if ((rc = pz_read_varint(&p, end, &v)) < 0) return rc;
            e->stage = (int64_t)v;
            continue;
        }
        if (field >= 16 && field <= 18 && wt == 0) {
            if ((rc = pz_read_varint(&p, end, &v)) < 0) return rc;
            if (field == 16) e->flags = v;
            else if (field == 17) e->call = v;
            else e->lost = v;
            continue;
        }
        int slot = pz_slot_of(field);
        if (slot >= 0 && wt == 2) {
            if (p < end && !(*(const unsigned char *)p & 0x80)) {
                v = *(const unsigned char *)p++;
            } else if ((rc = pz_read_varint32(&p, end, &v)) < 0) {
                return rc;
            }
            if (v > (uint64_t)(end - p)) return PZ_E_LENGTH;
            if (slot != PZ_F_PAYLOAD && !pz_utf8_ok(p, (size_t)v)) {
                e->bad_field = (int)field;
                return PZ_E_UTF8;
            }
            e->f[slot].p = p;
            e->f[slot].n = (size_t)v;
            p += v;
            continue;
        }
        if ((rc = pz_skip(&p, end, wt, field, 0)) < 0) return rc;
    }
    return PZ_OK;
}

static inline size_t pz_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

static inline char *pz_put_varint(char *p, uint64_t v)
{
    while (v >= 0x80) { *p++ = (char)((v & 0x7f) | 0x80); v >>= 7; }
    *p++ = (char)v;
    return p;
}

/* Bytes needed for e in canonical protobuf order (defaults omitted), its
 * payload field holding `head` (NULL: nothing) before e's payload: a
 * reply's header written ahead of data that is not copied to join them
 * (a numpy array a method returned, pylm/arrays.py). */
static inline size_t pz_encoded_size_h(const pz_env *e, const pz_slice *head)
{
    size_t total = 0, n;
    int i;
    for (i = 0; i < PZ_NSLICE; i++) {
        n = e->f[i].n;
        if (i == PZ_F_PAYLOAD && head) n += head->n;
        if (n)
            total += pz_varint_len((uint64_t)pz_field_numbers[i] << 3)
                     + pz_varint_len(n) + n;
    }
    if (e->stage) total += 1 + pz_varint_len((uint64_t)e->stage);
    if (e->flags) total += 2 + pz_varint_len(e->flags);
    if (e->call) total += 2 + pz_varint_len(e->call);
    if (e->lost) total += 2 + pz_varint_len(e->lost);
    return total;
}

static inline size_t pz_encoded_size(const pz_env *e)
{
    return pz_encoded_size_h(e, NULL);
}

static inline char *pz_put_field(char *p, int field, const pz_slice *s)
{
    p = pz_put_varint(p, ((uint64_t)field << 3) | 2);
    p = pz_put_varint(p, s->n);
    if (s->n) memcpy(p, s->p, s->n);
    return p + s->n;
}

/* Write e into out (pz_encoded_size_h bytes), `head` (NULL: nothing)
 * before its payload; returns the end pointer. */
static inline char *pz_encode_h(const pz_env *e, const pz_slice *head, char *out)
{
    char *p = out;
    size_t hn = head ? head->n : 0;
    if (e->f[PZ_F_PIPELINE].n) p = pz_put_field(p, 1, &e->f[PZ_F_PIPELINE]);
    if (e->f[PZ_F_CLIENT].n) p = pz_put_field(p, 2, &e->f[PZ_F_CLIENT]);
    if (e->stage) { *p++ = (char)(3 << 3); p = pz_put_varint(p, (uint64_t)e->stage); }
    if (e->f[PZ_F_FUNCTION].n) p = pz_put_field(p, 4, &e->f[PZ_F_FUNCTION]);
    if (e->f[PZ_F_CACHE].n) p = pz_put_field(p, 5, &e->f[PZ_F_CACHE]);
    if (hn) {
        p = pz_put_varint(p, (6 << 3) | 2);
        p = pz_put_varint(p, hn + e->f[PZ_F_PAYLOAD].n);
        memcpy(p, head->p, hn);
        p += hn;
        if (e->f[PZ_F_PAYLOAD].n) memcpy(p, e->f[PZ_F_PAYLOAD].p, e->f[PZ_F_PAYLOAD].n);
        p += e->f[PZ_F_PAYLOAD].n;
    } else if (e->f[PZ_F_PAYLOAD].n) {
        p = pz_put_field(p, 6, &e->f[PZ_F_PAYLOAD]);
    }
    if (e->f[PZ_F_ERROR].n) p = pz_put_field(p, 15, &e->f[PZ_F_ERROR]);
    if (e->flags) { *p++ = (char)0x80; *p++ = (char)0x01; p = pz_put_varint(p, e->flags); }
    if (e->call) { *p++ = (char)0x88; *p++ = (char)0x01; p = pz_put_varint(p, e->call); }
    if (e->lost) { *p++ = (char)0x90; *p++ = (char)0x01; p = pz_put_varint(p, e->lost); }
    return p;
}

static inline char *pz_encode(const pz_env *e, char *out)
{
    return pz_encode_h(e, NULL, out);
}

/* The entry of a space-separated `function` at index `stage`, as a slice.
 * Returns 0 when stage is out of range. */
static inline int pz_function_at(const pz_slice *fn, int64_t stage, pz_slice *out)
{
    const char *p = fn->p, *end = fn->p + fn->n;
    int64_t i = 0;
    if (stage < 0) return 0;
    while (1) {
        const char *sp = memchr(p, ' ', (size_t)(end - p));
        const char *stop = sp ? sp : end;
        if (i == stage) { out->p = p; out->n = (size_t)(stop - p); return 1; }
        if (!sp) return 0;
        p = sp + 1;
        i++;
    }
}

/* Next envelope of a batch at *pp: 1 and out set, 0 at the end, or
 * PZ_E_LENGTH / PZ_E_VARINT for a malformed batch. */
static inline int pz_batch_next(const char **pp, const char *end, pz_slice *out)
{
    uint64_t n;
    int rc;
    if (*pp >= end) return 0;
    if ((rc = pz_read_varint(pp, end, &n)) < 0) return rc;
    if (n > (uint64_t)(end - *pp)) return PZ_E_LENGTH;
    out->p = *pp;
    out->n = (size_t)n;
    *pp += n;
    return 1;
}

/* A growable buffer batches are written into (malloc'd; handed to libzmq
 * with free() as the deallocator, so sending it copies nothing). */
typedef struct {
    char *buf;
    size_t len, cap;
    int count;              /* envelopes written */
    int completed;          /* requests finished (worker -> master credit) */
    size_t hint;            /* length of the last batch handed to libzmq */
} pz_batch;

/* A batch handed to libzmq leaves its struct empty; the next one usually
 * grows as large (a job's batches are alike), so its first buffer is that
 * size at once: growing from 4 KiB by realloc copied each batch about once
 * more (measured: 6% of a job's client CPU).  Up to PZ_HINT_MAX, so that one
 * huge batch does not make every later one reserve as much. */
#define PZ_HINT_MAX ((size_t)4 << 20)

static inline int pz_batch_reserve(pz_batch *b, size_t extra)
{
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    if (!b->cap && b->hint > cap) cap = b->hint + b->hint / 8;
    while (cap < b->len + extra) cap *= 2;
    char *grown = (char *)realloc(b->buf, cap);
    if (!grown) return -1;
    b->buf = grown;
    b->cap = cap;
    return 0;
}

/* Append one encoded envelope to the batch (`head` as in pz_encode_h). */
static inline int pz_batch_add_env_h(pz_batch *b, const pz_env *e, const pz_slice *head)
{
    size_t n = pz_encoded_size_h(e, head);
    if (pz_batch_reserve(b, n + 10) < 0) return -1;
    char *p = pz_put_varint(b->buf + b->len, n);
    p = pz_encode_h(e, head, p);
    b->len = (size_t)(p - b->buf);
    b->count++;
    return 0;
}

static inline int pz_batch_add_env(pz_batch *b, const pz_env *e)
{
    return pz_batch_add_env_h(b, e, NULL);
}

/* Append a call envelope made of `prefix` (fields 1, 2, 4 and 5 of a call
 * at stage 0, encoded once by pz_encode for all the calls of a job), the
 * payload, flags and call id: the bytes pz_batch_add_env writes for that
 * envelope (canonical order), without walking every field again. */
static inline int pz_batch_add_call(pz_batch *b, const char *prefix, size_t pn,
                                    const char *payload, size_t n, uint64_t flags,
                                    uint64_t call)
{
    size_t total = pn;
    if (n) total += 1 + pz_varint_len(n) + n;
    if (flags) total += 2 + pz_varint_len(flags);
    if (call) total += 2 + pz_varint_len(call);
    if (pz_batch_reserve(b, total + 10) < 0) return -1;
    char *p = pz_put_varint(b->buf + b->len, total);
    memcpy(p, prefix, pn);
    p += pn;
    if (n) {
        *p++ = (char)((6 << 3) | 2);
        p = pz_put_varint(p, n);
        memcpy(p, payload, n);
        p += n;
    }
    if (flags) { *p++ = (char)0x80; *p++ = (char)0x01; p = pz_put_varint(p, flags); }
    if (call) { *p++ = (char)0x88; *p++ = (char)0x01; p = pz_put_varint(p, call); }
    b->len = (size_t)(p - b->buf);
    b->count++;
    return 0;
}

/* Append an already encoded envelope. */
static inline int pz_batch_add_raw(pz_batch *b, const char *data, size_t n)
{
    if (pz_batch_reserve(b, n + 10) < 0) return -1;
    char *p = pz_put_varint(b->buf + b->len, n);
    memcpy(p, data, n);
    b->len = (size_t)(p + n - b->buf);
    b->count++;
    return 0;
}

/* Batch buffers handed to libzmq (batch_to_msg) and freed by it: the two
 * counts meet again once every message holding one is gone, which the
 * tests check (a leaked zmq message keeps them apart). */
static uint64_t pz_batches_given = 0;
static uint64_t pz_batches_freed = 0;

/* Set, in the thread that closes it, while send_frames closes a message
 * it made of a batch but did not send: the buffer goes back to the batch.
 * Thread-local, so that libzmq's I/O thread freeing sent batches meanwhile
 * never sees it. */
static __thread int pz_batch_taking_back = 0;

static void pz_batch_free_cb(void *data, void *hint)
{
    (void)hint;
    if (pz_batch_taking_back)
        return;
    free(data);
    __atomic_add_fetch(&pz_batches_freed, 1, __ATOMIC_RELAXED);
}

static inline uint64_t pz_batches_freed_now(void)
{
    return __atomic_load_n(&pz_batches_freed, __ATOMIC_RELAXED);
}

#endif
