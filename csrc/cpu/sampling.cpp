// CPU fused sampler: temperature, top-k, top-p, min-p and a counter-based uniform per row (see
// zaya_rt/runtime.h for the exact rule). Probabilities in float64 so that the masks match the float64
// reference; rows run in parallel, each thread on its own slice of the workspace.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/numeric.h"
#include "zaya_rt/runtime.h"

namespace zaya_rt::cpu {
namespace {

struct RowScratch {
  double* p;       // [V] unnormalised probabilities, exp(x - max)
  int32_t* order;  // [V] candidate token ids
  uint8_t* keep;   // [V]
};

// First index of the row's maximum; blocks of kArgmaxBlock are reduced with vectorisable loops and only a block
// that raises the maximum is searched for its index.
constexpr int64_t kArgmaxBlock = 256;

template <typename T>
const char* argmax_row(const T* row, int64_t V, int64_t* out) {
  float best = -INFINITY;
  int64_t at = 0;
  float block[kArgmaxBlock];
  for (int64_t i0 = 0; i0 < V; i0 += kArgmaxBlock) {
    const int64_t n = std::min(kArgmaxBlock, V - i0);
    for (int64_t i = 0; i < n; ++i) block[i] = load<T>(row, i0 + i);
    float mx = -INFINITY;
    int nan = 0;
#pragma omp simd reduction(max : mx) reduction(| : nan)
    for (int64_t i = 0; i < n; ++i) {
      nan |= block[i] != block[i];
      mx = block[i] > mx ? block[i] : mx;
    }
    if (nan) return "logits contain NaN";
    if (mx > best || i0 == 0) {
      int64_t j = 0;
      while (block[j] != mx) ++j;
      best = mx;
      at = i0 + j;
    }
  }
  *out = at;
  return nullptr;
}

template <typename T>
const char* sample_row(const T* row, int64_t V, double temperature, int64_t top_k, double top_p, double min_p,
                       double u, RowScratch s, int64_t* out) {
  double x_max = -INFINITY;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load<T>(row, i);
    if (x != x) return "logits contain NaN";
    s.p[i] = static_cast<double>(x) / temperature;
    x_max = std::max(x_max, s.p[i]);
  }
  if (!std::isfinite(x_max)) return "logits have no finite maximum";
  for (int64_t i = 0; i < V; ++i) {
    s.p[i] = std::exp(s.p[i] - x_max);
    s.keep[i] = s.p[i] >= min_p;  // min-p relative to p_max, which is exp(0) = 1 here
  }
  const auto before = [&](int32_t a, int32_t b) { return s.p[a] > s.p[b] || (s.p[a] == s.p[b] && a < b); };
  int64_t n = V;
  if ((top_k > 0 && top_k < V) || top_p < 1.0) {
    for (int64_t i = 0; i < V; ++i) s.order[i] = static_cast<int32_t>(i);
    if (top_k > 0 && top_k < V) {
      std::nth_element(s.order, s.order + top_k, s.order + V, before);
      for (int64_t i = top_k; i < V; ++i) s.keep[s.order[i]] = 0;
      n = top_k;
    }
    if (top_p < 1.0) {
      double mass = 0.0;
      for (int64_t r = 0; r < n; ++r) mass += s.p[s.order[r]];
      // Only the most probable tokens can be kept: find a threshold whose candidates already hold top_p of the
      // mass (the first token outside them then has at least that much mass before it), and sort just those.
      double threshold = 1.0, candidate_mass = 0.0;
      for (;;) {
        candidate_mass = 0.0;
        for (int64_t r = 0; r < n; ++r) candidate_mass += s.p[s.order[r]] >= threshold ? s.p[s.order[r]] : 0.0;
        if (candidate_mass / mass >= top_p || threshold == 0.0) break;
        threshold = threshold > 1e-300 ? threshold / 16.0 : 0.0;
      }
      const int64_t m = std::partition(s.order, s.order + n, [&](int32_t i) { return s.p[i] >= threshold; }) - s.order;
      for (int64_t r = m; r < n; ++r) s.keep[s.order[r]] = 0;
      std::sort(s.order, s.order + m, before);
      n = m;
      double cum = 0.0;
      for (int64_t r = 0; r < n; ++r) {
        if (cum / mass >= top_p) s.keep[s.order[r]] = 0;
        cum += s.p[s.order[r]];
      }
    }
  }
  double total = 0.0;
  for (int64_t i = 0; i < V; ++i) total += s.keep[i] ? s.p[i] : 0.0;
  const double target = u * total;
  double cum = 0.0;
  int64_t last = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (!s.keep[i]) continue;
    cum += s.p[i];
    last = i;
    if (cum > target) break;
  }
  *out = last;
  return last < 0 ? "no token survived the sampling filters" : nullptr;
}

int64_t row_scratch_bytes(int64_t V) { return V * (8 + 4 + 1) + 64; }

template <typename T>
const char* sample_rows(const SampleParams& p, int threads) {
  const char* err = nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t b = 0; b < p.B; ++b) {
    const T* row = static_cast<const T*>(p.logits) + b * p.row_stride;
    const char* e;
    if (p.temperature[b] == 0.0f) {
      e = argmax_row(row, p.V, p.out + b);
    } else {
      char* base = static_cast<char*>(p.workspace) + omp_get_thread_num() * row_scratch_bytes(p.V);
      RowScratch s{reinterpret_cast<double*>(base), reinterpret_cast<int32_t*>(base + p.V * 8),
                   reinterpret_cast<uint8_t*>(base + p.V * 12)};
      e = sample_row(row, p.V, p.temperature[b], p.top_k[b], p.top_p[b], p.min_p[b],
                     sampling_uniform(p.seed[b], p.step[b]), s, p.out + b);
    }
    if (e != nullptr) {
#pragma omp critical
      err = e;
    }
  }
  return err;
}

}  // namespace

int64_t sample_workspace(int64_t B, int64_t V) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(B, omp_get_max_threads()));
  return threads * row_scratch_bytes(V);
}

const char* sample_tokens(const SampleParams& p) {
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(p.B, omp_get_max_threads()));
  ZAYA_RT_DISPATCH_FLOAT(p.dtype, T, return sample_rows<T>(p, static_cast<int>(threads)));
  return nullptr;
}

}  // namespace zaya_rt::cpu
