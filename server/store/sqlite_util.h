// SQLite helpers shared by the store's files (internal to server/store/).
#ifndef LORA_SERVER_STORE_SQLITE_UTIL_H_
#define LORA_SERVER_STORE_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace lora::server::store_internal {

inline absl::Status SqlError(sqlite3* db, const std::string& what) {
  const int code = sqlite3_errcode(db);
  std::string message = absl::StrCat("sqlite: ", what, ": ", sqlite3_errmsg(db));
  if (code == SQLITE_FULL) return absl::ResourceExhaustedError(message);
  if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return absl::DataLossError(message);
  return absl::InternalError(message);
}

// Statements of the hot write path, prepared once per connection and reused: preparing costs
// about as much as executing a small insert. Used under the lock that guards the connection;
// destroyed before the connection is closed.
class StatementCache {
 public:
  explicit StatementCache(sqlite3* db) : db_(db) {}
  ~StatementCache() {
    for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
  }
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;
  sqlite3* db() const { return db_; }
  // The statement for `sql` (a string literal: cached by its address), reset and unbound;
  // nullptr if it does not prepare.
  sqlite3_stmt* Get(const char* sql) {
    auto it = cache_.find(sql);
    if (it != cache_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr) != SQLITE_OK)
      return nullptr;
    cache_.emplace(sql, stmt);
    return stmt;
  }

 private:
  sqlite3* db_;
  std::map<const char*, sqlite3_stmt*> cache_;
};

// A prepared statement, finalized on destruction; or one borrowed from a StatementCache, reset
// and unbound on destruction.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    ok_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) == SQLITE_OK;
  }
  Statement(StatementCache& cache, const char* sql) : db_(cache.db()), borrowed_(true) {
    stmt_ = cache.Get(sql);
    ok_ = stmt_ != nullptr;
  }
  ~Statement() {
    if (!borrowed_) {
      sqlite3_finalize(stmt_);
    } else if (stmt_ != nullptr) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    }
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  bool ok() const { return ok_; }
  Statement& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Statement& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindNull(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  int Step() { return sqlite3_step(stmt_); }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : "";
  }
  std::string Blob(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    return p ? std::string(static_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : "";
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  bool ok_ = false;
  bool borrowed_ = false;
};

template <typename Message>
absl::StatusOr<Message> Parse(const std::string& blob, const char* what) {
  Message m;
  if (!m.ParseFromString(blob))
    return absl::DataLossError(absl::StrCat("store: corrupt ", what, " record"));
  return m;
}

// Column 0 of every row `s` yields, parsed as `Message` records named `what`; `query` names
// the statement in SQL errors.
template <typename Message>
absl::StatusOr<std::vector<Message>> ReadRecords(sqlite3* db, Statement& s, const char* what,
                                                 const char* query) {
  std::vector<Message> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    auto m = Parse<Message>(s.Blob(0), what);
    if (!m.ok()) return m.status();
    out.push_back(std::move(*m));
  }
  if (rc != SQLITE_DONE) return SqlError(db, query);
  return out;
}

// Rolls back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool ok() const { return ok_; }
  // SQLite already rolled the transaction back by itself (after SQLITE_FULL, IOERR, ...).
  void Abandon() { done_ = true; }
  absl::Status Commit() {
    done_ = true;
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      absl::Status error = SqlError(db_, "commit");
      // After SQLITE_FULL / IOERR / BUSY the transaction may still be open: end it, or the next
      // statement would run inside it and the caller's view of what is stored would be wrong.
      if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
      return error;
    }
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool ok_ = false;
  bool done_ = false;
};

// Keyset paging over (create_time_us, id), the order every list of the store uses: appends the
// cursor condition (when there is one) and the ORDER BY ... LIMIT ?, then binds them from `*i`.
inline void AppendKeysetPage(std::string* sql, bool has_cursor, bool ascending) {
  if (has_cursor) {
    absl::StrAppend(sql, ascending
                             ? " AND (create_time_us > ? OR (create_time_us = ? AND id > ?))"
                             : " AND (create_time_us < ? OR (create_time_us = ? AND id < ?))");
  }
  absl::StrAppend(sql, ascending ? " ORDER BY create_time_us ASC, id ASC LIMIT ?"
                                 : " ORDER BY create_time_us DESC, id DESC LIMIT ?");
}
inline void BindKeysetPage(Statement& s, int i,
                           const std::optional<std::pair<int64_t, std::string>>& cursor,
                           int limit) {
  if (cursor) {
    s.Bind(i++, cursor->first);
    s.Bind(i++, cursor->first);
    s.Bind(i++, cursor->second);
  }
  s.Bind(i, limit);
}

}  // namespace lora::server::store_internal

#endif  // LORA_SERVER_STORE_SQLITE_UTIL_H_
