// 2-D float32 convolutions (NHWC input/output, HWIO kernel) on oneDNN, as XLA FFI custom calls.
//
// Three handlers, the forward convolution and its two gradients:
//   mmjax_conv_fwd(x[N,H,W,C], w[KH,KW,C,O]) -> y[N,OH,OW,O]
//   mmjax_conv_bwd_data(dy[N,OH,OW,O], w) -> dx[N,H,W,C]        (shape from the result)
//   mmjax_conv_bwd_weights(x, dy) -> dw[KH,KW,C,O]               (shape from the result)
// Leading dimensions before the last four (vmap's) index independent convolutions: the result's
// leading dimensions, which each operand has too, with size 1 where it is shared (broadcast).
// Attributes: strides (sh, sw), padding (pt, pb, pl, pr), kernel dilation (dh, dw; 1 = none).
// Built at first use by mmjax/models/onednn.py; primitives are cached per shape and attribute set.
//
// And one matmul, a dense layer's weight gradient (oneDNN's sgemm, which reads A transposed in
// place; XLA:CPU's dot of this form ran at about half its plain matmul's speed):
//   mmjax_matmul_tn(a[..., M, K], b[..., M, N]) -> c[..., K, N] = a^T b
// Leading dimensions (vmap's) index independent products and must be the same in all three.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Every primitive and reorder takes its scratchpad from the caller (a fresh buffer per call), the
// mode oneDNN documents as thread-safe. Under the default (library) mode, primitives share one
// scratchpad and may not run on another thread than the one that created them; XLA:CPU runs
// independent convolutions on several of its threads at once, and a oneDNN kernel then waited
// forever at its spin barrier (seen in a sweep of 4 LeNet runs and in 2 of 2 tries of a program of
// 4 independent convs; 2-core VM, oneDNN 3.2, GNU OpenMP).
const dnnl::primitive_attr& Attr() {
  static const dnnl::primitive_attr* attr = [] {
    auto* a = new dnnl::primitive_attr();
    a->set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return a;
  }();
  return *attr;
}

// Logical shapes in oneDNN's order: src {N, C, H, W}, weights {O, C, KH, KW}, dst {N, O, OH, OW}.
struct Key {
  int kind;
  std::vector<int64_t> v;
  bool operator<(const Key& o) const { return std::tie(kind, v) < std::tie(o.kind, o.v); }
};

struct Geometry {
  memory::dims src, wei, dst, strides, dil, padl, padr;
};

struct Prim {
  dnnl::primitive prim;
  memory::desc src, wei, dst;          // descs the primitive uses (weights may be blocked)
  memory::desc user_wei;               // HWIO
  bool reorder_wei;                    // whether weights (or their gradient) need a reorder
  dnnl::reorder wei_reorder;           // user -> primitive (fwd, bwd_data) or primitive -> user
  memory::desc scratch, reorder_scratch;  // scratchpads the caller provides (user mode)
};

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<Prim>>& Cache() {
  static auto* cache = new std::map<Key, std::shared_ptr<Prim>>();
  return *cache;
}

dnnl::convolution_forward::primitive_desc ForwardPd(const Geometry& g) {
  memory::desc src(g.src, dt::f32, tag::nhwc), dst(g.dst, dt::f32, tag::nhwc);
  memory::desc wei(g.wei, dt::f32, tag::any);
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei,
      dst, g.strides, g.dil, g.padl, g.padr, Attr());
}

std::shared_ptr<Prim> Get(int kind, const Geometry& g, bool serial = false) {
  Key key{kind + (serial ? 3 : 0), {}};
  for (const auto* d : {&g.src, &g.wei, &g.dst, &g.strides, &g.dil, &g.padl, &g.padr})
    key.v.insert(key.v.end(), d->begin(), d->end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = Cache().find(key);
  if (it != Cache().end()) return it->second;
  // A serial primitive runs on one thread inside our own parallel loop over the batch: it is
  // created while this thread's OpenMP team size is 1, so oneDNN plans it for one thread.
  const int saved_threads = omp_get_max_threads();
  if (serial) omp_set_num_threads(1);
  struct Restore { bool on; int n; ~Restore() { if (on) omp_set_num_threads(n); } } restore{serial, saved_threads};
  auto p = std::make_shared<Prim>();
  p->user_wei = memory::desc(g.wei, dt::f32, tag::hwio);
  auto fwd = ForwardPd(g);
  if (kind == 0) {
    p->prim = dnnl::convolution_forward(fwd);
    p->src = fwd.src_desc(); p->wei = fwd.weights_desc(); p->dst = fwd.dst_desc();
    p->scratch = fwd.scratchpad_desc();
  } else if (kind == 1) {
    memory::desc dsrc(g.src, dt::f32, tag::nhwc), ddst(g.dst, dt::f32, tag::nhwc);
    memory::desc wei(g.wei, dt::f32, tag::any);
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, dsrc, wei, ddst, g.strides, g.dil, g.padl,
        g.padr, fwd, Attr());
    p->prim = dnnl::convolution_backward_data(pd);
    p->src = pd.diff_src_desc(); p->wei = pd.weights_desc(); p->dst = pd.diff_dst_desc();
    p->scratch = pd.scratchpad_desc();
  } else {
    memory::desc src(g.src, dt::f32, tag::nhwc), ddst(g.dst, dt::f32, tag::nhwc);
    memory::desc dwei(g.wei, dt::f32, tag::any);
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, src, dwei, ddst, g.strides, g.dil, g.padl,
        g.padr, fwd, Attr());
    p->prim = dnnl::convolution_backward_weights(pd);
    p->src = pd.src_desc(); p->wei = pd.diff_weights_desc(); p->dst = pd.diff_dst_desc();
    p->scratch = pd.scratchpad_desc();
  }
  p->reorder_wei = p->wei != p->user_wei;
  if (p->reorder_wei) {
    auto a = memory(kind == 2 ? p->wei : p->user_wei, Engine(), DNNL_MEMORY_NONE);
    auto b = memory(kind == 2 ? p->user_wei : p->wei, Engine(), DNNL_MEMORY_NONE);
    dnnl::reorder::primitive_desc rpd(a, b, Attr());
    p->wei_reorder = dnnl::reorder(rpd);
    p->reorder_scratch = rpd.scratchpad_desc();
  }
  Cache()[key] = p;
  return p;
}

Geometry MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                      ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                      int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  // The last four dimensions; leading ones (from vmap) are a batch of independent convolutions.
  const size_t a = x.size() - 4, b = w.size() - 4, c = y.size() - 4;
  Geometry g;
  g.src = {x[a], x[a + 3], x[a + 1], x[a + 2]};
  g.wei = {w[b + 3], w[b + 2], w[b], w[b + 1]};
  g.dst = {y[c], y[c + 3], y[c + 1], y[c + 2]};
  g.strides = {sh, sw};
  g.dil = {dh - 1, dw - 1};
  g.padl = {pt, pl};
  g.padr = {pb, pr};
  return g;
}

// The leading (vmap) dimensions of a call: those of the result (`out`), and each operand's, which
// equal out's or are 1 where the operand is shared (as vmap_method="expand_dims" leaves them).
struct Operand {
  float* data;
  std::vector<int64_t> lead;
};

std::vector<int64_t> Lead(ffi::Span<const int64_t> d) {
  return std::vector<int64_t>(d.begin(), d.begin() + (d.size() - 4));
}

// Index of the slice of `op` that batch element i (row-major over `out`) reads or writes.
int64_t SliceOf(const std::vector<int64_t>& op, const std::vector<int64_t>& out, int64_t i) {
  int64_t index = 0, stride = 1;
  for (size_t d = out.size(); d-- > 0;) {
    const int64_t c = i % out[d];
    i /= out[d];
    if (op[d] != 1) index += c * stride;
    stride *= op[d];
  }
  return index;
}

bool Broadcasts(const std::vector<int64_t>& op, const std::vector<int64_t>& out) {
  if (op.size() != out.size()) return false;
  for (size_t d = 0; d < op.size(); ++d) {
    if (op[d] != out[d] && op[d] != 1) return false;
  }
  return true;
}

int64_t Product(const memory::dims& d) {
  int64_t n = 1;
  for (auto v : d) n *= v;
  return n;
}

thread_local std::unique_ptr<dnnl::stream> tls_stream;
dnnl::stream& Stream() {
  if (!tls_stream) tls_stream = std::make_unique<dnnl::stream>(Engine());
  return *tls_stream;
}

// Convolution i of a batch: the slice of each operand it reads or writes. `wei_m`
// holds the primitive's weights when they need a reorder: from the user's layout before the call
// when `reorder_in` (forward and input gradient), back to it after (weight gradient).
void ExecuteOne(int kind, const Prim& p, dnnl::stream& s, const Geometry& g, int64_t i,
                const std::vector<int64_t>& out, const Operand& src, const Operand& wei,
                const Operand& dst, const memory& wei_m, bool reorder_in, const memory& scratch,
                const memory& reorder_scratch) {
  float* src_i = src.data + SliceOf(src.lead, out, i) * Product(g.src);
  float* wei_i = wei.data + SliceOf(wei.lead, out, i) * Product(g.wei);
  float* dst_i = dst.data + SliceOf(dst.lead, out, i) * Product(g.dst);
  memory src_m(p.src, Engine(), src_i), dst_m(p.dst, Engine(), dst_i);
  memory user_wei(p.user_wei, Engine(), wei_i);
  const memory& w = p.reorder_wei ? wei_m : user_wei;
  if (p.reorder_wei && reorder_in) {
    p.wei_reorder.execute(s, {{DNNL_ARG_FROM, user_wei}, {DNNL_ARG_TO, w},
                              {DNNL_ARG_SCRATCHPAD, reorder_scratch}});
  }
  if (kind == 0) {
    p.prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst_m},
                       {DNNL_ARG_SCRATCHPAD, scratch}});
  } else if (kind == 1) {
    p.prim.execute(s, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, w},
                       {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
  } else {
    p.prim.execute(s, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, w},
                       {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    if (p.reorder_wei) {
      p.wei_reorder.execute(s, {{DNNL_ARG_FROM, w}, {DNNL_ARG_TO, user_wei},
                                {DNNL_ARG_SCRATCHPAD, reorder_scratch}});
    }
  }
}

std::atomic<int> g_parallel_batch{1};
std::atomic<int64_t> g_parallel_calls{0};

// The batch's convolutions on `threads` OpenMP threads at once, each convolution on one thread.
// vmap's batches (MAML's tasks) are many small convolutions; oneDNN splits each over both cores
// with a barrier per call, where one convolution per core keeps both busy without one.
ffi::Error RunParallel(int kind, const Geometry& g, const std::vector<int64_t>& out, int64_t batch,
                       int threads, const Operand& src, const Operand& wei, const Operand& dst) {
  auto p = Get(kind, g, /*serial=*/true);
  g_parallel_calls.fetch_add(1);
  // Shared weights (forward and input gradient at one set of weights): reordered once, read by all.
  memory shared_wei;
  const bool shared = p->reorder_wei && kind != 2 && Product(wei.lead) == 1;
  if (shared) {
    shared_wei = memory(p->wei, Engine());
    memory user_wei(p->user_wei, Engine(), wei.data);
    memory reorder_scratch(p->reorder_scratch, Engine());
    auto& s = Stream();
    p->wei_reorder.execute(s, {{DNNL_ARG_FROM, user_wei}, {DNNL_ARG_TO, shared_wei},
                               {DNNL_ARG_SCRATCHPAD, reorder_scratch}});
    s.wait();
  }
  // No exception may leave the parallel region or skip its loop's barrier: each thread records
  // the first error, the remaining iterations are skipped, and it is returned after the region.
  std::atomic<int> failed{0};
  std::string message;
  std::mutex message_mutex;
  auto record = [&](const char* what) {
    std::lock_guard<std::mutex> lock(message_mutex);
    if (!failed.exchange(1)) message = what;
  };
#pragma omp parallel num_threads(threads)
  {
    std::unique_ptr<dnnl::stream> s;
    memory scratch, reorder_scratch, own_wei;
    try {
      s = std::make_unique<dnnl::stream>(Engine());
      scratch = memory(p->scratch, Engine());
      reorder_scratch = memory(p->reorder_scratch, Engine());
      if (p->reorder_wei && !shared) own_wei = memory(p->wei, Engine());
    } catch (const std::exception& e) {
      record(e.what());
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch; ++i) {
      if (failed.load()) continue;
      try {
        ExecuteOne(kind, *p, *s, g, i, out, src, wei, dst, shared ? shared_wei : own_wei,
                   /*reorder_in=*/!shared && kind != 2, scratch, reorder_scratch);
      } catch (const std::exception& e) {
        record(e.what());
      }
    }
    try {
      if (s) s->wait();
    } catch (const std::exception& e) {
      record(e.what());
    }
  }
  if (failed.load()) return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN: " + message);
  return ffi::Error::Success();
}

// Runs the batch of convolutions of one geometry that the result's leading dimensions `out`
// index. Calls may run at once on several of XLA's threads: each has its own stream and
// scratchpads.
ffi::Error Run(int kind, const Geometry& g, const std::vector<int64_t>& out, const Operand& src,
               const Operand& wei, const Operand& dst) {
  for (const Operand* op : {&src, &wei, &dst}) {
    if (!Broadcasts(op->lead, out)) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                        "mmjax oneDNN conv: an operand's leading (vmap) dimensions neither equal "
                        "the result's nor are 1");
    }
  }
  const int64_t batch = Product(out);
  try {
    // One conv per thread when the batch fills the threads; a smaller batch keeps oneDNN's own
    // threading of each conv, which uses every core.
    const int threads = omp_get_max_threads();
    if (g_parallel_batch.load() && threads > 1 && batch >= threads && !omp_in_parallel()) {
      return RunParallel(kind, g, out, batch, threads, src, wei, dst);
    }
    auto p = Get(kind, g);
    auto& s = Stream();
    memory wei_m;
    if (p->reorder_wei) wei_m = memory(p->wei, Engine());  // library-allocated blocked weights
    memory scratch(p->scratch, Engine());
    memory reorder_scratch(p->reorder_scratch, Engine());
    const bool shared_wei = Product(wei.lead) == 1;
    for (int64_t i = 0; i < batch; ++i) {
      ExecuteOne(kind, *p, s, g, i, out, src, wei, dst, wei_m,
                 /*reorder_in=*/kind != 2 && (i == 0 || !shared_wei), scratch, reorder_scratch);
    }
    s.wait();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                   ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                   int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  auto g = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr,
                        dh, dw);
  return Run(0, g, Lead(y->dimensions()), {x.typed_data(), Lead(x.dimensions())},
             {w.typed_data(), Lead(w.dimensions())}, {y->typed_data(), Lead(y->dimensions())});
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw, int64_t pt,
                       int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  auto g = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr,
                        dh, dw);
  return Run(1, g, Lead(dx->dimensions()), {dx->typed_data(), Lead(dx->dimensions())},
             {w.typed_data(), Lead(w.dimensions())}, {dy.typed_data(), Lead(dy.dimensions())});
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dw_out, int64_t sh, int64_t sw, int64_t pt,
                          int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw) {
  auto g = MakeGeometry(x.dimensions(), dw_out->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl,
                        pr, dh, dw);
  return Run(2, g, Lead(dw_out->dimensions()), {x.typed_data(), Lead(x.dimensions())},
             {dw_out->typed_data(), Lead(dw_out->dimensions())},
             {dy.typed_data(), Lead(dy.dimensions())});
}

ffi::Error MatmulTN(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                    ffi::ResultBuffer<ffi::F32> c) {
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  auto cd = c->dimensions();
  const size_t r = ad.size();
  if (r < 2 || bd.size() != r || cd.size() != r) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "mmjax_matmul_tn: operands of rank < 2 "
                      "or of different ranks");
  }
  const int64_t m = ad[r - 2], k = ad[r - 1], n = bd[r - 1];
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < r; ++i) {
    if (ad[i] != bd[i] || ad[i] != cd[i]) {
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, "mmjax_matmul_tn: leading dimensions "
                        "differ");
    }
    batch *= ad[i];
  }
  if (bd[r - 2] != m || cd[r - 2] != k || cd[r - 1] != n) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "mmjax_matmul_tn: a [M, K], b [M, N] and "
                      "c [K, N] do not match");
  }
  float* out = c->typed_data();
  if (k == 0 || n == 0) return ffi::Error::Success();
  for (int64_t i = 0; i < batch; ++i) {
    float* ci = out + i * k * n;
    if (m == 0) {
      std::fill(ci, ci + k * n, 0.0f);
      continue;
    }
    dnnl_status_t status = dnnl_sgemm('T', 'N', k, n, m, 1.0f, a.typed_data() + i * m * k, k,
                                      b.typed_data() + i * m * n, n, 0.0f, ci, n);
    if (status != dnnl_success) {
      return ffi::Error(ffi::ErrorCode::kInternal,
                        "oneDNN: dnnl_sgemm failed with status " + std::to_string(status));
    }
  }
  return ffi::Error::Success();
}

}  // namespace

#define MMJAX_CONV_BINDING                                                     \
  ffi::Ffi::Bind()                                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                        \
      .Arg<ffi::Buffer<ffi::F32>>()                                                        \
      .Ret<ffi::Buffer<ffi::F32>>()                                                        \
      .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")     \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("dh").Attr<int64_t>("dw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxConvFwd, ConvFwd, MMJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxConvBwdData, ConvBwdData, MMJAX_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxConvBwdWeights, ConvBwdWeights, MMJAX_CONV_BINDING);

XLA_FFI_DEFINE_HANDLER_SYMBOL(MmjaxMatmulTN, MatmulTN,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// For A/B runs and tests: whether vmapped batches run one conv per thread (default 1), and how
// many calls have run that way.
extern "C" void MmjaxSetParallelBatch(int on) { g_parallel_batch = on; }
extern "C" int64_t MmjaxParallelBatchCalls() { return g_parallel_calls.load(); }
