// Blocks of consecutive rows of one session over fp8 (e4m3) K/V slabs, head_dim 128, split-K: the
// CUDA counterpart of triton_blocks.py's Triton kernel for fp8 slabs, loaded by fp8_block.py
// (NVRTC). It computes the same partials for the same combine kernel.
//
// Why not Triton: its block kernel multiplies P by a V tile that it reads from shared memory one
// byte at a time (fp8 has no transposing matrix load), and widens each tile in every warp.
// Here a CTA widens each key tile once, into fp16 in shared memory, and every warp then reads it
// with ldmatrix (K) and ldmatrix.trans (V).
//
// A CTA serves (KV head, part of a block's rows) for a share of the step's (block, split) items; 9 warps:
// up to 144 (row, query head) pairs, 16 a warp, as the M of mma.sync m16n8k16 (fp16 in, fp32
// accumulate): a service turn's 65 appended rows with two query heads a KV head are one block,
// so each key tile is read and widened once for all of them. Key tiles of 64 keys stream in
// through cp.async, STAGES deep; each warp keeps an online softmax per pair, and each row masks
// the keys past its own (causal). STAGES, WARPS and MIN_CTAS may be defined before this file
// (trial benchmarks do); nine warps leave 168 registers a thread (three warps on one of the SM's
// four schedulers, 16K registers each).

#define HEAD_DIM 128
#define TILE 64
// Splits of a block's keys: at least one tile each, so a block over a short history still spreads
// over several CTAs (its rows' products, not its keys, are the work there). Larger least splits left
// a short history's block on few CTAs and gained nothing on long ones (docs/cuda.md).
#ifndef MIN_SPLIT
#define MIN_SPLIT 64
#endif
#ifndef SPLIT_ALIGN
#define SPLIT_ALIGN TILE
#endif
// Two stages (one tile in flight while one is widened and multiplied) are as fast as three or four:
// the products, not the loads, bound the loop (docs/cuda.md).
#ifndef STAGES
#define STAGES 2
#endif
#ifndef WARPS
#define WARPS 9
#endif
#ifndef MIN_CTAS
#define MIN_CTAS 1
#endif
#define M_CTA (16 * WARPS)
#define FP8_STAGE (2 * TILE * HEAD_DIM)  // one stage: K then V, TILE rows of 128 bytes
#define ROW16 (2 * HEAD_DIM)             // bytes of one widened key: 16 chunks of 16 bytes
// Dynamic shared memory: STAGES fp8 stages, then the widened K and V tiles (fp8_block.py).
#define SMEM_BYTES (STAGES * FP8_STAGE + 2 * TILE * ROW16)

#include "common.cuh"
#include "tensor_core.cuh"

__device__ __forceinline__ unsigned cvt2(unsigned pair) {  // two e4m3 bytes (low 16 bits) -> f16x2
    unsigned out;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(out) : "h"((unsigned short)pair));
    return out;
}

// Chunk c (16 bytes) of widened key `row` lives at chunk c ^ (row & 7) of its row, so the eight
// rows an ldmatrix phase reads fall in distinct banks.
__device__ __forceinline__ int swz(int row, int chunk) { return row * ROW16 + ((chunk ^ (row & 7)) << 4); }

struct Tiles {
    unsigned char* smem;
    const unsigned char* k_base;
    const unsigned char* v_base;
    int lo, hi;

    __device__ void load(int t, int tid) const {  // tile t's fp8 K and V into stage t % STAGES
        unsigned char* dst = smem + (t % STAGES) * FP8_STAGE;
        const int start = lo + t * TILE;
#pragma unroll
        for (int c = 0; c < (TILE * 8 + 32 * WARPS - 1) / (32 * WARPS); ++c) {
            const int idx = tid + 32 * WARPS * c, row = idx >> 3, chunk = idx & 7;
            if (TILE * 8 % (32 * WARPS) != 0 && idx >= TILE * 8) break;
            const long long key = min(start + row, hi - 1);  // past hi: a copy of a stored key, masked
            cp_async16(smem_u32(dst + row * HEAD_DIM + chunk * 16), k_base + key * HEAD_DIM + chunk * 16);
            cp_async16(smem_u32(dst + TILE * HEAD_DIM + row * HEAD_DIM + chunk * 16), v_base + key * HEAD_DIM + chunk * 16);
        }
    }

    __device__ void widen(int t, int tid) const {  // stage t % STAGES -> the fp16 K and V tiles
        const unsigned char* src = smem + (t % STAGES) * FP8_STAGE;
        unsigned char* k16 = smem + STAGES * FP8_STAGE;
#pragma unroll
        for (int c = 0; c < (TILE * 8 + 32 * WARPS - 1) / (32 * WARPS); ++c) {
            const int idx = tid + 32 * WARPS * c, row = idx >> 3, chunk = idx & 7;
            if (TILE * 8 % (32 * WARPS) != 0 && idx >= TILE * 8) break;
#pragma unroll
            for (int kv = 0; kv < 2; ++kv) {
                const uint4 w = *(const uint4*)(src + kv * TILE * HEAD_DIM + row * HEAD_DIM + chunk * 16);
                unsigned char* dst = k16 + kv * TILE * ROW16;
                const uint4 lo = make_uint4(cvt2(w.x), cvt2(w.x >> 16), cvt2(w.y), cvt2(w.y >> 16));
                const uint4 hi = make_uint4(cvt2(w.z), cvt2(w.z >> 16), cvt2(w.w), cvt2(w.w >> 16));
                // The upper four pieces of a row store their halves in the other order, so each of
                // the two stores of 8 threads (one row) covers all 32 banks.
                const int first = chunk >> 2;
                *(uint4*)(dst + swz(row, 2 * chunk + first)) = first ? hi : lo;
                *(uint4*)(dst + swz(row, 2 * chunk + 1 - first)) = first ? lo : hi;
            }
        }
    }
};

// One warp's 16 pairs against SUB keys of the widened tile, from its key `first` (global key
// `start`): scores, online softmax, PV. SUB = 32 keeps the scores in 16 registers a thread (64
// keys at once took ptxas past 255 registers). Fragment rows: g (c[0], c[1]) and g + 8 (c[2],
// c[3]); n_row: each row's key count.
#define SUB 32
__device__ __forceinline__ void multiply(const unsigned char* k16, const unsigned (&qa)[8][4], float (&acc)[16][4],
                                         float (&m)[2], float (&lsum)[2], const int (&n_row)[2], int first,
                                         int start, int hi, float scale2, int lane) {
    const float NEG_INF = -__int_as_float(0x7f800000);
    const unsigned char* v16 = k16 + TILE * ROW16;
    const int l = lane & 3;
    float sc[SUB / 8][4];
#pragma unroll
    for (int nt = 0; nt < SUB / 8; ++nt) {
        sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
        const int row = first + 8 * nt + (lane & 7);
#pragma unroll
        for (int kp = 0; kp < 4; ++kp) {  // reduction chunks 2kp, 2kp + 1 (d 32kp .. 32kp + 31)
            unsigned b[4];
            ldsm_x4(b, smem_u32(k16 + swz(row, 4 * kp + (lane >> 3))));
            mma(sc[nt], qa[2 * kp], b[0], b[1]);
            mma(sc[nt], qa[2 * kp + 1], b[2], b[3]);
        }
    }
    float top[2] = {NEG_INF, NEG_INF};
#pragma unroll
    for (int nt = 0; nt < SUB / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int key = start + 8 * nt + 2 * l + (e & 1), half = e >> 1;
            const float x = key < hi && key < n_row[half] ? sc[nt][e] * scale2 : NEG_INF;
            sc[nt][e] = x;
            top[half] = fmaxf(top[half], x);
        }
    float alpha[2], shift[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        top[half] = fmaxf(top[half], __shfl_xor_sync(0xffffffff, top[half], 1));
        top[half] = fmaxf(top[half], __shfl_xor_sync(0xffffffff, top[half], 2));
        const float m_new = fmaxf(m[half], top[half]);
        // a row that has seen no key yet keeps m = -inf: shifting by 0 keeps its p and alpha at 0
        shift[half] = m_new == NEG_INF ? 0.f : m_new;
        alpha[half] = exp2f(m[half] - shift[half]);
        m[half] = m_new;
        lsum[half] *= alpha[half];
    }
#pragma unroll
    for (int nt = 0; nt < SUB / 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            sc[nt][e] = exp2f(sc[nt][e] - shift[e >> 1]);
            lsum[e >> 1] += sc[nt][e];
        }
#pragma unroll
    for (int dn = 0; dn < 16; ++dn) {
        acc[dn][0] *= alpha[0]; acc[dn][1] *= alpha[0];
        acc[dn][2] *= alpha[1]; acc[dn][3] *= alpha[1];
    }
#pragma unroll
    for (int kc = 0; kc < SUB / 16; ++kc) {  // keys 16kc .. 16kc + 15: score tiles 2kc, 2kc + 1
        const unsigned pa[4] = {pack_half2(sc[2 * kc][0], sc[2 * kc][1]), pack_half2(sc[2 * kc][2], sc[2 * kc][3]),
                                pack_half2(sc[2 * kc + 1][0], sc[2 * kc + 1][1]),
                                pack_half2(sc[2 * kc + 1][2], sc[2 * kc + 1][3])};
        const int row = first + 16 * kc + ((lane >> 3) & 1) * 8 + (lane & 7);
#pragma unroll
        for (int np = 0; np < 8; ++np) {  // output columns 16np .. 16np + 15
            unsigned b[4];
            ldsm_x4_trans(b, smem_u32(v16 + swz(row, 2 * np + (lane >> 4))));
            mma(acc[2 * np], pa, b[0], b[1]);
            mma(acc[2 * np + 1], pa, b[2], b[3]);
        }
    }
}

// Block `r` (the row that leads it) for KV head h, its rows from j0, split s.
template <int GROUP>
__device__ void attend_block(long long r, int h, int j0, int s, const unsigned short* __restrict__ q,
                             int q_stride_t, int q_stride_h, const long long* __restrict__ meta, int meta_stride,
                             int layer, float scale, float* __restrict__ part_acc, float* __restrict__ part_ml,
                             int num_kv, int splits_max, unsigned char* smem) {
    constexpr int ROWS_CTA = M_CTA / GROUP;
    const float NEG_INF = -__int_as_float(0x7f800000);
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, l = lane % 4;
    const int count = (int)meta[4 * meta_stride + r];
    if (j0 >= count) return;  // a short block: no rows for this part
    const int pairs = min(ROWS_CTA, count - j0) * GROUP;  // pairs 0 .. pairs - 1 are this CTA's
    const long long cap = meta[meta_stride + r];
    const int n_last = (int)meta[3 * meta_stride + r + count - 1];  // the block's last row sees the most keys
    const int splits = min(splits_max, (n_last + MIN_SPLIT - 1) / MIN_SPLIT);
    const int per = ((n_last + splits - 1) / splits + SPLIT_ALIGN - 1) / SPLIT_ALIGN * SPLIT_ALIGN;
    const int lo = s * per, hi = min(n_last, lo + per);
    auto part_of = [&](int p) {
        return (int)(((r + j0 + p / GROUP) * (num_kv * GROUP) + h * GROUP + p % GROUP) * splits_max + s);
    };
    if (s >= splits) {  // an unused split of this grid: marked empty
        if (tid < pairs) {
            part_ml[2 * part_of(tid)] = NEG_INF;
            part_ml[2 * part_of(tid) + 1] = 0.f;
        }
        return;
    }
    const unsigned char* base = (const unsigned char*)meta[r];
    const Tiles tiles{smem, base + (long long)(layer * 2 * num_kv + h) * cap * HEAD_DIM,
                      base + (long long)((layer * 2 + 1) * num_kv + h) * cap * HEAD_DIM, lo, hi};
    const int ntiles = hi > lo ? (hi - lo + TILE - 1) / TILE : 0;
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
        if (t < ntiles) tiles.load(t, tid);
        cp_commit();
    }

    const int p0 = warp * 16 + g, p1 = p0 + 8;
    const bool active = warp * 16 < pairs;
    unsigned qa[8][4];
    int n_row[2] = {0, 0};
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int p = half ? p1 : p0;
        const bool valid = p < pairs;
        const long long row = r + j0 + p / GROUP;
        if (valid) n_row[half] = (int)meta[3 * meta_stride + row];
        const unsigned* qp = (const unsigned*)(q + row * q_stride_t + (h * GROUP + p % GROUP) * q_stride_h);
#pragma unroll
        for (int kc = 0; kc < 8; ++kc) {
            qa[kc][half] = valid ? bf16x2_to_half2(qp[8 * kc + l]) : 0u;          // d = 16kc + 2l
            qa[kc][half + 2] = valid ? bf16x2_to_half2(qp[8 * kc + 4 + l]) : 0u;  // d = 16kc + 2l + 8
        }
    }
    const float scale2 = scale * 1.4426950408889634f;  // scores in log2 units
    float m[2] = {NEG_INF, NEG_INF}, lsum[2] = {0.f, 0.f};
    float acc[16][4];
#pragma unroll
    for (int dn = 0; dn < 16; ++dn) acc[dn][0] = acc[dn][1] = acc[dn][2] = acc[dn][3] = 0.f;

    for (int t = 0; t < ntiles; ++t) {
        cp_wait<STAGES - 2>();
        __syncthreads();  // tile t landed for every thread; every warp is done with tile t - 1
        if (t + STAGES - 1 < ntiles) tiles.load(t + STAGES - 1, tid);
        cp_commit();
        tiles.widen(t, tid);
        __syncthreads();
        if (active) {
#pragma unroll 1
            for (int first = 0; first < TILE; first += SUB)
                multiply(smem + STAGES * FP8_STAGE, qa, acc, m, lsum, n_row, first, lo + t * TILE + first, hi, scale2, lane);
        }
    }
    cp_wait<0>();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        lsum[half] += __shfl_xor_sync(0xffffffff, lsum[half], 1);
        lsum[half] += __shfl_xor_sync(0xffffffff, lsum[half], 2);
        const int p = half ? p1 : p0;
        if (!active || p >= pairs) continue;
        const long long part = part_of(p);
#pragma unroll
        for (int dn = 0; dn < 16; ++dn)
            *(float2*)(part_acc + part * HEAD_DIM + 8 * dn + 2 * l) = make_float2(acc[dn][2 * half], acc[dn][2 * half + 1]);
        if (l == 0) {
            part_ml[2 * part] = m[half] == NEG_INF ? NEG_INF : m[half] * 0.6931471805599453f;  // natural-log units
            part_ml[2 * part + 1] = lsum[half];
        }
    }
}

// The step's work items (block b, split s), numbered b * splits_max + s, shared among the CTAs of a
// KV head: CTA y serves items y, y + gridDim.y, ... The blocks' leading rows come listed in meta's
// sixth row, then -1 (cuda/row_meta.py). A grid over every row instead (as the Triton kernel's)
// launches mostly CTAs that find no block, and only one of these fits an SM.
template <int GROUP>
__device__ void attend_blocks(const unsigned short* q, int q_stride_t, int q_stride_h, const long long* meta,
                              int meta_stride, int num_rows, int layer, float scale, float* part_acc, float* part_ml,
                              int num_kv, int splits_max, int subs) {
    extern __shared__ __align__(128) unsigned char smem[];
    const int h = blockIdx.x / subs, j0 = (blockIdx.x % subs) * (M_CTA / GROUP);
    for (int item = blockIdx.y;; item += gridDim.y) {
        const int b = item / splits_max;
        if (b >= num_rows) break;
        const long long leader = meta[5 * meta_stride + b];
        if (leader < 0) break;
        attend_block<GROUP>(leader, h, j0, item % splits_max, q, q_stride_t, q_stride_h, meta, meta_stride, layer,
                            scale, part_acc, part_ml, num_kv, splits_max, smem);
        __syncthreads();  // the next item reuses the tiles
    }
}

#define ENTRY(G)                                                                                               \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, MIN_CTAS) fp8_block_attend_g##G(                         \
        const unsigned short* q, int q_stride_t, int q_stride_h, const long long* meta, int meta_stride,         \
        int num_rows, int layer, double scale, float* part_acc, float* part_ml, int num_kv, int splits_max,     \
        int subs) {                                                                                             \
        attend_blocks<G>(q, q_stride_t, q_stride_h, meta, meta_stride, num_rows, layer, (float)scale, part_acc,  \
                         part_ml, num_kv, splits_max, subs);                                                    \
    }
ENTRY(1)
ENTRY(2)
ENTRY(4)
ENTRY(8)
