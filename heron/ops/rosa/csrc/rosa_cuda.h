// Host entry points of the CUDA ROSA engines (rosa_cuda.cu), for the torch binding. Only the
// CUDA runtime types: the binding syntax-checks against a CPU build of torch.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

// q, k, v, out: device pointers to contiguous int64 [batch, length, channels]; streams are the
// (batch, channel) pairs. workspace: int32 of at least chunk_streams * make_layout(length,
// sigma).total elements; streams run in chunks of chunk_streams, all on `stream`.
// chain_budget_per_token: see heron_rosa::rosa_run_stream (0 = two-phase algorithm only).

// The automaton kernel on every stream.
cudaError_t heron_rosa_forward_cuda(const int64_t* q, const int64_t* k, const int64_t* v,
                                    int64_t* out, int64_t batch, int64_t length, int64_t channels,
                                    int64_t sigma, int64_t chain_budget_per_token,
                                    int32_t* workspace, int64_t chunk_streams,
                                    int threads_per_block, cudaStream_t stream);

// The grouping kernel on every stream (heron_rosa_grouping::fits(length, q == k) must hold), then
// the automaton kernel on the streams it hands over. handed_over: int32 device buffer of
// batch * channels flags.
cudaError_t heron_rosa_forward_cuda_grouping(const int64_t* q, const int64_t* k, const int64_t* v,
                                             int64_t* out, int64_t batch, int64_t length,
                                             int64_t channels, int64_t sigma,
                                             int64_t chain_budget_per_token,
                                             int64_t work_per_element, int32_t* handed_over,
                                             int32_t* workspace, int64_t chunk_streams,
                                             int threads_per_block, cudaStream_t stream);
