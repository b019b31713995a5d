// Grouped-query rotary attention over a KV cache and SwiGLU, written once over the
// vector primitives of attention.h; the per-ISA primitives live in attention_<isa>.cc.
#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

namespace edgepet {

#ifndef EDGEPET_HAVE_AVX2
const VectorOps* avx2_vector_ops() { return nullptr; }
#endif
#ifndef EDGEPET_HAVE_NEON
const VectorOps* neon_vector_ops() { return nullptr; }
#endif

std::vector<const VectorOps*> available_vector_ops() {
  std::vector<const VectorOps*> out;
  for (const VectorOps* ops : {avx2_vector_ops(), neon_vector_ops()}) {
    if (ops) out.push_back(ops);
  }
  out.push_back(&reference_vector_ops());
  return out;
}

const VectorOps& vector_ops() {
  static const VectorOps* chosen = [] {
    const char* env = std::getenv("EDGEPET_KERNEL");
    if (env && std::strcmp(env, "reference") == 0) return &reference_vector_ops();
    return available_vector_ops().front();
  }();
  return *chosen;
}

std::string check_attention(const AttentionShape& s) {
  auto num = [](int64_t v) { return std::to_string(v); };
  if (s.heads <= 0 || s.kv_heads <= 0) {
    return "num_heads=" + num(s.heads) + " and kv_num_heads=" + num(s.kv_heads) +
           " must be positive";
  }
  if (s.heads % s.kv_heads != 0) {
    return "num_heads=" + num(s.heads) + " is not a multiple of kv_num_heads=" +
           num(s.kv_heads);
  }
  if (s.head_dim <= 0 || s.head_dim % 2 != 0) {
    return "head size " + num(s.head_dim) + " must be positive and even (rotate-half RoPE)";
  }
  if (s.batch < 0 || s.seq < 0 || s.past < 0 || s.past_rows < 0 || s.cache_rows < 0) {
    return "negative dimension";
  }
  if (s.past > s.past_stride() || s.past_stride() > s.cache_stride() ||
      s.past + s.seq > s.cache_stride()) {
    return "past length " + num(s.past) + " + " + num(s.seq) + " new tokens do not fit a cache "
           "of " + num(s.cache_stride()) + " positions (past buffer " + num(s.past_stride()) +
           ")";
  }
  if (s.seq > 0 && s.past + s.seq > s.rope_positions) {
    return "position " + num(s.past + s.seq - 1) + " (past " + num(s.past) + " + " +
           num(s.seq) + " new tokens) is beyond the RoPE tables' " + num(s.rope_positions) +
           " positions — the context is longer than the model was exported for; export "
           "again with a larger --max-context, or shorten the prompt";
  }
  return {};
}

namespace {

// Rotate-half RoPE of one head's vector x at table row (cos, sin), times `scale`.
void rotate(const float* x, const float* cos, const float* sin, int64_t half, float scale,
            float* out) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    out[i] = (a * cos[i] - b * sin[i]) * scale;
    out[i + half] = (b * cos[i] + a * sin[i]) * scale;
  }
}

// Queries per parallel task in prefill: enough to amortize a task, few enough that the
// causal triangle's unequal rows still spread over the threads.
constexpr int64_t kQueriesPerTask = 16;
// Below this many multiply-adds (q.k and p.v together) a call runs on the calling thread.
// A decode step reads every cached key and value of the layer from L3 or memory (the
// layer's weights passed through L2 since), so it is bound by memory latency, not
// arithmetic: from about 60 cached positions of SmolLM2 (9 heads x 64) two threads
// fetching apart pay for the hand-off (docs/llm.md).
constexpr double kParallelMinWork = double(1 << 16);

struct Job {
  const VectorOps* ops;
  const AttentionArgs* args;
  int64_t chunks;  // query chunks per (batch, head)
};

void attend_chunk(void* data, int64_t task) {
  const Job& job = *static_cast<const Job*>(data);
  const AttentionArgs& a = *job.args;
  const AttentionShape& s = a.shape;
  const VectorOps& ops = *job.ops;
  const int64_t d = s.head_dim, half = d / 2, stride = s.cache_stride();
  const int64_t chunk = task % job.chunks, bh = task / job.chunks;
  const int64_t b = bh / s.heads, h = bh % s.heads, kvh = h / (s.heads / s.kv_heads);
  const int64_t row = (s.heads + 2 * s.kv_heads) * d;
  const int64_t cache = (b * s.kv_heads + kvh) * stride * d;  // elements before this head
  // Per-thread scratch, grown as the cache grows: no allocation per head and step.
  thread_local std::vector<float> q, scores;
  q.resize(static_cast<size_t>(d));
  scores.resize(std::max(scores.size(), static_cast<size_t>(s.past + s.seq)));
  const int64_t t_end = std::min(s.seq, (chunk + 1) * kQueriesPerTask);
  for (int64_t t = chunk * kQueriesPerTask; t < t_end; ++t) {
    const int64_t pos = s.past + t, seen = pos + 1;
    rotate(a.qkv + (b * s.seq + t) * row + h * d, a.cos + pos * half, a.sin + pos * half,
           half, a.scale, q.data());
    if (a.half_cache) {
      ops.dots_half(q.data(), static_cast<const Half*>(a.present_key) + cache, seen, d,
                    scores.data());
    } else {
      ops.dots(q.data(), static_cast<const float*>(a.present_key) + cache, seen, d,
               scores.data());
    }
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < seen; ++j) top = std::max(top, scores[j]);
    const float inv = 1.0f / ops.exp_shifted(scores.data(), seen, top);
    for (int64_t j = 0; j < seen; ++j) scores[j] *= inv;
    float* out = a.out + (b * s.seq + t) * s.heads * d + h * d;
    if (a.half_cache) {
      ops.weighted_sum_half(scores.data(), static_cast<const Half*>(a.present_value) + cache,
                            seen, d, out);
    } else {
      ops.weighted_sum(scores.data(), static_cast<const float*>(a.present_value) + cache, seen,
                       d, out);
    }
  }
}

}  // namespace

void decoder_attention(const VectorOps& ops, const AttentionArgs& a, const Parallel& parallel) {
  const AttentionShape& s = a.shape;
  const int64_t d = s.head_dim, half = d / 2;
  const int64_t past_stride = s.past_stride(), stride = s.cache_stride();
  const int64_t row = (s.heads + 2 * s.kv_heads) * d;
  const size_t element = a.half_cache ? sizeof(Half) : sizeof(float);
  const size_t past_bytes = static_cast<size_t>(past_stride * d) * element;
  const size_t row_bytes = static_cast<size_t>(d) * element;
  thread_local std::vector<float> rotated;  // a rotated key before its fp16 rounding
  rotated.resize(static_cast<size_t>(d));
  // The cache: the past rows (unless present is past's own buffer), then the new keys
  // (rotated) and values, rounded to fp16 in a half cache.
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      const int64_t cache = (b * s.kv_heads + g);
      char* key = static_cast<char*>(a.present_key) + cache * stride * row_bytes;
      char* value = static_cast<char*>(a.present_value) + cache * stride * row_bytes;
      for (const auto& [present, past, to] : {std::tuple{a.present_key, a.past_key, key},
                                              std::tuple{a.present_value, a.past_value, value}}) {
        if (past_bytes && present != past) {
          std::memcpy(to, static_cast<const char*>(past) + cache * past_bytes, past_bytes);
        }
      }
      for (int64_t t = 0; t < s.seq; ++t) {
        const int64_t pos = s.past + t;
        const float* src = a.qkv + (b * s.seq + t) * row + (s.heads + g) * d;
        char* key_row = key + pos * row_bytes;
        char* value_row = value + pos * row_bytes;
        if (a.half_cache) {
          rotate(src, a.cos + pos * half, a.sin + pos * half, half, 1.0f, rotated.data());
          ops.to_half(rotated.data(), reinterpret_cast<Half*>(key_row), d);
          ops.to_half(src + s.kv_heads * d, reinterpret_cast<Half*>(value_row), d);
        } else {
          rotate(src, a.cos + pos * half, a.sin + pos * half, half, 1.0f,
                 reinterpret_cast<float*>(key_row));
          std::memcpy(value_row, src + s.kv_heads * d, row_bytes);
        }
      }
    }
  }
  if (s.batch == 0 || s.seq == 0) return;
  Job job{&ops, &a, (s.seq + kQueriesPerTask - 1) / kQueriesPerTask};
  const int64_t tasks = s.batch * s.heads * job.chunks;
  const double work = 2.0 * double(s.batch) * double(s.heads) * double(s.seq) *
                      (double(s.past) + 0.5 * double(s.seq)) * double(d);
  if (work < kParallelMinWork) {
    Serial().run(tasks, attend_chunk, &job);
  } else {
    parallel.run(tasks, attend_chunk, &job);
  }
}

namespace {

struct SwigluJob {
  const VectorOps* ops;
  const float* x;
  float* out;
  int64_t rows, inner, rows_per_task;
};

void swiglu_rows(void* data, int64_t task) {
  const SwigluJob& j = *static_cast<const SwigluJob*>(data);
  const int64_t end = std::min(j.rows, (task + 1) * j.rows_per_task);
  for (int64_t r = task * j.rows_per_task; r < end; ++r) {
    const float* x = j.x + r * 2 * j.inner;
    j.ops->silu_mul(x, x + j.inner, j.out + r * j.inner, j.inner);
  }
}

// Below this many outputs SwiGLU runs on the calling thread (one decode token of a
// 1536-wide MLP is ~1 microsecond of work).
constexpr int64_t kSwigluParallelMin = int64_t{1} << 16;

}  // namespace

void swiglu(const VectorOps& ops, const float* x, float* out, int64_t rows, int64_t inner,
            const Parallel& parallel) {
  if (rows <= 0 || inner <= 0) return;
  const int64_t per_task = std::max<int64_t>(1, kSwigluParallelMin / 4 / inner);
  SwigluJob job{&ops, x, out, rows, inner, per_task};
  const int64_t tasks = (rows + per_task - 1) / per_task;
  if (rows * inner < kSwigluParallelMin) {
    Serial().run(tasks, swiglu_rows, &job);
  } else {
    parallel.run(tasks, swiglu_rows, &job);
  }
}

}  // namespace edgepet
