// fissure's int4 matmul for CPU decoding: y = x W^T (+ bias) with W in 4-bit levels, a scale and
// a minimum per group of 32 weights of a row (w = d * q + m, q in 0..15: llama.cpp's Q4_1), and x
// quantised on the fly to int8 per group of 32 (x = dx * xq: llama.cpp's Q8_1). A group's dot
// product is then one integer multiply-add of 32 byte pairs, AVX2's `maddubs`, instead of
// converting 32 weights to floats; torch's int4 kernel does the latter, which made fissure's
// batch-1 int4 decoding 0.63x llama.cpp's on an AVX2-only CPU (benchmarks/README.md).
//
//   dot(group) = d * dx * sum(q * xq) + m * sum(x)
//
// Layout, per row n and group g of W: qweight[n][16 g .. 16 g + 15], byte j holding q[32 g + j]
// in its low nibble and q[32 g + 16 + j] in its high one; scales[n][g] = d, mins[n][g] = m (fp16).
// Built on first use by fissure/models/q4_kernel.py (torch.utils.cpp_extension), with -mavx2 where
// the CPU has it; the scalar loops below compute the same sums elsewhere.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t QK = 32;  // weights (and activations) per group

// Groups of W multiplied at once (two with AVX2): the activations of each run of CHUNK whole groups
// are stored as their first halves (16 levels each), then their second halves, so that one load of
// W's bytes, masked or shifted, meets one load of activations.
#if defined(__AVX2__)
constexpr int64_t CHUNK = 2;
#else
constexpr int64_t CHUNK = 1;
#endif

// one group of 32 activations -> int8 levels (the first 16 to first[], the last 16 to second[]);
// returns the group's step dx and stores its exact sum
inline float quantize_group(const float* v, int8_t* first, int8_t* second, float* sum) {
#ifdef __AVX2__
  const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8), v2 = _mm256_loadu_ps(v + 16),
               v3 = _mm256_loadu_ps(v + 24);
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                           _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
  const __m256 s = _mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3));
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  *sum = _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
  const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  // round to nearest even (as nearbyint), then pack to bytes and undo the packs' lane order (as ggml)
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
  const __m256i packed = _mm256_permutevar8x32_epi32(
      _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3)), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(first), _mm256_castsi256_si128(packed));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(second), _mm256_extracti128_si256(packed, 1));
#else
  float amax = 0.f, total = 0.f;
  for (int j = 0; j < QK; ++j) {
    amax = std::max(amax, std::fabs(v[j]));
    total += v[j];
  }
  *sum = total;
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int j = 0; j < 16; ++j) {
    first[j] = static_cast<int8_t>(std::nearbyint(v[j] * inv));
    second[j] = static_cast<int8_t>(std::nearbyint(v[16 + j] * inv));
  }
#endif
  return amax / 127.f;
}

// x (M, K) -> int8 levels (in CHUNK order), each group's step dx and its exact sum
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* xq, float* dx, float* sx) {
  const int64_t G = K / QK, C = CHUNK, GC = G / C * C;
  at::parallel_for(0, M, 4, [&](int64_t begin, int64_t end) {  // one row is too little to share
    for (int64_t m = begin; m < end; ++m) {
      for (int64_t g = 0; g < G; ++g) {
        // where level j < 16 goes; level 16 + j goes to second + j
        int8_t* first = g < GC ? xq + m * K + (g / C) * C * QK + (g % C) * 16 : xq + m * K + g * QK;
        int8_t* second = g < GC ? first + C * 16 : first + 16;
        dx[m * G + g] = quantize_group(x + m * K + g * QK, first, second, sx + m * G + g);
      }
    }
  });
}

inline float f32(at::Half h) {
#ifdef __AVX2__
  return _cvtsh_ss(h.x);  // F16C
#else
  return static_cast<float>(h);
#endif
}

// A tile of outputs: ROWS rows of W (G groups each, row stride ldw bytes) against MT quantised
// activation rows (stride K = 32 G levels), each output plus its row's sum(min[g] * sx[g]);
// out[m * ldo + r]. Each row of W is unpacked once for the MT activation rows.
template <int ROWS, int MT>
void dot_tile(const uint8_t* w, int64_t ldw, const at::Half* d, const at::Half* mn, const int8_t* xq,
              const float* dx, const float* sx, int64_t G, float* out, int64_t ldo) {
  const int64_t K = G * QK;
#ifdef __AVX2__
  const __m256i low4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[ROWS][MT];
  for (int r = 0; r < ROWS; ++r)
    for (int m = 0; m < MT; ++m) acc[r][m] = _mm256_setzero_ps();
  int64_t g = 0;
  // two groups at a time (their activations stored by quantize_rows so): lanes 0-3 hold the
  // first group's sums, 4-7 the second's, each scaled by its own d * dx
  const __m256i spread = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
  for (; g + 2 <= G; g += 2) {
    __m256 dxs[MT];  // each activation row's two steps, spread over the lanes
    for (int m = 0; m < MT; ++m) {
      const __m128 dx2 = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(dx + m * G + g)));
      dxs[m] = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dx2), spread);
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * ldw + g * 16));
      if ((g & 3) == 0) {  // a cache line 8 rows ahead: 1.15-1.2x on a step's weights streamed from memory
        _mm_prefetch(reinterpret_cast<const char*>(w + (8 + r) * ldw + g * 16), _MM_HINT_T0);
      }
      const __m256i lo = _mm256_and_si256(b, low4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
      const __m128 d2 = _mm_cvtph_ps(_mm_cvtsi32_si128(*reinterpret_cast<const int32_t*>(d + r * G + g)));
      const __m256 ds = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d2), spread);
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = xq + m * K + g * QK;
        const __m256i p = _mm256_add_epi16(
            _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))),
            _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32))));
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), _mm256_mul_ps(ds, dxs[m]),
                                    acc[r][m]);
      }
    }
  }
  for (; g < G; ++g) {  // a last, lone group
    for (int r = 0; r < ROWS; ++r) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * ldw + g * 16));
      const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), low4);
      for (int m = 0; m < MT; ++m) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + g * QK));
        const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);  // 8 sums of 4 products
        acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(f32(d[r * G + g]) * dx[m * G + g]),
                                    acc[r][m]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    for (int m = 0; m < MT; ++m) {  // the minimum's term, 8 groups at a time, into the same lanes
      g = 0;
      for (; g + 8 <= G; g += 8) {
        const __m256 m8 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + r * G + g)));
        acc[r][m] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sx + m * G + g), acc[r][m]);
      }
      float tail = 0.f;
      for (; g < G; ++g) tail += f32(mn[r * G + g]) * sx[m * G + g];
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc[r][m]), _mm256_extractf128_ps(acc[r][m], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      out[m * ldo + r] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1))) + tail;
    }
  }
#else
  for (int r = 0; r < ROWS; ++r) {
    for (int m = 0; m < MT; ++m) {
      float acc = 0.f;
      for (int64_t g = 0; g < G; ++g) {
        const uint8_t* b = w + r * ldw + g * 16;
        const int8_t* x = xq + m * K + g * QK;
        int32_t s = 0;
        for (int j = 0; j < 16; ++j) s += (b[j] & 0x0F) * x[j] + (b[j] >> 4) * x[16 + j];
        acc += static_cast<float>(s) * (f32(d[r * G + g]) * dx[m * G + g]) + f32(mn[r * G + g]) * sx[m * G + g];
      }
      out[m * ldo + r] = acc;
    }
  }
#endif
}

at::Tensor q4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                     const at::Tensor& mins, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "q4_linear takes fp32 activations");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 2, "qweight: (N, K / 2) uint8");
  const int64_t N = qweight.size(0), K = qweight.size(1) * 2, G = K / QK;
  TORCH_CHECK(x.size(-1) == K && K % QK == 0, "q4_linear: x has ", x.size(-1), " features, the weight ", K);
  TORCH_CHECK(scales.scalar_type() == at::kHalf && mins.scalar_type() == at::kHalf &&
              scales.numel() == N * G && mins.numel() == N * G, "scales and mins: (N, K / 32) fp16");
  const at::Tensor xc = x.reshape({-1, K}).contiguous();
  const int64_t M = xc.size(0);
  std::vector<int8_t> xq(M * K);
  std::vector<float> dx(M * G), sx(M * G);
  quantize_rows(xc.data_ptr<float>(), M, K, xq.data(), dx.data(), sx.data());

  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty(shape, x.options());
  float* out = y.data_ptr<float>();
  const at::Tensor wc = qweight.contiguous(), dc = scales.contiguous(), mc = mins.contiguous();
  const uint8_t* W = wc.data_ptr<uint8_t>();
  const at::Half* D = dc.data_ptr<at::Half>();
  const at::Half* Mn = mc.data_ptr<at::Half>();
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() == N), "bias: (N,) fp32");
  const at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* B = bias.has_value() ? bc.data_ptr<float>() : nullptr;

  // blocks of 4 rows of W; one activation row takes 4 rows of W at once, several take 4 activation
  // rows per row of W (each row of W unpacked once for them). The bias is added last.
  constexpr int64_t ROWS = 4, MT = 4;
  at::parallel_for(0, (N + ROWS - 1) / ROWS, 8, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t n0 = blk * ROWS, rows = std::min(ROWS, N - n0);
      if (M == 1 && rows == ROWS) {
        dot_tile<ROWS, 1>(W + n0 * (K / 2), K / 2, D + n0 * G, Mn + n0 * G, xq.data(), dx.data(), sx.data(), G,
                          out + n0, 1);
      } else {
        for (int64_t n = n0; n < n0 + rows; ++n) {
          const uint8_t* wn = W + n * (K / 2);
          const at::Half *dn = D + n * G, *mn = Mn + n * G;
          int64_t m = 0;
          for (; m + MT <= M; m += MT) {
            dot_tile<1, MT>(wn, K / 2, dn, mn, xq.data() + m * K, dx.data() + m * G, sx.data() + m * G, G, out + m * N + n, N);
          }
          for (; m < M; ++m) {
            dot_tile<1, 1>(wn, K / 2, dn, mn, xq.data() + m * K, dx.data() + m * G, sx.data() + m * G, G, out + m * N + n, N);
          }
        }
      }
      if (B) {
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = n0; n < n0 + rows; ++n) out[m * N + n] += B[n];
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fissure, m) {
  m.def("q4_linear(Tensor x, Tensor qweight, Tensor scales, Tensor mins, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(fissure, CPU, m) { m.impl("q4_linear", &q4_linear); }
