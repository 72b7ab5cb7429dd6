// CUDA kernels of the fused flow ops. The per-element math is flow_math.h, shared with the CPU.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "flow.h"
#include "flow_math.h"
#include "block_reduce.cuh"

namespace missingglow {
namespace {

// grid = (chunks, N): each block covers part of one sample and adds its share of Σ log s.
template <typename T, bool kInverse>
__global__ void coupling_kernel(const T* __restrict__ in, const T* __restrict__ log_s,
                                const T* __restrict__ t, T* __restrict__ out, T* __restrict__ logdet,
                                int64_t per) {
  const int64_t sample = blockIdx.y;
  const int64_t base = sample * per;
  T acc = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < per;
       i += (int64_t)gridDim.x * blockDim.x) {
    T log_scale;
    if (kInverse) {
      coupling_inverse_elem(in[base + i], log_s[base + i], t[base + i], out[base + i], log_scale);
      acc -= log_scale;
    } else {
      coupling_forward_elem(in[base + i], log_s[base + i], t[base + i], out[base + i], log_scale);
      acc += log_scale;
    }
  }
  block_sum_to(acc, logdet + sample);
}

template <typename T>
__global__ void coupling_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ grad_logdet,
                                         const T* __restrict__ x, const T* __restrict__ log_s,
                                         const T* __restrict__ t, T* __restrict__ grad_x,
                                         T* __restrict__ grad_log_s, T* __restrict__ grad_t,
                                         int64_t per, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    coupling_backward_elem(grad_y[i], grad_logdet[i / per], x[i], log_s[i], t[i], grad_x[i],
                           grad_log_s[i], grad_t[i]);
  }
}

template <bool kInverse>
std::tuple<at::Tensor, at::Tensor> coupling_cuda(const at::Tensor& in_b, const at::Tensor& log_s,
                                                 const at::Tensor& t, const char* name) {
  check_coupling_args(in_b, log_s, t, name);
  c10::cuda::CUDAGuard guard(in_b.device());
  auto in = in_b.contiguous(), h = log_s.contiguous(), tt = t.contiguous();
  auto out = at::empty_like(in);
  const int64_t n = in.size(0), per = n ? in.numel() / n : 0;
  auto logdet = at::zeros({n}, in.options());
  if (n == 0) return {out, logdet};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "coupling_cuda", [&] {
    coupling_kernel<scalar_t, kInverse><<<sample_grid(n, per), kThreads, 0, stream>>>(
        in.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), tt.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), logdet.data_ptr<scalar_t>(), per);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, logdet};
}

std::tuple<at::Tensor, at::Tensor> coupling_forward_cuda(const at::Tensor& x_b, const at::Tensor& log_s,
                                                         const at::Tensor& t) {
  return coupling_cuda<false>(x_b, log_s, t, "coupling_forward");
}

std::tuple<at::Tensor, at::Tensor> coupling_inverse_cuda(const at::Tensor& y_b, const at::Tensor& log_s,
                                                         const at::Tensor& t) {
  return coupling_cuda<true>(y_b, log_s, t, "coupling_inverse");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> coupling_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& grad_logdet, const at::Tensor& x_b,
    const at::Tensor& log_s, const at::Tensor& t) {
  check_coupling_args(x_b, log_s, t, "coupling_backward");
  check_backward_grads(grad_y, grad_logdet, x_b, "coupling_backward", "x_b");
  c10::cuda::CUDAGuard guard(x_b.device());
  auto gy = grad_y.contiguous().to(x_b.scalar_type()), gl = grad_logdet.contiguous().to(x_b.scalar_type());
  auto x = x_b.contiguous(), h = log_s.contiguous(), tt = t.contiguous();
  auto gx = at::empty_like(x), gh = at::empty_like(x), gt = at::empty_like(x);
  const int64_t n = x.size(0), total = x.numel(), per = n ? total / n : 0;
  if (total == 0) return {gx, gh, gt};
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "coupling_backward_cuda", [&] {
    coupling_backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), gl.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
        tt.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gh.data_ptr<scalar_t>(), gt.data_ptr<scalar_t>(),
        per, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gh, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(missingglow, CUDA, m) {
  m.impl("coupling_forward", &coupling_forward_cuda);
  m.impl("coupling_inverse", &coupling_inverse_cuda);
  m.impl("coupling_backward", &coupling_backward_cuda);
}

}  // namespace missingglow
