// One decoding row over fp8 (e4m3) K/V slabs, head_dim 128, GROUP query heads a KV head (1-8), split-K.
// Loaded by fp8_row.py (NVRTC); the runtime's Triton row kernel computes the same partials.
//
// One CTA per (row, kv head, split), 8 warps; each warp walks 16-key chunks with its own online
// softmax, copying them into a ring of RING_STAGES slots in shared memory with cp.async, so
// RING_STAGES - 1 chunks are in flight while one is multiplied: faster than two chunks prefetched into
// registers, and three slots beat four or five (docs/cuda.md).
// The CTA merges its warps and writes one partial (m, l, acc) per query
// head in the layout the combine kernel (triton_rows.py) reads. mma.sync m16n8k16, fp16 in, fp32
// accumulate: the same products as the Triton kernel's, summed in another order.
//
// Why not Triton: the PV product needs, in each thread, one column's bytes of four keys, which lie
// 128 bytes apart in the slab; Triton reads such a tile from shared memory one byte at a time.
// Here each thread reads four 4-byte words, one from each of four keys (4 consecutive columns
// each), and regroups the bytes with prmt. Columns (d) are assigned to threads through a fixed permutation that the output store
// undoes; the reduction index of QK (d) is permuted the same way in q and K.

#define HEAD_DIM 128
#define MIN_SPLIT 256
#define TILE 128

#include "common.cuh"

__device__ __forceinline__ unsigned cvt2(unsigned short pair) {
    unsigned out;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(out) : "h"(pair));
    return out;
}

__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned sel) {
    unsigned out;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(out) : "r"(a), "r"(b), "r"(sel));
    return out;
}

__device__ __forceinline__ void mma(float* c, unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
    // rows g+8 of A are zero (only two query heads): a1 = a3 = 0
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
}

__device__ __forceinline__ float bf16_to_float(unsigned short x) {
    return __int_as_float(((unsigned)x) << 16);
}

__device__ __forceinline__ uint4 ld_nc_v4(const unsigned char* p) {
    uint4 v;
    asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ unsigned ld_nc_u32(const unsigned char* p) {
    unsigned v;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}

// A chunk (16 keys) in a warp's ring slot: K rows then V rows, 128 bytes a key. 16-byte pieces are
// swizzled so that the reads below hit 32 distinct banks: K piece c of key k at c ^ 4(k & 1) (two
// keys a phase of 16-byte reads), V piece c at c ^ 2((k >> 1) & 3) (four keys a 4-byte read).
#define SLOT 4096
__device__ __forceinline__ int k_at(int key, int piece) { return key * HEAD_DIM + ((piece ^ ((key & 1) << 2)) << 4); }
__device__ __forceinline__ int v_at(int key, int piece) { return SLOT / 2 + key * HEAD_DIM + ((piece ^ (((key >> 1) & 3) << 1)) << 4); }

__device__ __forceinline__ void issue_chunk(unsigned char* slot, const unsigned char* k_base, const unsigned char* v_base,
                                            int start, int hi, int lane) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int idx = lane + 32 * i, key = idx >> 3, piece = idx & 7;
        const long long src = (long long)min(start + key, hi - 1) * HEAD_DIM + piece * 16;
        cp_async16(smem_u32(slot + k_at(key, piece)), k_base + src);
        cp_async16(smem_u32(slot + v_at(key, piece)), v_base + src);
    }
}

struct Chunk {
    uint4 k[2][2];      // [n-tile][first/second 16 bytes] of key (start + 8 nt + g)
    unsigned v[4][4];   // [column group a][key 2l, 2l+1, 2l+8, 2l+9] 4 bytes at 32a + 4g
};

__device__ __forceinline__ void read_chunk(Chunk& c, const unsigned char* slot, int g, int l) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        c.k[nt][0] = *(const uint4*)(slot + k_at(nt * 8 + g, l));
        c.k[nt][1] = *(const uint4*)(slot + k_at(nt * 8 + g, 4 + l));
    }
    const int keys[4] = {2 * l, 2 * l + 1, 2 * l + 8, 2 * l + 9};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int a = 0; a < 4; ++a)
            c.v[a][j] = *(const unsigned*)(slot + v_at(keys[j], 2 * a + (g >> 2)) + 4 * (g & 3));
}

// DEPTH: slots of each warp's ring (DEPTH - 1 chunks in flight while one is multiplied).
template <int WARPS, int DEPTH, int GROUP>
__device__ void attend(const unsigned short* __restrict__ q, int q_stride_t, int q_stride_h,
                       const long long* __restrict__ rows_ptr, const long long* __restrict__ meta, int meta_stride,
                       int layer, float scale, float* __restrict__ part_acc, float* __restrict__ part_ml,
                       int num_kv, int splits_max, int has_lead) {
    __shared__ float s_ml[WARPS][GROUP][2];
    __shared__ float s_acc[WARPS][GROUP][HEAD_DIM];
    const int i = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, l = lane % 4;
    const long long r = rows_ptr[i];
    if (has_lead && meta[4 * meta_stride + r] != 1) return;  // a row of a block: the block kernel's
    const unsigned char* base = (const unsigned char*)meta[r];
    const long long cap = meta[meta_stride + r];
    const int n = (int)meta[3 * meta_stride + r];
    const int splits = min(splits_max, (n + MIN_SPLIT - 1) / MIN_SPLIT);
    const int per = ((n + splits - 1) / splits + TILE - 1) / TILE * TILE;
    const int lo = s * per, hi = min(n, lo + per);
    const int part0 = (i * (num_kv * GROUP) + h * GROUP) * splits_max + s;  // head g: part0 + g * splits_max
    if (s >= splits) {
        if (threadIdx.x < GROUP) {
            part_ml[(part0 + threadIdx.x * splits_max) * 2] = -__int_as_float(0x7f800000);
            part_ml[(part0 + threadIdx.x * splits_max) * 2 + 1] = 0.f;
        }
        return;
    }
    const unsigned char* k_base = base + ((long long)(layer * 2 * num_kv + h) * cap) * HEAD_DIM;
    const unsigned char* v_base = base + ((long long)((layer * 2 + 1) * num_kv + h) * cap) * HEAD_DIM;

    // q fragments: chunk c of the reduction holds, in thread l, physical columns dk(l, c) + 0..3
    unsigned qa0[8], qa2[8];
#pragma unroll
    for (int c = 0; c < 8; ++c) {
        int d = c < 4 ? 16 * l + 4 * c : 64 + 16 * l + 4 * (c - 4);
        float x[4] = {0.f, 0.f, 0.f, 0.f};
        if (g < GROUP) {
            const unsigned short* qp = q + r * q_stride_t + (h * GROUP + g) * q_stride_h + d;
#pragma unroll
            for (int e = 0; e < 4; ++e) x[e] = fminf(fmaxf(bf16_to_float(qp[e]), -65504.f), 65504.f);
        }
        qa0[c] = pack_half2(x[0], x[1]);
        qa2[c] = pack_half2(x[2], x[3]);
    }
    const float scale2 = scale * 1.4426950408889634f;  // scores in log2 units
    const float NEG_INF = -__int_as_float(0x7f800000);
    float m = NEG_INF, lsum = 0.f;
    float acc[16][4];
#pragma unroll
    for (int t = 0; t < 16; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;

    extern __shared__ __align__(128) unsigned char ring_all[];
    unsigned char* ring = ring_all + warp * DEPTH * SLOT;  // this warp's DEPTH slots
    const int first = lo + 16 * warp, stride = 16 * WARPS;
    const int nchunks = first < hi ? (hi - first + stride - 1) / stride : 0;
#pragma unroll
    for (int c = 0; c < DEPTH - 1; ++c) {
        if (c < nchunks) issue_chunk(ring + c * SLOT, k_base, v_base, first + c * stride, hi, lane);
        cp_commit();
    }
    Chunk cur;
    for (int ci = 0; ci < nchunks; ++ci) {
        const int start = first + ci * stride;
        cp_wait<DEPTH - 2>();
        __syncwarp();
        read_chunk(cur, ring + (ci % DEPTH) * SLOT, g, l);
        __syncwarp();  // every lane has read the slot that the next copy refills
        if (ci + DEPTH - 1 < nchunks)
            issue_chunk(ring + ((ci + DEPTH - 1) % DEPTH) * SLOT, k_base, v_base, start + (DEPTH - 1) * stride, hi, lane);
        cp_commit();
        // scores: two n-tiles of 8 keys
        float sc[2][4];
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
            unsigned w[8] = {cur.k[nt][0].x, cur.k[nt][0].y, cur.k[nt][0].z, cur.k[nt][0].w,
                             cur.k[nt][1].x, cur.k[nt][1].y, cur.k[nt][1].z, cur.k[nt][1].w};
#pragma unroll
            for (int c = 0; c < 8; ++c)
                mma(sc[nt], qa0[c], qa2[c], cvt2((unsigned short)(w[c] & 0xffff)), cvt2((unsigned short)(w[c] >> 16)));
        }
        // online softmax over this chunk (row g; threads of one row share m)
        float x[4];
        float top = NEG_INF;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                int key = start + nt * 8 + 2 * l + e;
                float v = key < hi ? sc[nt][e] * scale2 : NEG_INF;
                x[nt * 2 + e] = v;
                top = fmaxf(top, v);
            }
        top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, 1));
        top = fmaxf(top, __shfl_xor_sync(0xffffffff, top, 2));
        const float m_new = fmaxf(m, top);  // finite: every chunk holds at least one key below hi
        const float alpha = exp2f(m - m_new);
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) p[e] = g < GROUP ? exp2f(x[e] - m_new) : 0.f;
        lsum = lsum * alpha + (p[0] + p[1] + p[2] + p[3]);
        m = m_new;
        const unsigned pa0 = pack_half2(p[0], p[1]), pa2 = pack_half2(p[2], p[3]);
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const unsigned lo01 = prmt(cur.v[a][0], cur.v[a][1], 0x5140), lo23 = prmt(cur.v[a][0], cur.v[a][1], 0x7362);
            const unsigned hi01 = prmt(cur.v[a][2], cur.v[a][3], 0x5140), hi23 = prmt(cur.v[a][2], cur.v[a][3], 0x7362);
            const unsigned b0[4] = {cvt2(lo01 & 0xffff), cvt2(lo01 >> 16), cvt2(lo23 & 0xffff), cvt2(lo23 >> 16)};
            const unsigned b1[4] = {cvt2(hi01 & 0xffff), cvt2(hi01 >> 16), cvt2(hi23 & 0xffff), cvt2(hi23 >> 16)};
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                float* c = acc[4 * a + b];
                c[0] *= alpha; c[1] *= alpha;
                mma(c, pa0, pa2, b0[b], b1[b]);
            }
        }
    }
    cp_wait<0>();
    // the row's sum over its four threads
    lsum += __shfl_xor_sync(0xffffffff, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffff, lsum, 2);
    if (g < GROUP) {
        if (l == 0) {
            s_ml[warp][g][0] = m;
            s_ml[warp][g][1] = lsum;
        }
#pragma unroll
        for (int t = 0; t < 16; ++t) {
            const int a = t / 4, b = t % 4;
            s_acc[warp][g][32 * a + 8 * l + b] = acc[t][0];
            s_acc[warp][g][32 * a + 8 * l + 4 + b] = acc[t][1];
        }
    }
    __syncthreads();
    for (int o = threadIdx.x; o < GROUP * HEAD_DIM; o += 32 * WARPS) {
        const int gg = o / HEAD_DIM, d = o % HEAD_DIM;
        float top = NEG_INF;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) top = fmaxf(top, s_ml[w][gg][0]);
        float total = 0.f, weight_sum = 0.f;
        if (top != NEG_INF) {
#pragma unroll
            for (int w = 0; w < WARPS; ++w) {
                const float mw = s_ml[w][gg][0];
                const float wt = mw == NEG_INF ? 0.f : exp2f(mw - top);
                total += s_acc[w][gg][d] * wt;
                weight_sum += s_ml[w][gg][1] * wt;
            }
        }
        const int part = part0 + gg * splits_max;
        part_acc[(long long)part * HEAD_DIM + d] = total;
        if (d == 0) {
            part_ml[part * 2] = top == NEG_INF ? NEG_INF : top * 0.6931471805599453f;  // natural-log units
            part_ml[part * 2 + 1] = weight_sum;
        }
    }
}

#ifndef RING_STAGES
#define RING_STAGES 3
#endif
#define ENTRY(G)                                                                                               \
    extern "C" __global__ void __launch_bounds__(256) fp8_row_attend_g##G(                                     \
        const unsigned short* q, int q_stride_t, int q_stride_h, const long long* rows_ptr, const long long* meta, \
        int meta_stride, int layer, double scale, float* part_acc, float* part_ml, int num_kv, int splits_max,   \
        int has_lead) {                                                                                         \
        attend<8, RING_STAGES, G>(q, q_stride_t, q_stride_h, rows_ptr, meta, meta_stride, layer, (float)scale,   \
                                  part_acc, part_ml, num_kv, splits_max, has_lead);                             \
    }
ENTRY(1)
ENTRY(2)
ENTRY(4)
ENTRY(8)
