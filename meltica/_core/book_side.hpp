/* One side of an order book: sorted int64 levels in fixed-size blocks.
 *
 * Keys ascend across the side (bids key = price mantissa, asks key = -price
 * mantissa), so the best level is the LAST key of the LAST block.  A flat
 * sorted array moves every level between the update and the top on each
 * insert or delete, and real Binance diffs land tens to hundreds of levels
 * deep; blocks bound that move to one block.  Layout:
 *
 *   blk[0 .. nb)        the blocks in key order, each holding 1..BK_B levels
 *   blk[nb .. nalloc)   allocated spare blocks, reused before any malloc
 *   bmin[j]             blk[j]->key[0] for j < nb (the directory searched)
 *
 * Inside a block keys and quantities are separate arrays, and the unused key
 * slots hold INT64_MAX, so "how many keys are below k" is a fixed-length,
 * branch-free loop the compiler vectorises.  A full block splits in halves;
 * a block that shrinks below a quarter folds into a neighbour when the two
 * fit in half a block.  Memory is never returned until bk_free.
 *
 * Verified region: every key >= vmin is known to be exactly what the
 * exchange holds (a REST snapshot covered it, and every diff since applied
 * to it); nv counts the levels in it, kept by bk_set at one compare per
 * insert or delete.  vmin = INT64_MAX: nothing verified; INT64_MIN: the
 * whole side (the snapshot held the whole side).  Levels below vmin came
 * from diffs only, and the prices between them and vmin are unknown.
 *
 * Pure C++ on plain ints: no Python, no exceptions (allocation failure is a
 * -1 return with the side unchanged).
 */
#ifndef MELTICA_BOOK_SIDE_HPP
#define MELTICA_BOOK_SIDE_HPP

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

enum { BK_B = 32 };            /* levels per block */
enum { BK_FILL = BK_B * 3 / 4 };  /* levels per block after a bulk load */

struct bk_block {
    int64_t key[BK_B];   /* ascending; slots >= n hold INT64_MAX */
    int64_t qty[BK_B];   /* > 0 */
    ptrdiff_t n;         /* 1..BK_B while the block is in use */
};

struct bk_side {
    bk_block **blk;
    int64_t *bmin;
    ptrdiff_t nb;        /* blocks in use */
    ptrdiff_t nalloc;    /* blocks allocated (in use + spare) */
    ptrdiff_t cap;       /* slots in blk and bmin */
    ptrdiff_t n;         /* levels */
    int64_t vmin;        /* verified region: keys >= vmin (INT64_MAX: none) */
    ptrdiff_t nv;        /* levels with key >= vmin */
};

struct bk_pair {
    int64_t key;
    int64_t qty;
};

static inline void bk_init(bk_side *s) {
    memset(s, 0, sizeof *s);
    s->vmin = INT64_MAX;
}

static inline void bk_free(bk_side *s) {
    for (ptrdiff_t j = 0; j < s->nalloc; j++) free(s->blk[j]);
    free(s->blk);
    free(s->bmin);
    bk_init(s);
}

/* Drop every level (the blocks stay allocated as spares). */
static inline void bk_clear(bk_side *s) {
    s->nb = 0;
    s->n = 0;
    s->vmin = INT64_MAX;
    s->nv = 0;
}

/* Key and quantity of the best level; 0 when the side is empty. */
static inline int bk_best(const bk_side *s, int64_t *key, int64_t *qty) {
    if (s->nb == 0) return 0;
    const bk_block *b = s->blk[s->nb - 1];
    *key = b->key[b->n - 1];
    *qty = b->qty[b->n - 1];
    return 1;
}

/* An empty block (keys all INT64_MAX) put in use at directory slot j. */
static inline bk_block *bk_insert_block(bk_side *s, ptrdiff_t j) {
    if (s->nb == s->nalloc) {
        if (s->nalloc == s->cap) {
            ptrdiff_t cap = s->cap ? s->cap * 2 : 16;
            bk_block **pb = (bk_block **)realloc(s->blk, sizeof(bk_block *) * cap);
            if (pb == NULL) return NULL;
            s->blk = pb;
            int64_t *pm = (int64_t *)realloc(s->bmin, sizeof(int64_t) * cap);
            if (pm == NULL) return NULL;
            s->bmin = pm;
            s->cap = cap;
        }
        bk_block *nw = (bk_block *)malloc(sizeof(bk_block));
        if (nw == NULL) return NULL;
        s->blk[s->nalloc++] = nw;
    }
    bk_block *b = s->blk[s->nb];
    memmove(&s->blk[j + 1], &s->blk[j], sizeof(bk_block *) * (s->nb - j));
    memmove(&s->bmin[j + 1], &s->bmin[j], sizeof(int64_t) * (s->nb - j));
    s->blk[j] = b;
    s->nb++;
    b->n = 0;
    std::fill(b->key, b->key + BK_B, INT64_MAX);
    return b;
}

/* Take block j out of use (it becomes a spare). */
static inline void bk_remove_block(bk_side *s, ptrdiff_t j) {
    bk_block *b = s->blk[j];
    memmove(&s->blk[j], &s->blk[j + 1], sizeof(bk_block *) * (s->nb - j - 1));
    memmove(&s->bmin[j], &s->bmin[j + 1], sizeof(int64_t) * (s->nb - j - 1));
    s->nb--;
    s->blk[s->nb] = b;
}

/* The last block whose first key is <= key (0 when key is below them all).
 * A branch-free binary search: real updates land at any depth, so a search
 * that guesses (scan from the top first) mispredicts more than it saves. */
static inline ptrdiff_t bk_find_block(const bk_side *s, int64_t key) {
    const int64_t *m = s->bmin;
    ptrdiff_t base = 0, len = s->nb;
    while (len > 1) {
        ptrdiff_t half = len >> 1;
        base = m[base + half] <= key ? base + half : base;
        len -= half;
    }
    return base;
}

/* How many keys of the block are below key (the insert position): a
 * branch-free binary search over all BK_B slots (the unused ones hold
 * INT64_MAX, so they sort last).  Five probes and a last compare: a count
 * over the 32 slots took about 100 instructions per call on a baseline
 * x86-64 build, which has no 64-bit vector compare. */
static inline ptrdiff_t bk_rank(const bk_block *b, int64_t key) {
    const int64_t *k = b->key;
    ptrdiff_t base = 0;
    for (ptrdiff_t half = BK_B / 2; half > 0; half >>= 1)
        base = k[base + half - 1] < key ? base + half : base;
    return base + (k[base] < key);
}

/* Fold small block j into a neighbour when both fit in half a block. */
static inline void bk_merge(bk_side *s, ptrdiff_t j) {
    ptrdiff_t n = s->blk[j]->n, left;
    if (j > 0 && s->blk[j - 1]->n + n <= BK_B / 2) left = j - 1;
    else if (j + 1 < s->nb && s->blk[j + 1]->n + n <= BK_B / 2) left = j;
    else return;
    bk_block *a = s->blk[left], *c = s->blk[left + 1];
    memcpy(&a->key[a->n], c->key, sizeof(int64_t) * c->n);
    memcpy(&a->qty[a->n], c->qty, sizeof(int64_t) * c->n);
    a->n += c->n;
    bk_remove_block(s, left + 1);
}

/* Set one level: insert, update, or delete when qty is 0 (deleting a level
 * the side does not hold is a no-op).  0, or -1 when out of memory (the side
 * is then unchanged). */
static inline int bk_set(bk_side *s, int64_t key, int64_t qty) {
    if (s->nb == 0) {
        if (qty == 0) return 0;
        bk_block *b = bk_insert_block(s, 0);
        if (b == NULL) return -1;
        b->key[0] = key;
        b->qty[0] = qty;
        b->n = 1;
        s->bmin[0] = key;
        s->n = 1;
        s->nv = key >= s->vmin;
        return 0;
    }
    ptrdiff_t j = bk_find_block(s, key);
    bk_block *b = s->blk[j];
    ptrdiff_t i = bk_rank(b, key);
    if (i < b->n && b->key[i] == key) {
        if (qty != 0) {
            b->qty[i] = qty;
            return 0;
        }
        ptrdiff_t t = b->n - i - 1;
        memmove(&b->key[i], &b->key[i + 1], sizeof(int64_t) * t);
        memmove(&b->qty[i], &b->qty[i + 1], sizeof(int64_t) * t);
        b->n--;
        b->key[b->n] = INT64_MAX;
        s->n--;
        s->nv -= key >= s->vmin;
        if (b->n == 0) {
            bk_remove_block(s, j);
            return 0;
        }
        if (i == 0) s->bmin[j] = b->key[0];
        if (b->n < BK_B / 4) bk_merge(s, j);
        return 0;
    }
    if (qty == 0) return 0;
    if (b->n == BK_B) {
        /* split: the upper half moves to a new block right after j */
        const ptrdiff_t h = BK_B / 2;
        bk_block *up = bk_insert_block(s, j + 1);
        if (up == NULL) return -1;
        memcpy(up->key, &b->key[h], sizeof(int64_t) * (BK_B - h));
        memcpy(up->qty, &b->qty[h], sizeof(int64_t) * (BK_B - h));
        up->n = BK_B - h;
        std::fill(b->key + h, b->key + BK_B, INT64_MAX);
        b->n = h;
        s->bmin[j + 1] = up->key[0];
        if (i > h) {
            b = up;
            i -= h;
            j++;
        }
    }
    ptrdiff_t t = b->n - i;
    memmove(&b->key[i + 1], &b->key[i], sizeof(int64_t) * t);
    memmove(&b->qty[i + 1], &b->qty[i], sizeof(int64_t) * t);
    b->key[i] = key;
    b->qty[i] = qty;
    b->n++;
    s->n++;
    s->nv += key >= s->vmin;
    if (i == 0) s->bmin[j] = key;
    return 0;
}

/* How many levels have a key >= key. */
static inline ptrdiff_t bk_count_ge(const bk_side *s, int64_t key) {
    if (s->nb == 0) return 0;
    ptrdiff_t j = bk_find_block(s, key), c = 0;
    for (ptrdiff_t k = j + 1; k < s->nb; k++) c += s->blk[k]->n;
    const bk_block *b = s->blk[j];
    return c + b->n - bk_rank(b, key);
}

/* Set the verified region to keys >= vmin and count its levels. */
static inline void bk_verify(bk_side *s, int64_t vmin) {
    s->vmin = vmin;
    s->nv = vmin == INT64_MAX ? 0 : bk_count_ge(s, vmin);
}

/* Drop the lowest keys (the worst levels) beyond keep, amortised: only once
 * the side is more than keep/8 + 1 over.  Returns how many were dropped.
 * Dropping a verified level shrinks the verified region to what is left. */
static inline ptrdiff_t bk_trim(bk_side *s, ptrdiff_t keep) {
    if (keep <= 0 || s->n <= keep + keep / 8 + 1) return 0;
    ptrdiff_t k = s->n - keep, drop = k, j = 0;
    while (s->blk[j]->n <= drop) drop -= s->blk[j++]->n;   /* keep > 0: stops */
    if (j) {
        std::rotate(s->blk, s->blk + j, s->blk + s->nb);
        memmove(s->bmin, s->bmin + j, sizeof(int64_t) * (s->nb - j));
        s->nb -= j;
    }
    if (drop) {
        bk_block *b = s->blk[0];
        ptrdiff_t t = b->n - drop;
        memmove(b->key, &b->key[drop], sizeof(int64_t) * t);
        memmove(b->qty, &b->qty[drop], sizeof(int64_t) * t);
        std::fill(b->key + t, b->key + b->n, INT64_MAX);
        b->n = t;
        s->bmin[0] = b->key[0];
    }
    s->n = keep;
    if (s->nv > keep) {
        s->vmin = s->bmin[0];
        s->nv = keep;
    }
    return k;
}

/* Replace the side with lv[0..n) (any order; where a key repeats the last
 * one wins, and a key whose last qty is 0 is left out), nothing verified (the caller sets vmin: bk_verify).
 * Sorts lv in place.  0, or -1 when out of memory (the
 * side is then partly filled: the caller resets it). */
static inline int bk_assign(bk_side *s, bk_pair *lv, ptrdiff_t n) {
    std::stable_sort(lv, lv + n, [](const bk_pair &a, const bk_pair &b) { return a.key < b.key; });
    ptrdiff_t m = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        if (m && lv[m - 1].key == lv[i].key) lv[m - 1].qty = lv[i].qty;
        else lv[m++] = lv[i];
    }
    /* a price given more than once: the last one wins, and a last quantity of 0 leaves no
       level (as the same levels applied in order as a diff would) */
    ptrdiff_t kept = 0;
    for (ptrdiff_t i = 0; i < m; i++) {
        if (lv[i].qty != 0) lv[kept++] = lv[i];
    }
    m = kept;
    bk_clear(s);
    for (ptrdiff_t i = 0; i < m; i += BK_FILL) {
        bk_block *b = bk_insert_block(s, s->nb);
        if (b == NULL) return -1;
        ptrdiff_t c = std::min<ptrdiff_t>(BK_FILL, m - i);
        for (ptrdiff_t k = 0; k < c; k++) {
            b->key[k] = lv[i + k].key;
            b->qty[k] = lv[i + k].qty;
        }
        b->n = c;
        s->bmin[s->nb - 1] = b->key[0];
        s->n += c;
    }
    return 0;
}

/* Recompute the directory after keys were rewritten in place (rescale). */
static inline void bk_reindex(bk_side *s) {
    for (ptrdiff_t j = 0; j < s->nb; j++) s->bmin[j] = s->blk[j]->key[0];
}

#endif
