// Runs rows on N worker threads and hands the results back in input order.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace hsmrewrap::pfx_import {

// Reads items with `next` (on the calling thread) while at most 64 * jobs are not yet handed
// to `done` (a wide window: one slow item, e.g. a PFX with 600000 PBKDF2 iterations, must
// not leave the other workers idle behind it while its result holds up the output order),
// runs `work` on them on `jobs` threads, and calls `done` on the calling thread for each
// item in input order. When *stop becomes true no new item is read or started; items
// already started finish and are handed to `done`; the others are dropped.
// Returns the number of items handed to `done`.
template <typename Item, typename Result>
int64_t RunInOrder(int jobs, const std::function<bool(Item*)>& next,
                   const std::function<Result(const Item&)>& work,
                   const std::function<void(Item&, Result&)>& done,
                   const std::atomic<bool>* stop) {
  jobs = std::max(jobs, 1);
  const uint64_t window = static_cast<uint64_t>(jobs) * 64;
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::pair<uint64_t, Item>> queue;                // guarded by mu
  std::map<uint64_t, std::pair<Item, Result>> ready;          // guarded by mu
  bool closed = false;                                        // guarded by mu
  auto stopped = [&] { return stop != nullptr && stop->load(); };
  std::vector<std::thread> workers;
  for (int i = 0; i < jobs; ++i) {
    workers.emplace_back([&] {
      for (;;) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return !queue.empty() || closed; });
        if (queue.empty()) return;
        if (stopped()) return;  // the calling thread drops what is queued
        auto [seq, item] = std::move(queue.front());
        queue.pop_front();
        lock.unlock();
        Result r = work(item);
        lock.lock();
        ready.emplace(seq, std::make_pair(std::move(item), std::move(r)));
        cv.notify_all();
      }
    });
  }
  uint64_t read = 0, emitted = 0;
  bool input_done = false, stop_seen = false;
  for (;;) {
    if (!stop_seen && stopped()) {
      // Workers check the flag under the lock before taking an item, so after this no
      // queued item starts: they are the newest, and are dropped.
      std::lock_guard<std::mutex> lock(mu);
      read -= queue.size();
      queue.clear();
      input_done = stop_seen = true;
      cv.notify_all();
    }
    if (!input_done && read - emitted < window) {
      Item item;
      if (next(&item)) {
        std::lock_guard<std::mutex> lock(mu);
        queue.emplace_back(read++, std::move(item));
        cv.notify_all();
        continue;
      }
      input_done = true;
    }
    if (input_done && emitted == read) break;
    std::unique_lock<std::mutex> lock(mu);
    auto it = ready.find(emitted);
    if (it == ready.end()) {
      cv.wait_for(lock, std::chrono::milliseconds(100));
      continue;
    }
    auto entry = std::move(it->second);
    ready.erase(it);
    lock.unlock();
    done(entry.first, entry.second);
    ++emitted;
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    closed = true;
    cv.notify_all();
  }
  for (auto& t : workers) t.join();
  return static_cast<int64_t>(emitted);
}

}  // namespace hsmrewrap::pfx_import
