// Self-attention over a few feature fields with narrow heads, forward and backward, on the CPU.
//
// CTR models attend over F ~ 20-60 fields with heads d ~ 8-32 wide, for thousands of samples
// per batch: many tiny problems, where a general kernel spends its time on set-up and layout
// copies. Here one problem is one (sample, head), held in cache from start to end, and the
// tensors keep the layout of the projection that makes them:
//   qkv [B, F, 3, H, d]  (the output of one Linear(in, 3 * H * d), viewed)
//   out [B, F, H, d]     (viewed as [B, F, H * d], the next layer's input, without a copy)
//   lse [B, H, F]        (each score row's log-sum-exp: backward recomputes the softmax from it,
//                         which is cheaper than writing and reading [B, H, F, F] probabilities)
// Scores are scaled by `scale` (1/sqrt(d) for scaled dot-product attention).
//
// Sizes are compile-time constants: the head width D (4, 8, 16 or 32) and the number of
// fields rounded up to FP, a multiple of 16 up to 64. A score row is FP/16 vectors of 16
// floats (GCC/Clang vector extensions: the compiler maps them to the machine's registers,
// AVX-512, AVX2 or SSE), and query rows go kRows at a time so that independent accumulators
// hide the latency of the multiply-adds. Padded fields get probability 0 and zero keys and
// values; padded query rows read a zero query and carry a zero output gradient, and are
// discarded. exp is a polynomial accurate to a few float ulps.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kLanes = 16;  // floats per score vector: FP is a multiple of it
constexpr int kRows = 4;    // query rows per block

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline Vec splat(float x) { return Vec{} + x; }

inline float lane_max(Vec x) {
  float m = x[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, x[l]);
  return m;
}

inline float lane_sum(Vec x) {
  float t = 0.0f;
  for (int l = 0; l < kLanes; ++l) t += x[l];
  return t;
}

// exp(x) for x <= 0: 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p a degree-6 Taylor
// polynomial (relative error < 2e-7). Below -87 (exp ~ 1.6e-38, still a normal float) it
// returns exp(-87); callers multiply padding by 0.
inline Vec exp_nonpositive(Vec x) {
  const Vec y = x < -87.0f ? splat(-87.0f) : x;
  // round to nearest: truncation of t - 0.5 for t <= 0
  const IVec n = __builtin_convertvector(y * 1.44269504088896341f - 0.5f, IVec);
  const Vec k = __builtin_convertvector(n, Vec);
  const Vec r = y - k * 0.693145751953125f - k * 1.428606765330187e-06f;  // ln2 in two parts
  Vec p = splat(1.0f / 720.0f);
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const IVec bits = (n + 127) << 23;  // 2^n as floats' bits
  Vec two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// One (sample, head): its keys and values gathered into padded fixed-size tiles.
template <int D, int FP>
struct Problem {
  static constexpr int NV = FP / kLanes;  // vectors per score row
  const float* __restrict__ base;         // field f's q at base + f * row, k at + H * D, v at + 2 * H * D
  int64_t F, H, row;
  alignas(64) Vec kt[D][NV];              // keys transposed and scaled; padded fields 0
  alignas(64) float v[FP][D];             // values; padded fields 0
  alignas(64) float zero[D];              // the query of padded rows

  Problem(const float* b, int64_t fields, int64_t heads, float scale)
      : base(b), F(fields), H(heads), row(3 * heads * D) {
    float* kt_flat = reinterpret_cast<float*>(kt);
    std::fill(kt_flat, kt_flat + D * FP, 0.0f);
    std::fill(&v[0][0], &v[0][0] + FP * D, 0.0f);
    std::fill(zero, zero + D, 0.0f);
    for (int64_t g = 0; g < F; ++g) {
      const float* k = key(g);
      const float* val = value(g);
      for (int e = 0; e < D; ++e) {
        kt_flat[e * FP + g] = k[e] * scale;
        v[g][e] = val[e];
      }
    }
  }

  const float* query(int64_t f) const { return f < F ? base + f * row : zero; }
  const float* key(int64_t g) const { return base + g * row + H * D; }
  const float* value(int64_t g) const { return base + g * row + 2 * H * D; }

  // s[i] = <q_i, k_g> * scale + pad_g for rows f0 .. f0 + kRows - 1.
  void scores(int64_t f0, const Vec (&pad)[NV], Vec (&s)[kRows][NV]) const {
    const float* q[kRows];
    for (int i = 0; i < kRows; ++i) q[i] = query(f0 + i);
    for (int i = 0; i < kRows; ++i)
      for (int n = 0; n < NV; ++n) s[i][n] = pad[n];
    for (int e = 0; e < D; ++e)
      for (int i = 0; i < kRows; ++i) {
        const float qe = q[i][e];
        for (int n = 0; n < NV; ++n) s[i][n] += qe * kt[e][n];
      }
  }

  // acc[i] = sum_g p[i][g] * v[g] (a probability-weighted sum of value rows).
  void weighted_values(const float (&p)[kRows][FP], float (&acc)[kRows][D]) const {
    for (int i = 0; i < kRows; ++i) std::fill(acc[i], acc[i] + D, 0.0f);
    for (int g = 0; g < FP; ++g)
      for (int i = 0; i < kRows; ++i) {
        const float pg = p[i][g];
        for (int e = 0; e < D; ++e) acc[i][e] += pg * v[g][e];
      }
  }
};

// Per call: 0 for real fields, -1e30 for padding (added to scores, it leaves the maximum alone),
// and the mask 1 / 0 that zeroes padding's probabilities.
template <int FP>
struct Padding {
  static constexpr int NV = FP / kLanes;
  alignas(64) Vec pad[NV];
  alignas(64) Vec mask[NV];
  explicit Padding(int64_t F) {
    for (int n = 0; n < NV; ++n)
      for (int l = 0; l < kLanes; ++l) {
        const bool real = n * kLanes + l < F;
        pad[n][l] = real ? 0.0f : -1e30f;
        mask[n][l] = real ? 1.0f : 0.0f;
      }
  }
};

template <int D, int FP>
void forward_problem(const Problem<D, FP>& pb, const Padding<FP>& padding, float* __restrict__ out,
                     float* __restrict__ lse) {
  constexpr int NV = FP / kLanes;
  const int64_t out_row = pb.H * D;  // stride between fields in out
  for (int64_t f0 = 0; f0 < pb.F; f0 += kRows) {
    alignas(64) Vec s[kRows][NV];
    alignas(64) float p[kRows][FP];
    float row_lse[kRows];
    pb.scores(f0, padding.pad, s);
    for (int i = 0; i < kRows; ++i) {
      Vec top = s[i][0];
      for (int n = 1; n < NV; ++n) top = top > s[i][n] ? top : s[i][n];
      const float m = lane_max(top);
      Vec total = Vec{};
      for (int n = 0; n < NV; ++n) {
        s[i][n] = exp_nonpositive(s[i][n] - m) * padding.mask[n];
        total += s[i][n];
      }
      const float sum = lane_sum(total);
      const Vec inv = splat(1.0f / sum);
      for (int n = 0; n < NV; ++n) std::memcpy(&p[i][n * kLanes], &(s[i][n] = s[i][n] * inv), sizeof(Vec));
      row_lse[i] = m + std::log(sum);
    }
    float acc[kRows][D];
    pb.weighted_values(p, acc);
    const int count = static_cast<int>(std::min<int64_t>(kRows, pb.F - f0));
    for (int i = 0; i < count; ++i) {
      std::copy(acc[i], acc[i] + D, out + (f0 + i) * out_row);
      lse[f0 + i] = row_lse[i];
    }
  }
}

template <int D, int FP>
void backward_problem(const Problem<D, FP>& pb, const Padding<FP>& padding, const float* __restrict__ dout,
                      const float* __restrict__ lse, float scale, float* __restrict__ grad) {
  constexpr int NV = FP / kLanes;
  const int64_t out_row = pb.H * D;
  alignas(64) Vec vt[D][NV];   // values transposed
  alignas(64) Vec dkt[D][NV];  // dK, dV transposed: sums over query rows
  alignas(64) Vec dvt[D][NV];
  alignas(64) float k[FP][D];  // keys unscaled, for dQ; padded fields 0
  for (int e = 0; e < D; ++e)
    for (int n = 0; n < NV; ++n) dkt[e][n] = dvt[e][n] = Vec{};
  for (int g = 0; g < FP; ++g)
    for (int e = 0; e < D; ++e) {
      vt[e][g / kLanes][g % kLanes] = pb.v[g][e];
      k[g][e] = g < pb.F ? pb.key(g)[e] : 0.0f;
    }
  for (int64_t f0 = 0; f0 < pb.F; f0 += kRows) {
    const int count = static_cast<int>(std::min<int64_t>(kRows, pb.F - f0));
    alignas(64) Vec s[kRows][NV];
    alignas(64) float ds[kRows][FP];
    float dO[kRows][D], q[kRows][D];
    for (int i = 0; i < kRows; ++i) {
      const bool real = i < count;
      for (int e = 0; e < D; ++e) {
        dO[i][e] = real ? dout[(f0 + i) * out_row + e] : 0.0f;
        q[i][e] = pb.query(f0 + i)[e];
      }
    }
    pb.scores(f0, padding.pad, s);
    for (int i = 0; i < kRows; ++i) {
      const float row_lse = lse[i < count ? f0 + i : f0];
      // P = exp(S - lse); dP[g] = <dO_i, V_g>; dS = P * (dP - <P_i, dP_i>) * scale
      Vec dp[NV], dot = Vec{};
      for (int n = 0; n < NV; ++n) {
        s[i][n] = exp_nonpositive(s[i][n] - row_lse) * padding.mask[n];
        dp[n] = Vec{};
      }
      for (int e = 0; e < D; ++e)
        for (int n = 0; n < NV; ++n) dp[n] += dO[i][e] * vt[e][n];
      for (int n = 0; n < NV; ++n) dot += s[i][n] * dp[n];
      const float delta = lane_sum(dot);
      for (int n = 0; n < NV; ++n) {
        const Vec dsn = s[i][n] * (dp[n] - delta) * scale;
        std::memcpy(&ds[i][n * kLanes], &dsn, sizeof(Vec));
        // dV_g += P[i, g] dO_i; dK_g += dS[i, g] q_i (transposed: vectors over g)
        for (int e = 0; e < D; ++e) {
          dvt[e][n] += s[i][n] * dO[i][e];
          dkt[e][n] += dsn * q[i][e];
        }
      }
    }
    // dQ_i = sum_g dS[i, g] K_g
    float dq[kRows][D] = {};
    for (int g = 0; g < FP; ++g)
      for (int i = 0; i < kRows; ++i)
        for (int e = 0; e < D; ++e) dq[i][e] += ds[i][g] * k[g][e];
    for (int i = 0; i < count; ++i) std::copy(dq[i], dq[i] + D, grad + (f0 + i) * pb.row);
  }
  for (int64_t g = 0; g < pb.F; ++g)
    for (int e = 0; e < D; ++e) {
      grad[g * pb.row + pb.H * D + e] = dkt[e][g / kLanes][g % kLanes];
      grad[g * pb.row + 2 * pb.H * D + e] = dvt[e][g / kLanes][g % kLanes];
    }
}

struct Shape {
  int64_t batch, fields, heads, dim;
};

Shape shape_of(const at::Tensor& qkv) {
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "qkv must be [B, F, 3, H, d], got ", qkv.sizes());
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && qkv.is_contiguous() && qkv.device().is_cpu(),
              "qkv must be a contiguous float32 CPU tensor");
  const Shape s{qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)};
  TORCH_CHECK(s.fields >= 1 && s.fields <= 64, "fields must be in [1, 64], got ", s.fields);
  TORCH_CHECK(s.dim == 4 || s.dim == 8 || s.dim == 16 || s.dim == 32, "head width must be 4, 8, 16 or 32, got ",
              s.dim);
  return s;
}

// Calls body(problem, padding, task, out_offset, in_offset) for every (sample, head) in
// parallel: task = b * H + h; out_offset locates the problem in [B, F, H, d] tensors,
// in_offset in [B, F, 3, H, d] ones.
template <int D, int FP, typename Body>
void for_each_problem(const Shape& s, const float* in, float scale, const Body& body) {
  const int64_t F = s.fields, H = s.heads;
  const Padding<FP> padding(F);
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H;
      const int64_t in_offset = b * F * 3 * H * D + h * D;
      const Problem<D, FP> pb(in + in_offset, F, H, scale);
      body(pb, padding, task, b * F * H * D + h * D, in_offset);
    }
  });
}

template <int D, int FP>
void forward_all(const Shape& s, const float* in, float* out, float* lse, float scale) {
  for_each_problem<D, FP>(s, in, scale, [&](const Problem<D, FP>& pb, const Padding<FP>& padding, int64_t task,
                                            int64_t out_offset, int64_t) {
    forward_problem(pb, padding, out + out_offset, lse + task * s.fields);
  });
}

template <int D, int FP>
void backward_all(const Shape& s, const float* in, const float* lse, const float* dout, float* grad, float scale) {
  for_each_problem<D, FP>(s, in, scale, [&](const Problem<D, FP>& pb, const Padding<FP>& padding, int64_t task,
                                            int64_t out_offset, int64_t in_offset) {
    backward_problem(pb, padding, dout + out_offset, lse + task * s.fields, scale, grad + in_offset);
  });
}

// Calls Fn::run<D, FP> with the head width and padded field count as compile-time constants.
template <int D, typename Fn, typename... Args>
void dispatch_fields(int64_t fields, Args&&... args) {
  if (fields <= 16) return Fn::template run<D, 16>(args...);
  if (fields <= 32) return Fn::template run<D, 32>(args...);
  if (fields <= 48) return Fn::template run<D, 48>(args...);
  return Fn::template run<D, 64>(args...);
}

template <typename Fn, typename... Args>
void dispatch(const Shape& s, Args&&... args) {
  switch (s.dim) {
    case 4: return dispatch_fields<4, Fn>(s.fields, s, args...);
    case 8: return dispatch_fields<8, Fn>(s.fields, s, args...);
    case 16: return dispatch_fields<16, Fn>(s.fields, s, args...);
    default: return dispatch_fields<32, Fn>(s.fields, s, args...);
  }
}

struct Forward {
  template <int D, int FP, typename... Args>
  static void run(Args&&... args) { forward_all<D, FP>(args...); }
};

struct Backward {
  template <int D, int FP, typename... Args>
  static void run(Args&&... args) { backward_all<D, FP>(args...); }
};

}  // namespace

// Returns (out [B, F, H, d], lse [B, H, F]): lse, each score row's log-sum-exp, for backward.
std::vector<at::Tensor> forward(const at::Tensor& qkv, double scale) {
  const Shape s = shape_of(qkv);
  auto out = at::empty({s.batch, s.fields, s.heads, s.dim}, qkv.options());
  auto lse = at::empty({s.batch, s.heads, s.fields}, qkv.options());
  dispatch<Forward>(s, qkv.data_ptr<float>(), out.data_ptr<float>(), lse.data_ptr<float>(),
                    static_cast<float>(scale));
  return {out, lse};
}

// Gradient of qkv [B, F, 3, H, d] from grad_out [B, F, H, d] and forward's lse.
at::Tensor backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& lse, double scale) {
  const Shape s = shape_of(qkv);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({s.batch, s.fields, s.heads, s.dim}),
              "grad_out must be [B, F, H, d], got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == at::kFloat && grad_out.device().is_cpu(),
              "grad_out must be a float32 CPU tensor");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.batch, s.heads, s.fields}) && lse.is_contiguous() &&
                  lse.scalar_type() == at::kFloat,
              "lse must be forward's contiguous float32 [B, H, F], got ", lse.sizes());
  const auto go = grad_out.contiguous();
  auto grad = at::empty_like(qkv);
  dispatch<Backward>(s, qkv.data_ptr<float>(), lse.data_ptr<float>(), go.data_ptr<float>(), grad.data_ptr<float>(),
                     static_cast<float>(scale));
  return grad;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "field self-attention forward: (out [B,F,H,d], lse [B,H,F])");
  m.def("backward", &backward, "field self-attention backward: grad of qkv [B,F,3,H,d]");
}
