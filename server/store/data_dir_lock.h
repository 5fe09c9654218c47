// One lorad per data directory: an exclusive lock on <dir>/lorad.lock for the life of the
// process. A second lorad on the same directory refuses to start, naming the holder's pid,
// instead of running the same jobs twice (split brain). The lock is flock(2): the kernel drops
// it when the holder dies, however it dies, so a kill -9 never leaves a stale lock behind.
//
//   LORA_ASSIGN_OR_RETURN(std::unique_ptr<DataDirLock> lock, DataDirLock::Acquire(data_dir));
//   ... serve; the lock is released when `lock` is destroyed or the process exits.
//
// Not across machines: flock on a network filesystem may not be exclusive. Two replicas on
// shared storage need the database lease (issue 15), not this.
#ifndef LORA_SERVER_STORE_DATA_DIR_LOCK_H_
#define LORA_SERVER_STORE_DATA_DIR_LOCK_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lora::server {

class DataDirLock {
 public:
  // FAILED_PRECONDITION naming the holder's pid when another process holds it.
  static absl::StatusOr<std::unique_ptr<DataDirLock>> Acquire(const std::string& dir);
  ~DataDirLock();
  DataDirLock(const DataDirLock&) = delete;
  DataDirLock& operator=(const DataDirLock&) = delete;

 private:
  explicit DataDirLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_STORE_DATA_DIR_LOCK_H_
