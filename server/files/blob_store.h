// The bytes of uploaded files, stored once per sha256, and the partial uploads on their way in.
//
//   BlobStore blobs(data_dir + "/blobs");
//   LORA_ASSIGN_OR_RETURN(int64_t committed, blobs.PartialSize(tenant, sha256));
//   LORA_ASSIGN_OR_RETURN(auto w, blobs.OpenPartial(tenant, sha256, size, /*offset=*/committed));
//   LORA_RETURN_IF_ERROR(w->Write(data, n));          // any number of times
//   LORA_ASSIGN_OR_RETURN(bool complete, w->Close());  // complete: every byte, verified
//   if (complete) LORA_RETURN_IF_ERROR(blobs.Publish(tenant, sha256, size));
//
// Layout: sha256/<first two hex>/<hex> for complete blobs (read-only, published by rename after
// fsync), partial/<tenant key>-<hex>-<size> for uploads in progress (one per tenant and blob: a
// tenant's partial upload never becomes another's). A partial file's size is what was
// committed: a crash may lose its unsynced tail, which the client re-sends after asking; bytes
// that came back wrong fail the sha256 check when the last byte arrives, and the upload starts
// over. Not thread-safe per (tenant, blob): the caller lets one writer at a time at each.
#ifndef LORA_SERVER_FILES_BLOB_STORE_H_
#define LORA_SERVER_FILES_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/sha256.h"

namespace lora::server {

// OK for 64 lowercase hex digits; INVALID_ARGUMENT naming `field` otherwise.
absl::Status ValidateSha256(const std::string& sha256, const std::string& field);

class BlobWriter {
 public:
  ~BlobWriter();
  BlobWriter(const BlobWriter&) = delete;
  BlobWriter& operator=(const BlobWriter&) = delete;
  // INVALID_ARGUMENT when the data would go past the declared size.
  absl::Status Write(const void* data, size_t size);
  int64_t committed() const { return offset_; }
  // Flushes what arrived. When it is the whole blob: syncs it, verifies the sha256 (DATA_LOSS,
  // and the partial upload removed, when it differs) and returns true; BlobStore::Publish then
  // makes it a blob.
  absl::StatusOr<bool> Close();

 private:
  friend class BlobStore;
  BlobWriter() = default;
  int fd_ = -1;
  std::string partial_path_, blob_path_, sha256_;
  int64_t size_ = 0;
  int64_t offset_ = 0;
  Sha256 hash_;
};

struct PartialUpload {
  std::string tenant_key;
  std::string sha256;
  int64_t declared_size = 0;  // the whole blob's
  int64_t size = 0;           // bytes so far
  int64_t mtime_us = 0;       // last write
  std::string path;
};

class BlobStore {
 public:
  explicit BlobStore(std::string root);
  const std::string& root() const { return root_; }

  bool Has(const std::string& sha256) const;
  std::string PathOf(const std::string& sha256) const;
  // Bytes of the tenant's partial upload of the blob (nullopt when none).
  std::optional<int64_t> PartialSize(const std::string& tenant, const std::string& sha256,
                                     int64_t size) const;
  // Continues (or starts, at offset 0) the tenant's upload. FAILED_PRECONDITION when `offset`
  // is not the committed size (the message says which it is). The bytes already there are
  // hashed again, so a resumed upload is verified end to end.
  absl::StatusOr<std::unique_ptr<BlobWriter>> OpenPartial(const std::string& tenant,
                                                          const std::string& sha256, int64_t size,
                                                          int64_t offset);
  // Turns the tenant's complete, verified partial upload into the stored blob (durably), or
  // drops it when the blob is stored already.
  absl::Status Publish(const std::string& tenant, const std::string& sha256, int64_t size);
  void RemovePartial(const std::string& tenant, const std::string& sha256, int64_t size);
  void RemoveBlob(const std::string& sha256);
  std::vector<PartialUpload> ListPartials() const;
  // Not reversible: the file-name key of a tenant (tenant names may hold any character).
  static std::string TenantKey(const std::string& tenant);

 private:
  std::string PartialPath(const std::string& tenant, const std::string& sha256, int64_t size) const;
  std::string root_;
};

}  // namespace lora::server

#endif  // LORA_SERVER_FILES_BLOB_STORE_H_
