// SqliteJobStore's records of uploaded files and the blobs each tenant holds (schema in
// job_store.cc).
#include <sqlite3.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "server/store/sqlite_job_store.h"
#include "server/store/sqlite_util.h"

namespace lora::server {

using namespace store_internal;  // NOLINT: the store's own helpers
using lora::v1::File;

absl::Status SqliteJobStore::InsertFile(const File& file) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  Statement s(
      db_, "INSERT OR IGNORE INTO files (id, tenant, create_time_us, proto) VALUES (?, ?, ?, ?)");
  if (!s.ok()) return SqlError(db_, "prepare file insert");
  s.Bind(1, file.id())
      .Bind(2, file.tenant())
      .Bind(3, ToMicros(file.create_time()))
      .BindBlob(4, file.SerializeAsString());
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert file");
  if (sqlite3_changes(db_) == 0) return absl::OkStatus();  // the same file exists
  for (const auto& entry : file.entries()) {
    Statement ref(db_,
                  "INSERT OR IGNORE INTO file_blobs (file_id, tenant, sha256) VALUES (?, ?, ?)");
    if (!ref.ok()) return SqlError(db_, "prepare file blob insert");
    ref.Bind(1, file.id()).Bind(2, file.tenant()).Bind(3, entry.sha256());
    if (ref.Step() != SQLITE_DONE) return SqlError(db_, "insert file blob");
  }
  return tx.Commit();
}

absl::StatusOr<File> SqliteJobStore::GetFile(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT proto FROM files WHERE id = ?");
  s.Bind(1, id);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("files/", id, " not found"));
  if (rc != SQLITE_ROW) return SqlError(db_, "get file");
  return Parse<File>(s.Blob(0), "file");
}

absl::StatusOr<std::vector<File>> SqliteJobStore::ListFiles(const ListFilesQuery& q) {
  std::string sql = "SELECT proto FROM files WHERE 1";
  if (q.tenant) absl::StrAppend(&sql, " AND tenant = ?");
  AppendKeysetPage(&sql, q.before.has_value(), /*ascending=*/false);
  absl::MutexLock lock(&mu_);
  Statement s(db_, sql.c_str());
  if (!s.ok()) return SqlError(db_, "prepare list files");
  int i = 1;
  if (q.tenant) s.Bind(i++, *q.tenant);
  BindKeysetPage(s, i, q.before, q.limit);
  return ReadRecords<File>(db_, s, "file", "list files");
}

absl::StatusOr<std::vector<TenantBlob>> SqliteJobStore::DeleteFile(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  File file;
  {
    Statement s(db_, "SELECT proto FROM files WHERE id = ?");
    s.Bind(1, id);
    const int rc = s.Step();
    if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("files/", id, " not found"));
    if (rc != SQLITE_ROW) return SqlError(db_, "get file");
    auto parsed = Parse<File>(s.Blob(0), "file");
    if (!parsed.ok()) return parsed.status();
    file = std::move(*parsed);
  }
  for (const char* sql :
       {"DELETE FROM files WHERE id = ?", "DELETE FROM file_blobs WHERE file_id = ?"}) {
    Statement s(db_, sql);
    s.Bind(1, id);
    if (s.Step() != SQLITE_DONE) return SqlError(db_, "delete file");
  }
  std::vector<TenantBlob> released;
  for (const auto& entry : file.entries()) {
    Statement named(db_, "SELECT 1 FROM file_blobs WHERE tenant = ? AND sha256 = ? LIMIT 1");
    named.Bind(1, file.tenant()).Bind(2, entry.sha256());
    const int rc = named.Step();
    if (rc == SQLITE_ROW) continue;
    if (rc != SQLITE_DONE) return SqlError(db_, "find file blob");
    Statement drop(db_, "DELETE FROM tenant_blobs WHERE tenant = ? AND sha256 = ?");
    drop.Bind(1, file.tenant()).Bind(2, entry.sha256());
    if (drop.Step() != SQLITE_DONE) return SqlError(db_, "delete tenant blob");
    if (sqlite3_changes(db_) > 0) released.push_back({file.tenant(), entry.sha256(), entry.size()});
  }
  LORA_RETURN_IF_ERROR(tx.Commit());
  return released;
}

absl::Status SqliteJobStore::PutTenantBlob(const TenantBlob& blob, int64_t now_us) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Statement s(db_,
              "INSERT OR IGNORE INTO tenant_blobs (tenant, sha256, size, create_time_us) "
              "VALUES (?, ?, ?, ?)");
  if (!s.ok()) return SqlError(db_, "prepare tenant blob insert");
  s.Bind(1, blob.tenant).Bind(2, blob.sha256).Bind(3, blob.size).Bind(4, now_us);
  if (s.Step() != SQLITE_DONE) return SqlError(db_, "insert tenant blob");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> SqliteJobStore::FindTenantBlob(const std::string& tenant,
                                                                      const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT size FROM tenant_blobs WHERE tenant = ? AND sha256 = ?");
  s.Bind(1, tenant).Bind(2, sha256);
  const int rc = s.Step();
  if (rc == SQLITE_DONE) return std::optional<int64_t>();
  if (rc != SQLITE_ROW) return SqlError(db_, "find tenant blob");
  return std::optional<int64_t>(s.Int(0));
}

absl::StatusOr<int64_t> SqliteJobStore::TenantBlobBytes(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT COALESCE(SUM(size), 0) FROM tenant_blobs WHERE tenant = ?");
  s.Bind(1, tenant);
  if (s.Step() != SQLITE_ROW) return SqlError(db_, "sum tenant blobs");
  return s.Int(0);
}

absl::StatusOr<bool> SqliteJobStore::BlobHeld(const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  Statement s(db_, "SELECT 1 FROM tenant_blobs WHERE sha256 = ? LIMIT 1");
  s.Bind(1, sha256);
  const int rc = s.Step();
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "find blob holder");
  return rc == SQLITE_ROW;
}

absl::StatusOr<std::vector<TenantBlob>> SqliteJobStore::RemoveUnnamedTenantBlobs(
    int64_t before_us) {
  absl::MutexLock lock(&mu_);
  if (!write_fault_.ok()) return write_fault_;
  Transaction tx(db_);
  if (!tx.ok()) return SqlError(db_, "begin");
  std::vector<TenantBlob> out;
  {
    Statement s(db_,
                "SELECT tenant, sha256, size FROM tenant_blobs tb WHERE create_time_us < ? AND "
                "NOT EXISTS (SELECT 1 FROM file_blobs fb WHERE fb.tenant = tb.tenant AND "
                "fb.sha256 = tb.sha256)");
    s.Bind(1, before_us);
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) out.push_back({s.Text(0), s.Text(1), s.Int(2)});
    if (rc != SQLITE_DONE) return SqlError(db_, "find unnamed tenant blobs");
  }
  for (const TenantBlob& b : out) {
    Statement drop(db_, "DELETE FROM tenant_blobs WHERE tenant = ? AND sha256 = ?");
    drop.Bind(1, b.tenant).Bind(2, b.sha256);
    if (drop.Step() != SQLITE_DONE) return SqlError(db_, "delete tenant blob");
  }
  LORA_RETURN_IF_ERROR(tx.Commit());
  return out;
}

}  // namespace lora::server
