#include "common/data_roots.h"

#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace lora {
namespace {

namespace fs = std::filesystem;

// As the kernel's limit on links followed in one lookup (MAXSYMLINKS).
constexpr int kMaxLinks = 40;
// Bounds on the walk below a directory, so that a huge tree cannot stall an assignment.
constexpr int kMaxTreeEntries = 100000;
constexpr int kMaxTreeDepth = 32;

std::string Quoted(absl::string_view path) {
  return absl::StrCat("\"", absl::CHexEscape(path), "\"");
}

// The one answer for everything outside the roots. It depends on nothing but the path as the
// client wrote it, so it cannot tell whether the file exists.
absl::Status Outside(absl::string_view field, absl::string_view path) {
  return absl::PermissionDeniedError(
      absl::StrCat(field, ": ", Quoted(path),
                   " is not under the data roots (--data-root); symbolic links and \"..\" "
                   "count where they lead"));
}

std::string JoinParts(const std::vector<std::string>& parts) {
  return parts.empty() ? "/" : absl::StrCat("/", absl::StrJoin(parts, "/"));
}

void PushComponents(absl::string_view path, std::vector<std::string>* todo) {
  std::vector<std::string> parts = absl::StrSplit(path, '/', absl::SkipEmpty());
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) todo->push_back(std::move(*it));
}

bool Under(const std::vector<std::string>& roots, const std::string& path) {
  for (const std::string& root : roots) {
    if (root == "/" || path == root || absl::StartsWith(path, root + "/")) return true;
  }
  return false;
}

// Inside a root, or a directory on the way down to one ("/", "/srv" for the root "/srv/data").
// `roots` holds the roots as declared as well as resolved, so that a root reached through a
// link ("/data" -> "/srv/data") can be named by either.
bool Reachable(const std::vector<std::string>& roots, const std::string& path) {
  if (path == "/" || Under(roots, path)) return true;
  for (const std::string& root : roots) {
    if (absl::StartsWith(root, path + "/")) return true;
  }
  return false;
}

struct Resolution {
  // kOutside: the lookup left the roots (and the directories leading to them), or could not be
  // followed (a link loop, an unsearchable directory).
  enum Kind { kExists, kMissing, kOutside } kind;
  std::string path;  // kExists, kMissing: absolute, no links, no "." or ".."
};

// realpath(3), with two differences. It never looks at anything outside the roots and the
// directories leading to them: the moment a step leaves them the answer is kOutside, before any
// lstat, so that "/etc/x/../../srv/data/f" cannot tell whether /etc/x exists. And a missing tail
// inside the roots is kept lexically (kMissing) instead of failing.
Resolution Resolve(const std::string& path, const std::vector<std::string>& roots,
                   const std::vector<std::string>& lookup) {
  std::vector<std::string> todo;
  PushComponents(path, &todo);
  if (path.empty() || path[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof(cwd)) == nullptr) return {Resolution::kOutside, ""};
    PushComponents(cwd, &todo);
  }
  std::vector<std::string> parts;
  bool missing = false;
  int links = 0;
  while (!todo.empty()) {
    std::string c = std::move(todo.back());
    todo.pop_back();
    if (c == ".") continue;
    if (c == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(std::move(c));
    const std::string here = JoinParts(parts);
    if (!Reachable(lookup, here)) return {Resolution::kOutside, ""};
    if (missing) continue;
    struct stat st;
    if (::lstat(here.c_str(), &st) != 0) {
      if (errno == ENOENT || errno == ENOTDIR) {
        missing = true;
        continue;
      }
      return {Resolution::kOutside, ""};
    }
    if (S_ISLNK(st.st_mode)) {
      if (++links > kMaxLinks) return {Resolution::kOutside, ""};
      std::string target(PATH_MAX, '\0');
      const ssize_t n = ::readlink(here.c_str(), target.data(), target.size());
      if (n < 0 || n >= static_cast<ssize_t>(target.size())) return {Resolution::kOutside, ""};
      target.resize(static_cast<size_t>(n));
      parts.pop_back();
      if (!target.empty() && target[0] == '/') parts.clear();
      PushComponents(target, &todo);
    } else if (!S_ISDIR(st.st_mode) && !todo.empty()) {
      // The kernel stops here (ENOTDIR), whatever follows; so does the lookup.
      missing = true;
    }
  }
  const std::string resolved = JoinParts(parts);
  // Only ".." can end above every root, e.g. "/srv/data/..".
  if (!Under(roots, resolved)) return {Resolution::kOutside, ""};
  return {missing ? Resolution::kMissing : Resolution::kExists, resolved};
}

struct TreeWalk {
  absl::string_view field;
  absl::string_view top;  // the path as the client wrote it, for messages
  int entries = 0;
  std::set<std::string> visited;  // resolved directories, so that link cycles end
};

}  // namespace

bool IsFileRef(absl::string_view path) {
  if (!absl::ConsumePrefix(&path, kFileRefPrefix) || path.empty() || path.size() > 64) return false;
  for (char c : path) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

std::vector<SpecPath> SpecPaths(const lora::v1::JobSpec& spec) {
  std::vector<SpecPath> out;
  auto add = [&](const char* field, const std::string& path) {
    if (!path.empty()) out.push_back({field, path});
  };
  add("model.path", spec.model().path());
  if (spec.model().tokenizer() != "byte") add("model.tokenizer", spec.model().tokenizer());
  add("lora.adapter", spec.lora().adapter());
  add("dataset.path", spec.dataset().path());
  add("dataset.validation_path", spec.dataset().validation_path());
  return out;
}

void SetSpecPath(lora::v1::JobSpec* spec, const std::string& field, const std::string& path) {
  if (field == "model.path") spec->mutable_model()->set_path(path);
  if (field == "model.tokenizer") spec->mutable_model()->set_tokenizer(path);
  if (field == "lora.adapter") spec->mutable_lora()->set_adapter(path);
  if (field == "dataset.path") spec->mutable_dataset()->set_path(path);
  if (field == "dataset.validation_path") spec->mutable_dataset()->set_validation_path(path);
}

absl::StatusOr<DataRoots> DataRoots::Create(const std::vector<std::string>& roots) {
  std::vector<std::string> resolved, lookup;
  for (const std::string& root : roots) {
    char buf[PATH_MAX];
    struct stat st;
    if (root.empty() || ::realpath(root.c_str(), buf) == nullptr || ::stat(buf, &st) != 0 ||
        !S_ISDIR(st.st_mode)) {
      return absl::InvalidArgumentError(
          absl::StrCat("data root ", Quoted(root), " is not an existing directory"));
    }
    resolved.emplace_back(buf);
    std::error_code ec;
    std::string declared = fs::absolute(root, ec).lexically_normal().string();
    while (declared.size() > 1 && declared.back() == '/') declared.pop_back();
    lookup.push_back(std::move(declared));
  }
  lookup.insert(lookup.end(), resolved.begin(), resolved.end());
  return DataRoots(std::move(resolved), std::move(lookup));
}

namespace {

// Every link below `dir` (resolved, inside a root) must lead inside a root; directories that
// links lead to are walked as well.
absl::Status CheckTree(const std::vector<std::string>& roots,
                       const std::vector<std::string>& lookup, const std::string& dir,
                       const std::string& rel, int depth, TreeWalk* walk) {
  if (!walk->visited.insert(dir).second) return absl::OkStatus();
  if (depth > kMaxTreeDepth) {
    return absl::FailedPreconditionError(
        absl::StrCat(walk->field, ": ", Quoted(walk->top), " nests deeper than ", kMaxTreeDepth,
                     " directories; too deep to check against the data roots"));
  }
  std::error_code ec;
  // An unreadable directory is skipped: lora-train, with the same rights, cannot read it either.
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (++walk->entries > kMaxTreeEntries) {
      return absl::FailedPreconditionError(
          absl::StrCat(walk->field, ": ", Quoted(walk->top), " holds more than ", kMaxTreeEntries,
                       " entries; too many to check against the data roots"));
    }
    const std::string name = it->path().filename().string();
    const std::string entry_rel = rel.empty() ? name : absl::StrCat(rel, "/", name);
    std::error_code type_ec;
    const fs::file_status st = it->symlink_status(type_ec);
    if (type_ec) continue;
    if (fs::is_symlink(st)) {
      Resolution r = Resolve(it->path().string(), roots, lookup);
      if (r.kind == Resolution::kOutside) {
        return absl::PermissionDeniedError(
            absl::StrCat(walk->field, ": ", Quoted(walk->top), " holds ", Quoted(entry_rel),
                         ", a link that leads outside the data roots (--data-root)"));
      }
      struct stat target;
      if (r.kind == Resolution::kExists && ::stat(r.path.c_str(), &target) == 0 &&
          S_ISDIR(target.st_mode)) {
        absl::Status s = CheckTree(roots, lookup, r.path, entry_rel, depth + 1, walk);
        if (!s.ok()) return s;
      }
    } else if (fs::is_directory(st)) {
      absl::Status s = CheckTree(roots, lookup, it->path().string(), entry_rel, depth + 1, walk);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DataRoots::CheckReadable(absl::string_view field, const std::string& path) const {
  if (!restricted()) return absl::OkStatus();
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty path"));
  const Resolution r = Resolve(path, roots_, lookup_);
  if (r.kind == Resolution::kOutside) return Outside(field, path);
  if (r.kind == Resolution::kMissing) {
    return absl::NotFoundError(absl::StrCat(field, ": ", Quoted(path),
                                            ": no such file or directory under the data roots"));
  }
  struct stat st;
  if (::stat(r.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    TreeWalk walk{field, path};
    return CheckTree(roots_, lookup_, r.path, "", 0, &walk);
  }
  return absl::OkStatus();
}

absl::Status DataRoots::CheckSpec(const lora::v1::JobSpec& spec) const {
  if (!restricted()) return absl::OkStatus();
  absl::Status first;
  std::vector<std::string> problems;
  for (const SpecPath& p : SpecPaths(spec)) {
    if (IsFileRef(p.path)) continue;
    absl::Status s = CheckReadable(p.field, p.path);
    if (s.ok()) continue;
    if (first.ok()) first = s;
    problems.emplace_back(s.message());
  }
  if (first.ok()) return first;
  return absl::Status(first.code(), absl::StrJoin(problems, "; "));
}

std::vector<FieldViolation> SpecPathViolations(const lora::v1::JobSpec& spec,
                                               const std::vector<std::string>& declared_roots) {
  std::vector<FieldViolation> out;
  if (declared_roots.empty()) return out;
  std::vector<std::string> roots;
  for (const std::string& root : declared_roots) {
    std::string r = fs::path(root).lexically_normal().string();
    while (r.size() > 1 && r.back() == '/') r.pop_back();
    roots.push_back(r);
  }
  const std::string listed = absl::StrJoin(roots, ", ");
  for (const SpecPath& p : SpecPaths(spec)) {
    if (IsFileRef(p.path)) continue;
    const std::vector<absl::string_view> parts = absl::StrSplit(p.path, '/');
    if (std::find(parts.begin(), parts.end(), "..") != parts.end()) {
      out.push_back({p.field, "must not contain a \"..\" component"});
      continue;
    }
    // A relative path would be resolved against a worker's working directory, which lorad
    // cannot see; loractl sends absolute paths.
    if (p.path[0] != '/') {
      out.push_back(
          {p.field, absl::StrCat("must be an absolute path under a data root (", listed, ")")});
      continue;
    }
    std::string normal = fs::path(p.path).lexically_normal().string();
    while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
    bool under = false;
    for (const std::string& r : roots) {
      if (r == "/" || normal == r || absl::StartsWith(normal, r + "/")) under = true;
    }
    if (!under) out.push_back({p.field, absl::StrCat("is not under a data root (", listed, ")")});
  }
  return out;
}

absl::Status CheckSpecPaths(const lora::v1::JobSpec& spec,
                            const std::vector<std::string>& declared_roots) {
  std::vector<FieldViolation> violations = SpecPathViolations(spec, declared_roots);
  if (violations.empty()) return absl::OkStatus();
  std::vector<std::string> parts;
  for (const FieldViolation& v : violations)
    parts.push_back(absl::StrCat(v.field, ": ", v.description));
  return WithBadRequest(absl::InvalidArgumentError(absl::StrJoin(parts, "; ")), violations);
}

}  // namespace lora
