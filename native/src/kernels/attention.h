// The decoder's non-matmul work: grouped-query attention with rotary positions over a
// KV cache, and the gated MLP activation (SiLU(gate) * up). The ONNX Runtime ops
// GroupQueryRotaryAttention and SwiGLU (native/src/ort/decoder_ops.cc) call these.
//
// The loops are written once (attention.cc) over a few vector primitives that each ISA
// implements in its own file (attention_{reference,avx2,neon}.cc); vector_ops() picks
// one at run time. The math is documented in docs/llm.md ("Fused decoder ops").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/gemm.h"

namespace edgepet {

// The vector primitives of one ISA. n is any count >= 0; tails are handled.
struct VectorOps {
  const char* name;
  // out[j] = q . keys[j] for n rows of d floats (keys[j] = keys + j * d).
  void (*dots)(const float* q, const float* keys, int64_t n, int64_t d, float* out);
  // out = sum over j < n of p[j] * values[j] (rows of d floats); out is overwritten.
  void (*weighted_sum)(const float* p, const float* values, int64_t n, int64_t d, float* out);
  // x[i] = exp(x[i] - shift) in place; returns the sum of the results.
  float (*exp_shifted)(float* x, int64_t n, float shift);
  // out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
  // dots and weighted_sum over an fp16 cache (keys, values as IEEE half bits).
  void (*dots_half)(const float* q, const Half* keys, int64_t n, int64_t d, float* out);
  void (*weighted_sum_half)(const float* p, const Half* values, int64_t n, int64_t d,
                            float* out);
  // out[i] = x[i] as fp16, rounded to nearest even (float_to_half).
  void (*to_half)(const float* x, Half* out, int64_t n);
};

// A cache element as a float, stored as float or as fp16: the scalar form every ISA's
// dots and weighted_sum use for the elements past their last full vector.
inline float cache_value(float x) { return x; }
inline float cache_value(Half h) { return half_to_float(h); }

const VectorOps& reference_vector_ops();
const VectorOps* avx2_vector_ops();  // null where not built or the CPU lacks AVX2 + FMA
const VectorOps* neon_vector_ops();  // null where not built
// Every set usable on this CPU, best first (the reference last).
std::vector<const VectorOps*> available_vector_ops();
// The best set, or the one EDGEPET_KERNEL names when it is "reference".
const VectorOps& vector_ops();

// Sizes of one attention call. The fused projection holds, per token, the queries of
// all heads, then the keys, then the values: (heads + 2 * kv_heads) * head_dim floats.
//
// The cache is kept in one of two ways. Appending (past_rows = cache_rows = 0): the past
// buffers hold exactly `past` rows per (batch, kv head) and the present ones `past + seq`.
// A fixed-capacity buffer (ONNX Runtime GenAI's "past-present share buffer"): past and
// present both hold `cache_rows` rows per (batch, kv head), of which the first `past` are
// valid; the new rows are written at past .. past + seq - 1 and the rest is left as it is.
// When present and past are the same memory nothing is copied.
struct AttentionShape {
  int64_t batch = 0, seq = 0, past = 0;
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  int64_t rope_positions = 0;  // rows of the cos/sin tables ([positions, head_dim / 2])
  int64_t past_rows = 0;       // rows per cache head of past_key/value (0: past)
  int64_t cache_rows = 0;      // rows per cache head of present_key/value (0: past + seq)

  int64_t past_stride() const { return past_rows > 0 ? past_rows : past; }
  int64_t cache_stride() const { return cache_rows > 0 ? cache_rows : past + seq; }
};

// What is wrong with the sizes (heads not a multiple of kv_heads, an odd head_dim, a
// position past the RoPE tables, ...); empty when they are right.
std::string check_attention(const AttentionShape& s);

// The cache's keys and values are floats, or fp16 (half_cache): half the bytes a decode
// step reads, as llama.cpp's default f16 cache; the new rows are rounded to fp16 when
// written, and attention reads them back as floats.
struct AttentionArgs {
  AttentionShape shape;
  bool half_cache = false;            // past and present hold Half, not float
  const float* qkv = nullptr;         // [batch, seq, (heads + 2 kv_heads) head_dim]
  const void* past_key = nullptr;     // [batch, kv_heads, past_stride(), head_dim]
  const void* past_value = nullptr;   // same
  const float* cos = nullptr;         // [rope_positions, head_dim / 2]
  const float* sin = nullptr;         // same
  float scale = 1.0f;                 // applied to q . k before the softmax
  float* out = nullptr;               // [batch, seq, heads head_dim]
  void* present_key = nullptr;        // [batch, kv_heads, cache_stride(), head_dim]; may
  void* present_value = nullptr;      // be past_key / past_value (a shared buffer)
};

// Splits qkv, rotates q and k (rotate-half RoPE at positions past .. past + seq - 1),
// writes the cache with the new positions after the past ones, and attends causally: query t sees
// the cache and new tokens 0..t. Query head h reads kv head h / (heads / kv_heads).
// check_attention(args.shape) must be empty.
void decoder_attention(const VectorOps& ops, const AttentionArgs& args,
                       const Parallel& parallel);

// out[r, i] = silu(x[r, i]) * x[r, inner + i] for rows of 2 * inner floats.
void swiglu(const VectorOps& ops, const float* x, float* out, int64_t rows, int64_t inner,
            const Parallel& parallel);

}  // namespace edgepet
