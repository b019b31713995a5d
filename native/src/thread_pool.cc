#include "thread_pool.h"

#include <map>

namespace edgepet {

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::drain() const {
  for (int64_t i = next_.fetch_add(1); i < total_; i = next_.fetch_add(1)) fn_(ctx_, i);
}

void ThreadPool::work_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    drain();
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t total, void (*fn)(void*, int64_t), void* ctx) const {
  if (workers_.empty() || total <= 1) {
    for (int64_t i = 0; i < total; ++i) fn(ctx, i);
    return;
  }
  std::lock_guard<std::mutex> region(run_mutex_);
  {
    std::lock_guard<std::mutex> guard(mutex_);
    fn_ = fn;
    ctx_ = ctx;
    total_ = total;
    next_.store(0);
    busy_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  drain();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_ == 0; });
}

ThreadPool& ThreadPool::shared(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  static std::mutex lock;
  static std::map<int, std::unique_ptr<ThreadPool>> pools;
  std::lock_guard<std::mutex> guard(lock);
  auto& pool = pools[threads];
  if (!pool) pool = std::make_unique<ThreadPool>(threads);
  return *pool;
}

}  // namespace edgepet
