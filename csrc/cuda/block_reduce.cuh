// A per-block sum shared by the CUDA kernels that reduce per sample (the logdets).
#pragma once

#include <algorithm>
#include <cstdint>

namespace missingglow {

constexpr int kThreads = 256;

// Sums `value` over the threads of a block; thread 0 adds the block's total to *out.
template <typename T>
__device__ void block_sum_to(T value, T* out) {
  __shared__ T partial[kThreads];
  partial[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}

// grid = (chunks, N): enough blocks of kThreads to cover `per` elements of each of n samples.
inline dim3 sample_grid(int64_t n, int64_t per) {
  const int64_t chunks = std::min<int64_t>((per + kThreads - 1) / kThreads, 1024);
  return dim3(static_cast<unsigned>(std::max<int64_t>(chunks, 1)), static_cast<unsigned>(n));
}

}  // namespace missingglow
