// A small persistent thread pool: edgepet's parallel-for outside ONNX Runtime.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/gemm.h"

namespace edgepet {

class ThreadPool final : public Parallel {
 public:
  // threads counts the calling thread, which works too.
  explicit ThreadPool(int threads);
  ~ThreadPool() override;
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void run(int64_t total, void (*fn)(void*, int64_t), void* ctx) const override;
  int threads() const { return static_cast<int>(workers_.size()) + 1; }

  // A shared pool per thread count (0: one per hardware thread).
  static ThreadPool& shared(int threads);

 private:
  void work_loop();
  void drain() const;

  std::vector<std::thread> workers_;
  mutable std::mutex mutex_;
  mutable std::condition_variable wake_, done_;
  // Written under mutex_; atomic so that a thread can poll them before it sleeps.
  mutable std::atomic<uint64_t> generation_{0};
  mutable std::atomic<int> busy_{0};
  mutable std::mutex run_mutex_;  // one parallel region at a time
  std::atomic<bool> stop_{false};
  mutable void (*fn_)(void*, int64_t) = nullptr;
  mutable void* ctx_ = nullptr;
  mutable int64_t total_ = 0;
  mutable std::atomic<int64_t> next_{0};
};

}  // namespace edgepet
