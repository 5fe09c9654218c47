#include "server/metrics/metrics.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lora {
namespace {

bool IsNameChar(char c, bool first, bool allow_colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (allow_colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}

bool IsValidName(const std::string& name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, allow_colon)) return false;
  }
  return true;
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if there is none.
size_t Utf8SequenceLength(const std::string& s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](size_t k) { return k < s.size() && (byte(k) & 0xc0) == 0x80; };
  unsigned char b = byte(i);
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) return cont(i + 1) ? 2 : 0;
  if (b >= 0xe0 && b <= 0xef) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    unsigned char b1 = byte(i + 1);
    if (b == 0xe0 && b1 < 0xa0) return 0;  // overlong
    if (b == 0xed && b1 > 0x9f) return 0;  // surrogate
    return 3;
  }
  if (b >= 0xf0 && b <= 0xf4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    unsigned char b1 = byte(i + 1);
    if (b == 0xf0 && b1 < 0x90) return 0;  // overlong
    if (b == 0xf4 && b1 > 0x8f) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

// Prometheus rejects a whole scrape over one invalid UTF-8 label value, and label values
// often come from outside (job names, worker hosts), so bad bytes become U+FFFD.
std::string SanitizeUtf8(const std::string& s) {
  std::string out;
  bool changed = false;
  for (size_t i = 0; i < s.size();) {
    size_t n = Utf8SequenceLength(s, i);
    if (n == 0) {
      if (!changed) out.assign(s, 0, i);
      changed = true;
      out += "\xef\xbf\xbd";
      ++i;
      continue;
    }
    if (changed) out.append(s, i, n);
    i += n;
  }
  return changed ? out : s;
}

bool NeedsSanitizing(const std::vector<std::string>& values) {
  for (const std::string& v : values) {
    for (size_t i = 0; i < v.size();) {
      size_t n = Utf8SequenceLength(v, i);
      if (n == 0) return true;
      i += n;
    }
  }
  return false;
}

void AppendEscapedHelp(const std::string& help, std::string* out) {
  for (char c : help) {
    if (c == '\\') {
      *out += "\\\\";
    } else if (c == '\n') {
      *out += "\\n";
    } else {
      *out += c;
    }
  }
}

void AppendEscapedLabelValue(const std::string& value, std::string* out) {
  for (char c : value) {
    if (c == '\\') {
      *out += "\\\\";
    } else if (c == '"') {
      *out += "\\\"";
    } else if (c == '\n') {
      *out += "\\n";
    } else {
      *out += c;
    }
  }
}

void AppendHeader(const std::string& name, const std::string& help, const char* type,
                  std::string* out) {
  absl::StrAppend(out, "# HELP ", name, " ");
  AppendEscapedHelp(help, out);
  absl::StrAppend(out, "\n# TYPE ", name, " ", type, "\n");
}

// Compare-and-swap add: std::atomic<double>::fetch_add is C++20.
void AtomicAdd(std::atomic<double>* target, double v) {
  double current = target->load(std::memory_order_relaxed);
  while (!target->compare_exchange_weak(current, current + v, std::memory_order_relaxed)) {
  }
}

// A gauge or counter without labels whose value is read at scrape time.
class CallbackFamily : public metrics_internal::Family {
 public:
  CallbackFamily(std::string name, std::string help, const char* type, std::function<double()> fn)
      : Family(std::move(name), std::move(help)), type_(type), fn_(std::move(fn)) {}

  void Render(std::string* out) const override {
    double value = fn_();
    AppendHeader(name_, help_, type_, out);
    absl::StrAppend(out, name_, " ", FormatMetricValue(value), "\n");
  }

 private:
  const char* const type_;
  const std::function<double()> fn_;
};

}  // namespace

std::vector<double> DefaultLatencyBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  // Below 2^53 every integer is exact, so fixed notation with no fraction round-trips and
  // reads better than the shortest form ("1e+06").
  if (value == std::trunc(value) && std::fabs(value) < 9007199254740992.0) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", value == 0 ? 0.0 : value);  // no "-0"
    return buf;
  }
  char buf[64];
  auto result = std::to_chars(buf, buf + sizeof(buf), value);  // shortest round-trip form
  return std::string(buf, result.ptr);
}

// --- children

void CounterChild::Increment(double v) {
  if (!(v >= 0)) return;
  AtomicAdd(&value_, v);
}

void GaugeChild::Increment(double v) { AtomicAdd(&value_, v); }

HistogramChild::HistogramChild(const std::vector<double>* bounds)
    : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds->size() + 1]) {
  for (size_t i = 0; i <= bounds_->size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void HistogramChild::Observe(double v) {
  if (std::isnan(v)) return;
  // Buckets are few (tens), and a linear scan over a cache line beats a binary search there.
  size_t i = 0;
  while (i < bounds_->size() && v > (*bounds_)[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  AtomicAdd(&sum_, v);
}

HistogramChild::Snapshot HistogramChild::Read() const {
  Snapshot snapshot;
  snapshot.cumulative.resize(bounds_->size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative[i] = running;
  }
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

// --- families

namespace metrics_internal {

template <typename ChildT>
LabeledFamily<ChildT>::LabeledFamily(std::string name, std::string help,
                                     std::vector<std::string> label_names)
    : Family(std::move(name), std::move(help)), label_names_(std::move(label_names)) {}

template <typename ChildT>
ChildT* LabeledFamily<ChildT>::WithLabels(const std::vector<std::string>& values) {
  if (values.size() != label_names_.size()) {
    absl::MutexLock lock(&mu_);
    if (detached_ == nullptr) detached_ = NewChild();
    return detached_.get();
  }
  if (NeedsSanitizing(values)) {
    std::vector<std::string> clean;
    clean.reserve(values.size());
    for (const std::string& v : values) clean.push_back(SanitizeUtf8(v));
    return WithLabels(clean);
  }
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = children_.find(values);
    if (it != children_.end()) return it->second.get();
  }
  absl::MutexLock lock(&mu_);
  std::unique_ptr<ChildT>& child = children_[values];
  if (child == nullptr) child = NewChild();
  return child.get();
}

template <typename ChildT>
std::vector<std::pair<const std::vector<std::string>*, const ChildT*>>
LabeledFamily<ChildT>::Snapshot() const {
  std::vector<std::pair<const std::vector<std::string>*, const ChildT*>> out;
  absl::ReaderMutexLock lock(&mu_);
  out.reserve(children_.size());
  // Map nodes never move or die, so the pointers outlive the lock.
  for (const auto& [values, child] : children_) out.emplace_back(&values, child.get());
  return out;
}

template <typename ChildT>
void LabeledFamily<ChildT>::AppendLabels(const std::vector<std::string>& values,
                                         const std::string& extra, std::string* out) const {
  if (values.empty() && extra.empty()) return;
  *out += '{';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) *out += ',';
    absl::StrAppend(out, label_names_[i], "=\"");
    AppendEscapedLabelValue(values[i], out);
    *out += '"';
  }
  if (!extra.empty()) {
    if (!values.empty()) *out += ',';
    *out += extra;
  }
  *out += '}';
}

template class LabeledFamily<CounterChild>;
template class LabeledFamily<GaugeChild>;
template class LabeledFamily<HistogramChild>;

}  // namespace metrics_internal

std::unique_ptr<CounterChild> Counter::NewChild() const { return std::make_unique<CounterChild>(); }

void Counter::Render(std::string* out) const {
  auto children = Snapshot();
  if (children.empty()) return;
  AppendHeader(name_, help_, "counter", out);
  for (const auto& [values, child] : children) {
    *out += name_;
    AppendLabels(*values, "", out);
    absl::StrAppend(out, " ", FormatMetricValue(child->Value()), "\n");
  }
}

std::unique_ptr<GaugeChild> Gauge::NewChild() const { return std::make_unique<GaugeChild>(); }

void Gauge::Render(std::string* out) const {
  auto children = Snapshot();
  if (children.empty()) return;
  AppendHeader(name_, help_, "gauge", out);
  for (const auto& [values, child] : children) {
    *out += name_;
    AppendLabels(*values, "", out);
    absl::StrAppend(out, " ", FormatMetricValue(child->Value()), "\n");
  }
}

Histogram::Histogram(std::string name, std::string help, std::vector<std::string> label_names,
                     std::vector<double> bounds)
    : LabeledFamily(std::move(name), std::move(help), std::move(label_names)),
      bounds_(std::move(bounds)) {
  for (double b : bounds_) le_labels_.push_back(absl::StrCat("le=\"", FormatMetricValue(b), "\""));
  le_labels_.push_back("le=\"+Inf\"");
}

std::unique_ptr<HistogramChild> Histogram::NewChild() const {
  return std::make_unique<HistogramChild>(&bounds_);
}

void Histogram::Render(std::string* out) const {
  auto children = Snapshot();
  if (children.empty()) return;
  AppendHeader(name_, help_, "histogram", out);
  for (const auto& [values, child] : children) {
    HistogramChild::Snapshot snapshot = child->Read();
    for (size_t i = 0; i < le_labels_.size(); ++i) {
      absl::StrAppend(out, name_, "_bucket");
      AppendLabels(*values, le_labels_[i], out);
      absl::StrAppend(out, " ", snapshot.cumulative[i], "\n");
    }
    absl::StrAppend(out, name_, "_sum");
    AppendLabels(*values, "", out);
    absl::StrAppend(out, " ", FormatMetricValue(snapshot.sum), "\n");
    // From the buckets, not a separate counter, so `_count` always equals the +Inf bucket.
    absl::StrAppend(out, name_, "_count");
    AppendLabels(*values, "", out);
    absl::StrAppend(out, " ", snapshot.cumulative.back(), "\n");
  }
}

// --- registry

absl::Status MetricsRegistry::Reserve(const std::string& name,
                                      const std::vector<std::string>& label_names,
                                      const std::vector<std::string>& suffixes, bool is_counter) {
  if (!IsValidName(name, /*allow_colon=*/true)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid metric name \"", name, "\": must match [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  bool has_total = absl::EndsWith(name, "_total");
  if (is_counter && !has_total) {
    return absl::InvalidArgumentError(
        absl::StrCat("counter name \"", name, "\" must end in _total"));
  }
  if (!is_counter && has_total) {
    return absl::InvalidArgumentError(
        absl::StrCat("only counter names end in _total, not \"", name, "\""));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsValidName(label, /*allow_colon=*/false)) {
      return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": invalid label name \"",
                                                     label,
                                                     "\": must match [a-zA-Z_][a-zA-Z0-9_]*"));
    }
    if (absl::StartsWith(label, "__")) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", name, ": label name \"", label, "\" is reserved (__ prefix)"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == label) {
        return absl::InvalidArgumentError(
            absl::StrCat("metric ", name, ": duplicate label name \"", label, "\""));
      }
    }
  }
  for (const std::string& suffix : suffixes) {
    auto it = series_owner_.find(name + suffix);
    if (it != series_owner_.end()) {
      return absl::AlreadyExistsError(absl::StrCat("metric ", name, ": series ", name + suffix,
                                                   " already belongs to metric ", it->second));
    }
  }
  for (const std::string& suffix : suffixes) series_owner_[name + suffix] = name;
  return absl::OkStatus();
}

absl::StatusOr<Counter*> MetricsRegistry::AddCounter(const std::string& name,
                                                     const std::string& help,
                                                     const std::vector<std::string>& label_names) {
  absl::MutexLock lock(&mu_);
  absl::Status status = Reserve(name, label_names, {""}, /*is_counter=*/true);
  if (!status.ok()) return status;
  auto family = std::make_unique<Counter>(name, SanitizeUtf8(help), label_names);
  Counter* raw = family.get();
  if (label_names.empty()) raw->WithLabels({});
  families_[name] = std::move(family);
  return raw;
}

absl::StatusOr<Gauge*> MetricsRegistry::AddGauge(const std::string& name, const std::string& help,
                                                 const std::vector<std::string>& label_names) {
  absl::MutexLock lock(&mu_);
  absl::Status status = Reserve(name, label_names, {""}, /*is_counter=*/false);
  if (!status.ok()) return status;
  auto family = std::make_unique<Gauge>(name, SanitizeUtf8(help), label_names);
  Gauge* raw = family.get();
  if (label_names.empty()) raw->WithLabels({});
  families_[name] = std::move(family);
  return raw;
}

absl::StatusOr<Histogram*> MetricsRegistry::AddHistogram(
    const std::string& name, const std::string& help, const std::vector<std::string>& label_names,
    std::vector<double> bounds) {
  for (const std::string& label : label_names) {
    if (label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": label name \"le\" is reserved for buckets"));
    }
  }
  if (!bounds.empty() && bounds.back() == INFINITY) bounds.pop_back();
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", name, ": bucket bound ", i, " is not finite"));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "histogram ", name, ": bucket bounds must be strictly increasing (",
          FormatMetricValue(bounds[i - 1]), " then ", FormatMetricValue(bounds[i]), ")"));
    }
  }
  absl::MutexLock lock(&mu_);
  absl::Status status =
      Reserve(name, label_names, {"", "_bucket", "_sum", "_count"}, /*is_counter=*/false);
  if (!status.ok()) return status;
  auto family =
      std::make_unique<Histogram>(name, SanitizeUtf8(help), label_names, std::move(bounds));
  Histogram* raw = family.get();
  if (label_names.empty()) raw->WithLabels({});
  families_[name] = std::move(family);
  return raw;
}

absl::Status MetricsRegistry::AddCallbackGauge(const std::string& name, const std::string& help,
                                               std::function<double()> fn) {
  if (!fn) return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": empty callback"));
  absl::MutexLock lock(&mu_);
  absl::Status status = Reserve(name, {}, {""}, /*is_counter=*/false);
  if (!status.ok()) return status;
  families_[name] =
      std::make_unique<CallbackFamily>(name, SanitizeUtf8(help), "gauge", std::move(fn));
  return absl::OkStatus();
}

absl::Status MetricsRegistry::AddCallbackCounter(const std::string& name, const std::string& help,
                                                 std::function<double()> fn) {
  if (!fn) return absl::InvalidArgumentError(absl::StrCat("metric ", name, ": empty callback"));
  absl::MutexLock lock(&mu_);
  absl::Status status = Reserve(name, {}, {""}, /*is_counter=*/true);
  if (!status.ok()) return status;
  families_[name] =
      std::make_unique<CallbackFamily>(name, SanitizeUtf8(help), "counter", std::move(fn));
  return absl::OkStatus();
}

std::string MetricsRegistry::Render() const {
  std::vector<const metrics_internal::Family*> families;
  {
    absl::ReaderMutexLock lock(&mu_);
    families.reserve(families_.size());
    for (const auto& [name, family] : families_) families.push_back(family.get());
  }
  // Families are never removed, and no lock is held while rendering: callbacks may be slow
  // and must be free to register metrics themselves.
  std::string out;
  for (const metrics_internal::Family* family : families) family->Render(&out);
  return out;
}

}  // namespace lora
