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
// fields rounded up to FP, a multiple of 16 up to 64; query rows go kRows at a time. Every
// loop then has a fixed trip count, the compiler unrolls and vectorizes it, and a block of
// score rows stays in registers. Padded fields get probability 0; padded query rows repeat
// the last row and are discarded (forward) or carry a zero output gradient (backward).
// exp is a polynomial accurate to a few float ulps.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kLanes = 16;  // fields per block: FP is a multiple of it
constexpr int kRows = 4;    // query rows per block

// exp(x) in place for x <= 0: 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p a degree-6 Taylor
// polynomial (relative error < 2e-7). Branch-free and call-free, so that it vectorizes.
template <int N>
inline void exp_nonpositive(float* __restrict__ x) {
  for (int g = 0; g < N; ++g) {
    const float y = std::clamp(x[g], -87.0f, 0.0f);  // exp(-87) ~ 1.6e-38: still a normal float
    const float k = std::floor(y * 1.44269504088896341f + 0.5f);
    const float r = y - k * 0.693145751953125f - k * 1.428606765330187e-06f;  // ln2 in two parts
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k as a float's bits
    float two_k;
    std::memcpy(&two_k, &bits, sizeof(two_k));
    x[g] = p * two_k;
  }
}

// Where a query row block reads its inputs and writes its outputs.
struct Rows {
  const float* q[kRows];  // query rows (the last real row repeated past F)
  int count;              // real rows in the block
};

template <int D, int FP>
struct Problem {
  // One (sample, head): fields at base + f * row (q), + H * D (k), + 2 * H * D (v).
  const float* __restrict__ base;
  int64_t F, H, row;
  float scale;
  alignas(64) float kt[D][FP];  // K transposed, scaled; padded fields 0
  alignas(64) float mask[FP];   // 1 for real fields, 0 for padding
  alignas(64) float pad[FP];    // 0 for real fields, -inf-like for padding (leaves the maximum alone)

  Problem(const float* b, int64_t fields, int64_t heads, float sc)
      : base(b), F(fields), H(heads), row(3 * heads * D), scale(sc) {
    for (int e = 0; e < D; ++e) std::fill(kt[e], kt[e] + FP, 0.0f);
    for (int64_t g = 0; g < F; ++g)
      for (int e = 0; e < D; ++e) kt[e][g] = key(g)[e] * scale;
    for (int g = 0; g < FP; ++g) {
      mask[g] = g < F ? 1.0f : 0.0f;
      pad[g] = g < F ? 0.0f : -1e30f;
    }
  }

  const float* query(int64_t f) const { return base + f * row; }
  const float* key(int64_t g) const { return base + g * row + H * D; }
  const float* value(int64_t g) const { return base + g * row + 2 * H * D; }

  Rows rows(int64_t f0) const {
    Rows r;
    r.count = static_cast<int>(std::min<int64_t>(kRows, F - f0));
    for (int i = 0; i < kRows; ++i) r.q[i] = query(std::min<int64_t>(f0 + i, F - 1));
    return r;
  }

  // s[i][g] = <q_i, k_g> * scale for the block's rows.
  void scores(const Rows& r, float (&s)[kRows][FP]) const {
    for (int i = 0; i < kRows; ++i) std::fill(s[i], s[i] + FP, 0.0f);
    for (int e = 0; e < D; ++e)
      for (int i = 0; i < kRows; ++i) {
        const float qe = r.q[i][e];
        for (int g = 0; g < FP; ++g) s[i][g] += qe * kt[e][g];
      }
  }

  // s -> softmax probabilities in place, given each row's log-sum-exp.
  void probabilities(float (&s)[kRows][FP], const float (&lse)[kRows]) const {
    for (int i = 0; i < kRows; ++i) {
      for (int g = 0; g < FP; ++g) s[i][g] -= lse[i];
      exp_nonpositive<FP>(s[i]);
      for (int g = 0; g < FP; ++g) s[i][g] *= mask[g];
    }
  }

  // s -> softmax probabilities in place; each row's log-sum-exp into lse.
  void softmax(float (&s)[kRows][FP], float (&lse)[kRows]) const {
    for (int i = 0; i < kRows; ++i) {
      float top[kLanes];
      std::copy(s[i], s[i] + kLanes, top);  // field 0 is always real
      for (int g = 0; g < FP; ++g) top[g % kLanes] = std::max(top[g % kLanes], s[i][g] + pad[g]);
      const float m = *std::max_element(top, top + kLanes);
      for (int g = 0; g < FP; ++g) s[i][g] -= m;
      exp_nonpositive<FP>(s[i]);
      float total = 0.0f;
      for (int g = 0; g < FP; ++g) total += s[i][g] * mask[g];
      const float inv = 1.0f / total;
      for (int g = 0; g < FP; ++g) s[i][g] *= mask[g] * inv;
      lse[i] = m + std::log(total);
    }
  }
};

template <int D, int FP>
void forward_problem(Problem<D, FP>& pb, float* __restrict__ out, float* __restrict__ lse) {
  const int64_t out_row = pb.H * D;  // stride between fields in out
  for (int64_t f0 = 0; f0 < pb.F; f0 += kRows) {
    const Rows r = pb.rows(f0);
    alignas(64) float s[kRows][FP];
    float row_lse[kRows];
    pb.scores(r, s);
    pb.softmax(s, row_lse);
    float acc[kRows][D] = {};  // out rows: sum_g P[i, g] V[g]
    for (int64_t g = 0; g < pb.F; ++g) {
      const float* __restrict__ v = pb.value(g);
      for (int i = 0; i < kRows; ++i)
        for (int e = 0; e < D; ++e) acc[i][e] += s[i][g] * v[e];
    }
    for (int i = 0; i < r.count; ++i) {
      std::copy(acc[i], acc[i] + D, out + (f0 + i) * out_row);
      lse[f0 + i] = row_lse[i];
    }
  }
}

template <int D, int FP>
void backward_problem(Problem<D, FP>& pb, const float* __restrict__ dout, const float* __restrict__ lse,
                      float* __restrict__ grad) {
  const int64_t out_row = pb.H * D;
  alignas(64) float vt[D][FP] = {};   // V transposed
  alignas(64) float dkt[D][FP] = {};  // dK, dV transposed: sums over query rows
  alignas(64) float dvt[D][FP] = {};
  for (int64_t g = 0; g < pb.F; ++g)
    for (int e = 0; e < D; ++e) vt[e][g] = pb.value(g)[e];
  for (int64_t f0 = 0; f0 < pb.F; f0 += kRows) {
    const Rows r = pb.rows(f0);
    alignas(64) float p[kRows][FP], ds[kRows][FP];
    float row_lse[kRows], dO[kRows][D];
    for (int i = 0; i < kRows; ++i) {
      const bool real = i < r.count;
      row_lse[i] = lse[real ? f0 + i : f0];
      for (int e = 0; e < D; ++e) dO[i][e] = real ? dout[(f0 + i) * out_row + e] : 0.0f;
    }
    pb.scores(r, p);
    pb.probabilities(p, row_lse);
    // dP[i, g] = <dO_i, V_g>; dS = P * (dP - <P_i, dP_i>) * scale
    for (int i = 0; i < kRows; ++i) {
      std::fill(ds[i], ds[i] + FP, 0.0f);
      for (int e = 0; e < D; ++e)
        for (int g = 0; g < FP; ++g) ds[i][g] += dO[i][e] * vt[e][g];
      float dot = 0.0f;
      for (int g = 0; g < FP; ++g) dot += p[i][g] * ds[i][g];
      for (int g = 0; g < FP; ++g) ds[i][g] = p[i][g] * (ds[i][g] - dot) * pb.scale;
    }
    // dV_g += sum_i P[i, g] dO_i; dK_g += sum_i dS[i, g] q_i (transposed: vectors over g)
    for (int e = 0; e < D; ++e)
      for (int i = 0; i < kRows; ++i) {
        const float de = dO[i][e], qe = r.q[i][e];
        for (int g = 0; g < FP; ++g) {
          dvt[e][g] += p[i][g] * de;
          dkt[e][g] += ds[i][g] * qe;
        }
      }
    // dQ_i = sum_g dS[i, g] K_g
    float dq[kRows][D] = {};
    for (int64_t g = 0; g < pb.F; ++g) {
      const float* __restrict__ k = pb.key(g);
      for (int i = 0; i < kRows; ++i)
        for (int e = 0; e < D; ++e) dq[i][e] += ds[i][g] * k[e];
    }
    for (int i = 0; i < r.count; ++i) std::copy(dq[i], dq[i] + D, grad + (f0 + i) * pb.row);
  }
  for (int64_t g = 0; g < pb.F; ++g)
    for (int e = 0; e < D; ++e) {
      grad[g * pb.row + pb.H * D + e] = dkt[e][g];
      grad[g * pb.row + 2 * pb.H * D + e] = dvt[e][g];
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

template <int D, int FP>
void forward_all(const Shape& s, const float* in, float* out, float* lse, float scale) {
  const int64_t F = s.fields, H = s.heads;
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H;
      Problem<D, FP> pb(in + b * F * 3 * H * D + h * D, F, H, scale);
      forward_problem(pb, out + b * F * H * D + h * D, lse + task * F);
    }
  });
}

template <int D, int FP>
void backward_all(const Shape& s, const float* in, const float* lse, const float* dout, float* grad, float scale) {
  const int64_t F = s.fields, H = s.heads;
  at::parallel_for(0, s.batch * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / H, h = task % H;
      Problem<D, FP> pb(in + b * F * 3 * H * D + h * D, F, H, scale);
      backward_problem(pb, dout + b * F * H * D + h * D, lse + task * F, grad + b * F * 3 * H * D + h * D);
    }
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
              "grad_out must be [B, F, H, d]");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({s.batch, s.heads, s.fields}) && lse.is_contiguous(),
              "lse must be the contiguous [B, H, F] of forward");
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
