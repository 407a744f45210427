// snowjax's CPU decode kernels, registered as XLA FFI targets (float32):
//
// snowjax_thin_matmul: y (M, N) = x (M, K) @ W for few rows M (a decode step's batch), W packed
// in column tiles. W (K, N) is stored as (N / 32, K, 32): tile t holds columns [32 t, 32 t + 32) of every row,
// so one tile is one contiguous run of K * 128 bytes. A tile's 32 columns of up to ROWS rows
// of y stay in registers while the tile streams through once; the tiles are shared out to
// the threads of XLA's intra-op pool. Each weight is read from memory once per call whatever
// M is, which is what a memory-bound decode step needs (XLA:CPU's library dots stream the
// weights at well under the machine's bandwidth for 2-16 rows).
//
// snowjax_decode_attention: one new token per row attends over its filled cache slots only
// (from the row's first real slot to the current one), where XLA's batched products and
// masked softmax go over every slot of the preallocated cache.
//
// Built by snowjax/kernels/__init__.py with the host's compiler (-O3 -march=native).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 32;
typedef float v16 __attribute__((vector_size(64)));

#ifdef __AVX512F__
constexpr int kRows = 8;  // 8 rows x 2 vectors = 16 of the 32 vector registers
#else
constexpr int kRows = 4;  // 16 vector registers (AVX2): 4 rows x 2 x (2 halves)
#endif

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

// Rows [r0, r0 + R) of y over tiles [t0, t1).
template <int R>
void rows_tiles(const float* x, const float* w, float* y, int64_t k, int64_t n, int64_t r0, int64_t t0,
                int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const float* wt = w + t * k * kTile;
    v16 acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = v16{};
      acc[r][1] = v16{};
    }
    for (int64_t i = 0; i < k; ++i) {
      const v16 w0 = load(wt + i * kTile);
      const v16 w1 = load(wt + i * kTile + 16);
      for (int r = 0; r < R; ++r) {
        const float xv = x[(r0 + r) * k + i];
        acc[r][0] += xv * w0;
        acc[r][1] += xv * w1;
      }
    }
    for (int r = 0; r < R; ++r) {
      store(y + (r0 + r) * n + t * kTile, acc[r][0]);
      store(y + (r0 + r) * n + t * kTile + 16, acc[r][1]);
    }
  }
}

void tiles(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n, int64_t t0, int64_t t1) {
  for (int64_t r0 = 0; r0 < m; r0 += kRows) {
    switch (std::min<int64_t>(kRows, m - r0)) {
      case 1: rows_tiles<1>(x, w, y, k, n, r0, t0, t1); break;
      case 2: rows_tiles<2>(x, w, y, k, n, r0, t0, t1); break;
      case 3: rows_tiles<3>(x, w, y, k, n, r0, t0, t1); break;
      case 4: rows_tiles<4>(x, w, y, k, n, r0, t0, t1); break;
#ifdef __AVX512F__
      case 5: rows_tiles<5>(x, w, y, k, n, r0, t0, t1); break;
      case 6: rows_tiles<6>(x, w, y, k, n, r0, t0, t1); break;
      case 7: rows_tiles<7>(x, w, y, k, n, r0, t0, t1); break;
      case 8: rows_tiles<8>(x, w, y, k, n, r0, t0, t1); break;
#endif
    }
  }
}

// Work shared by the caller and the tasks it schedules: parts of [0, units), claimed one at a
// time. It lives on the heap, held by every task: a task that starts after the caller has
// finished (every part claimed) finds nothing to claim and touches no buffer.
struct Shared {
  std::atomic<int64_t> next{0};  // the next part to claim
  std::atomic<int64_t> done{0};  // parts finished
  int64_t parts = 0, units = 0;
  std::function<void(int64_t, int64_t)> body;  // runs units [u0, u1)
};

void work(Shared& s) {
  for (;;) {
    const int64_t part = s.next.fetch_add(1, std::memory_order_relaxed);
    if (part >= s.parts) return;
    s.body(s.units * part / s.parts, s.units * (part + 1) / s.parts);
    s.done.fetch_add(1, std::memory_order_release);
  }
}

// body(u0, u1) over [0, units) on the caller and XLA's intra-op pool, in a few parts per thread
// of at least min_units each. The caller works too and then waits only for parts other threads
// have claimed, so it never waits on a task the pool has not started (its threads may be busy).
void parallel_for(ffi::ThreadPool& pool, int64_t units, int64_t min_units, std::function<void(int64_t, int64_t)> body) {
  auto s = std::make_shared<Shared>();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  s->units = units;
  s->parts = std::max<int64_t>(1, std::min<int64_t>(4 * threads, units / std::max<int64_t>(1, min_units)));
  s->body = std::move(body);
  for (int64_t i = 1; i < std::min<int64_t>(threads, s->parts); ++i) {
    pool.Schedule([s] { work(*s); });
  }
  work(*s);
  while (s->done.load(std::memory_order_acquire) < s->parts) {
    std::this_thread::yield();
  }
}

ffi::Error ThinMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kTile || wd[1] != xd[1]) {
    return ffi::Error::InvalidArgument("snowjax_thin_matmul: x must be (M, K) and w (N/32, K, 32)");
  }
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t m = xd[0], k = xd[1], num_tiles = wd[0], n = num_tiles * kTile;
  parallel_for(pool, num_tiles, 4, [=](int64_t t0, int64_t t1) { tiles(xp, wp, yp, m, k, n, t0, t1); });
  return ffi::Error::Success();
}

// One (row, kv head): its G query heads over slots [lo, hi] of keys/values (S, D). Scores and
// softmax in float32; the output is divided by the softmax sum after the weighted sum.
void attend(const float* q, const float* k, const float* v, float* out, int64_t g, int64_t d, int64_t lo,
            int64_t hi, float scale, std::vector<float>& scores) {
  scores.resize(hi - lo + 1);
  for (int64_t h = 0; h < g; ++h) {
    const float* qh = q + h * d;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t s = lo; s <= hi; ++s) {
      const float* ks = k + s * d;
      v16 acc{};  // 16 partial sums (a float sum is not vectorised without them)
      int64_t i = 0;
      for (; i + 16 <= d; i += 16) acc += load(qh + i) * load(ks + i);
      float dot = 0.f;
      for (int lane = 0; lane < 16; ++lane) dot += acc[lane];
      for (; i < d; ++i) dot += qh[i] * ks[i];
      scores[s - lo] = dot * scale;
      top = std::max(top, scores[s - lo]);
    }
    float* oh = out + h * d;
    for (int64_t i = 0; i < d; ++i) oh[i] = 0.f;
    float sum = 0.f;
    for (int64_t s = lo; s <= hi; ++s) {
      const float p = std::exp(scores[s - lo] - top);
      sum += p;
      const float* vs = v + s * d;
      for (int64_t i = 0; i < d; ++i) oh[i] += p * vs[i];
    }
    const float inv = 1.f / sum;
    for (int64_t i = 0; i < d; ++i) oh[i] *= inv;
  }
}

ffi::Error DecodeAttentionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                               ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::S32> pads, ffi::Buffer<ffi::S32> index,
                               ffi::ResultBuffer<ffi::F32> out) {
  auto qd = q.dimensions();
  auto kd = k.dimensions();
  auto vd = v.dimensions();
  if (qd.size() != 3 || kd.size() != 4 || vd.size() != 4 || vd[0] != kd[0] || vd[1] != kd[1] || vd[2] != kd[2] ||
      vd[3] != kd[3] || kd[0] != qd[0] || kd[3] != qd[2] ||
      qd[1] % kd[1] != 0 || pads.element_count() != qd[0] || index.element_count() != 1) {
    return ffi::Error::InvalidArgument(
        "snowjax_decode_attention: q (B, H, D), k and v (B, K, S, D), pads (B,), index ()");
  }
  const int64_t b = qd[0], h = qd[1], d = qd[2], kv = kd[1], slots = kd[2], g = h / kv;
  const int64_t t = index.typed_data()[0];
  if (t < 0 || t >= slots) return ffi::Error::InvalidArgument("snowjax_decode_attention: index outside the cache");
  const float* qp = q.typed_data();
  const float* kp = k.typed_data();
  const float* vp = v.typed_data();
  const int32_t* pad = pads.typed_data();
  float* op = out->typed_data();
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  // One unit per (row, kv head); query head j of a row belongs to kv head j / g.
  parallel_for(pool, b * kv, 1, [=](int64_t u0, int64_t u1) {
    std::vector<float> scores;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t row = u / kv, head = u % kv;
      const int64_t lo = std::min<int64_t>(std::max<int64_t>(pad[row], 0), t);
      const int64_t off = (row * kv + head) * slots * d;
      attend(qp + (row * h + head * g) * d, kp + off, vp + off, op + (row * h + head * g) * d, g, d, lo, t, scale,
             scores);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SnowjaxThinMatmul, ThinMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SnowjaxDecodeAttention, DecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
