// y (M, N) = x (M, K) @ W for few rows M (a decode step's batch), W packed in column tiles.
//
// W (K, N) is stored as (N / 32, K, 32): tile t holds columns [32 t, 32 t + 32) of every row,
// so one tile is one contiguous run of K * 128 bytes. A tile's 32 columns of up to ROWS rows
// of y stay in registers while the tile streams through once; the tiles are shared out to
// the threads of XLA's intra-op pool. Each weight is read from memory once per call whatever
// M is, which is what a memory-bound decode step needs (XLA:CPU's library dots stream the
// weights at well under the machine's bandwidth for 2-16 rows).
//
// Built by snowjax/kernels/__init__.py with the host's compiler (-O3 -march=native) and
// registered as the XLA FFI target "snowjax_thin_matmul" (CPU, float32).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

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

// Work shared by the caller and the tasks it schedules: parts of the tiles, claimed one at a time.
// It lives on the heap, held by every task: a task that starts after the caller has finished
// (every part claimed) finds nothing to claim and touches no buffer.
struct Shared {
  std::atomic<int64_t> next{0};  // the next part to claim
  std::atomic<int64_t> done{0};  // parts finished
  int64_t parts = 0;
  const float* x = nullptr;
  const float* w = nullptr;
  float* y = nullptr;
  int64_t m = 0, k = 0, n = 0, num_tiles = 0;
};

void work(Shared& s) {
  for (;;) {
    const int64_t part = s.next.fetch_add(1, std::memory_order_relaxed);
    if (part >= s.parts) return;
    tiles(s.x, s.w, s.y, s.m, s.k, s.n, s.num_tiles * part / s.parts, s.num_tiles * (part + 1) / s.parts);
    s.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error ThinMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kTile || wd[1] != xd[1]) {
    return ffi::Error::InvalidArgument("snowjax_thin_matmul: x must be (M, K) and w (N/32, K, 32)");
  }
  auto s = std::make_shared<Shared>();
  s->x = x.typed_data();
  s->w = w.typed_data();
  s->y = y->typed_data();
  s->m = xd[0];
  s->k = xd[1];
  s->num_tiles = wd[0];
  s->n = s->num_tiles * kTile;
  // A few parts per thread (of at least 4 tiles each) balance the threads. The caller works too
  // and then waits only for parts other threads have claimed, so it never waits on a task that
  // the pool has not started (all of the pool's threads may be busy).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  s->parts = std::max<int64_t>(1, std::min<int64_t>(4 * threads, s->num_tiles / 4));
  for (int64_t i = 1; i < std::min<int64_t>(threads, s->parts); ++i) {
    pool.Schedule([s] { work(*s); });
  }
  work(*s);
  while (s->done.load(std::memory_order_acquire) < s->parts) {
    std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SnowjaxThinMatmul, ThinMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
