// One emulated thread's cp.async copies, as both CPU emulators keep them (simt.cpp per fiber, the flash kernel
// test's per host thread): the copies of its open group, then its committed groups, oldest first. A copy lands at
// the wait that retires its group, not before, so a kernel that reads a tile it has not waited for reads stale data.
#pragma once
#include <cstring>
#include <deque>
#include <vector>

namespace ncp_emu {

class AsyncCopies {
 public:
  // src_bytes of src, then zeros up to `bytes` (cp.async's zero fill), into dst at the wait.
  void add(void* dst, const void* src, int src_bytes, int bytes) { open_.push_back({dst, src, src_bytes, bytes}); }
  void commit() {
    committed_.push_back(std::move(open_));
    open_.clear();
  }
  // Lands every committed group but the `pending` newest.
  void wait(int pending) {
    while (committed_.size() > size_t(pending < 0 ? 0 : pending)) {
      for (const Copy& c : committed_.front()) {
        if (c.src_bytes) std::memcpy(c.dst, c.src, size_t(c.src_bytes));
        std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, size_t(c.bytes - c.src_bytes));
      }
      committed_.pop_front();
    }
  }

 private:
  struct Copy {
    void* dst;
    const void* src;
    int src_bytes, bytes;
  };
  std::vector<Copy> open_;
  std::deque<std::vector<Copy>> committed_;
};

}  // namespace ncp_emu
