// CUDA ROSA, two engines:
//   * the automaton: one thread per stream running the same code as the CPU path (rosa_core.h),
//     with the per-stream scratch of a launch interleaved in one workspace (see
//     heron_rosa::Scratch) so that time-indexed accesses of neighbouring threads coalesce. Exact
//     and near-linear on every stream, but one thread per stream leaves most of the GPU idle;
//   * the grouping kernel (rosa_grouping_cuda.cu): one block per stream, parallel within it, for
//     streams that fit in shared memory; the streams it gives up on (periodic ones, large
//     symbols) go to the automaton kernel through device-side flags.
// No torch headers: `nvcc -c` compiles this file standalone.
#include <cuda_runtime.h>
#include <stdint.h>

#include "rosa_core.h"
#include "rosa_cuda.h"
#include "rosa_grouping.h"

namespace {

__global__ void rosa_forward_kernel(const int64_t* __restrict__ q, const int64_t* __restrict__ k,
                                    const int64_t* __restrict__ v, int64_t* __restrict__ out,
                                    int64_t first_stream, int64_t streams_in_chunk, int64_t length,
                                    int64_t channels, int64_t sigma, int64_t chain_budget_per_token,
                                    int32_t* workspace, const int32_t* __restrict__ handed_over) {
  const int64_t local = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (local >= streams_in_chunk) return;
  // Behind the grouping kernel, only the streams it handed over. (A separate kernel that looped
  // over the handed-over streams ran periodic streams 8x slower than this one; cause not pinned.)
  if (handed_over != nullptr && !handed_over[first_stream + local]) return;
  int32_t edge_count = 0;
  const heron_rosa::Scratch<0> scratch{workspace, streams_in_chunk, local};
  // Token ROSA passes one buffer as q and k: the automaton then needs no separate matcher.
  heron_rosa::rosa_run_stream(q, k, v, out, first_stream + local, length, channels, sigma, q == k,
                              chain_budget_per_token, scratch, &edge_count);
}

}  // namespace

// Arguments as in rosa_cuda.h; handed_over: nullptr for every stream, else per-stream flags (only
// flagged streams run).
static cudaError_t run_automaton(const int64_t* q, const int64_t* k, const int64_t* v,
                                 int64_t* out, int64_t batch, int64_t length, int64_t channels,
                                 int64_t sigma, int64_t chain_budget_per_token,
                                 int32_t* workspace, int64_t chunk_streams,
                                 int threads_per_block, cudaStream_t stream,
                                 const int32_t* handed_over) {
  const int64_t num_streams = batch * channels;
  if (num_streams == 0 || length == 0) return cudaSuccess;
  if (chunk_streams <= 0 || threads_per_block <= 0 || threads_per_block > 1024)
    return cudaErrorInvalidValue;
  for (int64_t first = 0; first < num_streams; first += chunk_streams) {
    const int64_t count = num_streams - first < chunk_streams ? num_streams - first : chunk_streams;
    const int64_t blocks = (count + threads_per_block - 1) / threads_per_block;
    rosa_forward_kernel<<<static_cast<unsigned int>(blocks), threads_per_block, 0, stream>>>(
        q, k, v, out, first, count, length, channels, sigma, chain_budget_per_token, workspace,
        handed_over);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

cudaError_t heron_rosa_forward_cuda(const int64_t* q, const int64_t* k, const int64_t* v,
                                    int64_t* out, int64_t batch, int64_t length, int64_t channels,
                                    int64_t sigma, int64_t chain_budget_per_token,
                                    int32_t* workspace, int64_t chunk_streams,
                                    int threads_per_block, cudaStream_t stream) {
  return run_automaton(q, k, v, out, batch, length, channels, sigma, chain_budget_per_token,
                       workspace, chunk_streams, threads_per_block, stream, nullptr);
}

cudaError_t heron_rosa_forward_cuda_grouping(const int64_t* q, const int64_t* k, const int64_t* v,
                                             int64_t* out, int64_t batch, int64_t length,
                                             int64_t channels, int64_t sigma,
                                             int64_t chain_budget_per_token,
                                             int64_t work_per_element, int32_t* handed_over,
                                             int32_t* workspace, int64_t chunk_streams,
                                             int threads_per_block, cudaStream_t stream) {
  if (batch * channels == 0 || length == 0) return cudaSuccess;
  if (chunk_streams <= 0 || threads_per_block <= 0 || threads_per_block > 1024)
    return cudaErrorInvalidValue;
  const cudaError_t status = heron_rosa_grouping::launch(q, k, v, out, batch, length, channels,
                                                         work_per_element, handed_over, stream);
  if (status != cudaSuccess) return status;
  return run_automaton(q, k, v, out, batch, length, channels, sigma, chain_budget_per_token,
                       workspace, chunk_streams, threads_per_block, stream, handed_over);
}
