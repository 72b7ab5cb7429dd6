// CUDA kernels of the whole-tensor coupling ops (CPU: ../coupling_step.cpp). The per-element math
// and the (channel, pixel) → offset walk are flow_math.h's, shared with the CPU kernels.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "block_reduce.cuh"
#include "flow.h"
#include "flow_math.h"

namespace missingglow {
namespace {

// grid = (chunks, N): each block covers part of one sample's C/2·P pairs and adds its share of
// Σ log s to logdet[sample].
template <typename T, bool kInverse>
__global__ void coupling_step_kernel(const T* __restrict__ in, const T* __restrict__ h,
                                     T* __restrict__ out, T* __restrict__ logdet, int64_t channels,
                                     int64_t pixels, bool channels_last) {
  const int64_t sample = blockIdx.y;
  const int64_t per = channels * pixels, pairs = per / 2, base = sample * per;
  T acc = 0;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < pairs;
       j += (int64_t)gridDim.x * blockDim.x) {
    const HalfOffsets o = half_offsets_at(channels_last, j, channels, pixels);
    const int64_t a = base + o.a, b = base + o.b;
    T log_scale;
    out[a] = in[a];
    if (kInverse) {
      coupling_inverse_elem(in[b], h[a], h[b], out[b], log_scale);
      acc -= log_scale;
    } else {
      coupling_forward_elem(in[b], h[a], h[b], out[b], log_scale);
      acc += log_scale;
    }
  }
  block_sum_to(acc, logdet + sample);
}

template <typename T>
__global__ void coupling_step_backward_kernel(const T* __restrict__ grad_y,
                                              const T* __restrict__ grad_logdet,
                                              const T* __restrict__ y, const T* __restrict__ h,
                                              T* __restrict__ grad_x, T* __restrict__ grad_h,
                                              int64_t channels, int64_t pixels, bool channels_last,
                                              int64_t total_pairs) {
  const int64_t per = channels * pixels, pairs = per / 2;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total_pairs;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t sample = i / pairs, base = sample * per;
    const HalfOffsets o = half_offsets_at(channels_last, i % pairs, channels, pixels);
    const int64_t a = base + o.a, b = base + o.b;
    grad_x[a] = grad_y[a];
    coupling_backward_from_output_elem(grad_y[b], grad_logdet[sample], y[b], h[a], grad_x[b],
                                       grad_h[a], grad_h[b]);
  }
}

template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_step_cuda(const at::Tensor& in_, const at::Tensor& h_,
                                                      const char* name) {
  check_coupling_step_args(in_, h_, name);
  c10::cuda::CUDAGuard guard(in_.device());
  const auto format = layout_of(in_);
  auto in = in_.contiguous(format), h = h_.contiguous(format);
  auto out = at::empty_like(in, in.options(), format);
  const int64_t n = in.size(0), c = in.size(1), per = n ? in.numel() / n : 0,
                pixels = c ? per / c : 0;
  auto logdet = at::zeros({n}, in.options());
  if (in.numel() == 0) return {out, logdet};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "coupling_step_cuda", [&] {
    coupling_step_kernel<scalar_t, kInverse><<<sample_grid(n, per / 2), kThreads, 0, stream>>>(
        in.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        logdet.data_ptr<scalar_t>(), c, pixels, format == at::MemoryFormat::ChannelsLast);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_step_forward_cuda(const at::Tensor& x,
                                                              const at::Tensor& h) {
  return coupling_step_cuda<false>(x, h, "coupling_step_forward");
}

std::tuple<at::Tensor, at::Tensor> coupling_step_inverse_cuda(const at::Tensor& y,
                                                              const at::Tensor& h) {
  return coupling_step_cuda<true>(y, h, "coupling_step_inverse");
}

std::tuple<at::Tensor, at::Tensor> coupling_step_backward_cuda(const at::Tensor& grad_y_,
                                                               const at::Tensor& grad_logdet_,
                                                               const at::Tensor& y_,
                                                               const at::Tensor& h_) {
  check_coupling_step_args(y_, h_, "coupling_step_backward");
  check_backward_grads(grad_y_, grad_logdet_, y_, "coupling_step_backward", "y");
  c10::cuda::CUDAGuard guard(y_.device());
  const auto format = layout_of(y_);
  auto y = y_.contiguous(format), h = h_.contiguous(format);
  auto gy = grad_y_.to(y.scalar_type()).contiguous(format);
  auto gl = grad_logdet_.to(y.scalar_type()).contiguous();
  auto gx = at::empty_like(y, y.options(), format), gh = at::empty_like(y, y.options(), format);
  const int64_t n = y.size(0), c = y.size(1), per = n ? y.numel() / n : 0, pixels = c ? per / c : 0;
  const int64_t total_pairs = y.numel() / 2;
  if (total_pairs == 0) return {gx, gh};
  const int64_t blocks = std::min<int64_t>((total_pairs + kThreads - 1) / kThreads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "coupling_step_backward_cuda", [&] {
    coupling_step_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), gl.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
        h.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), c, pixels,
        format == at::MemoryFormat::ChannelsLast, total_pairs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gh};
}

}  // namespace

TORCH_LIBRARY_IMPL(missingglow, CUDA, m) {
  m.impl("coupling_step_forward", &coupling_step_forward_cuda);
  m.impl("coupling_step_inverse", &coupling_step_inverse_cuda);
  m.impl("coupling_step_backward", &coupling_step_backward_cuda);
}

}  // namespace missingglow
