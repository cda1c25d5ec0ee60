// Device helpers shared by the runtime's CUDA kernels (fp8_row.cu, fp8_block.cu).
// NVRTC compiles one source string and finds no file on an include path: nvrtc.py puts this
// file's text in place of a kernel's line `#include "common.cuh"` before compiling it, so the
// kernels read as including it and one copy of each helper serves both.

// The 32-bit shared-space address that cp.async and ldmatrix take.
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void cp_async16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}

__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N)); }

__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    unsigned out;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(out) : "f"(hi), "f"(lo));
    return out;
}
