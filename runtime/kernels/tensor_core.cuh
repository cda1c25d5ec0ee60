// Tensor-core helpers of the fp8 block kernel: ldmatrix loads, the m16n8k16 f16 mma, and the
// narrowing of a bf16 pair to an f16 pair that the f16 dots take. Spliced into the kernel's source
// by the loader (nvrtc.py), after common.cuh, whose pack_half2 it uses.

__device__ __forceinline__ void ldsm_x4(unsigned* b, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans(unsigned* b, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(addr));
}

__device__ __forceinline__ void mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned bf16x2_to_half2(unsigned w) {
    // fp16 dots, as the Triton kernel's: clamp to fp16's range first
    const float lo = fminf(fmaxf(__int_as_float(w << 16), -65504.f), 65504.f);
    const float hi = fminf(fmaxf(__int_as_float(w & 0xffff0000u), -65504.f), 65504.f);
    return pack_half2(lo, hi);
}
