// A small thread-safe Prometheus metrics registry with the text exposition format (0.0.4).
//
//   MetricsRegistry registry;
//   LORA_ASSIGN_OR_RETURN(Counter* rpcs, registry.AddCounter("lorad_rpcs_total",
//                                                           "RPCs handled.", {"method", "code"}));
//   rpcs->WithLabels({"GetJob", "OK"})->Increment();
//   LORA_ASSIGN_OR_RETURN(Histogram* latency, registry.AddHistogram(
//       "lorad_rpc_duration_seconds", "RPC latency.", {"method"}, DefaultLatencyBuckets()));
//   latency->WithLabels({"GetJob"})->Observe(0.012);
//   LORA_RETURN_IF_ERROR(registry.AddCallbackGauge("lorad_workers", "Connected workers.",
//                                                  [&] { return pool.size(); }));
//   std::string text = registry.Render();  // what GET /metrics serves
//
// Families and children live as long as the registry and never move, so callers resolve a
// child once and keep the pointer; updates on a child are lock-free atomics. Counter names
// must end in `_total`, other names must not (the convention `promtool check metrics` lints).
#ifndef LORA_SERVER_METRICS_METRICS_H_
#define LORA_SERVER_METRICS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace lora {

// The Prometheus client default buckets, in seconds: 5 ms to 10 s.
std::vector<double> DefaultLatencyBuckets();

// Formats a sample value the way the exposition format spells it: NaN, +Inf, -Inf, integers
// without exponent, anything else in the shortest form that parses back to the same double.
std::string FormatMetricValue(double value);

namespace metrics_internal {

// What every family knows how to do at scrape time.
class Family {
 public:
  Family(std::string name, std::string help) : name_(std::move(name)), help_(std::move(help)) {}
  virtual ~Family() = default;
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  const std::string& name() const { return name_; }
  // Appends `# HELP`, `# TYPE` and the samples; nothing when the family has no child yet.
  virtual void Render(std::string* out) const = 0;

 protected:
  std::string name_;
  std::string help_;
};

// A family whose children are keyed by label values, created on first use.
template <typename ChildT>
class LabeledFamily : public Family {
 public:
  using Child = ChildT;

  // The child for these label values (in label-name order); always the same pointer for the
  // same values. A wrong number of values is a programming error that must not take the
  // process down: it gets a detached child that is never exported.
  ChildT* WithLabels(const std::vector<std::string>& values);

  const std::vector<std::string>& label_names() const { return label_names_; }

 protected:
  LabeledFamily(std::string name, std::string help, std::vector<std::string> label_names);
  virtual std::unique_ptr<ChildT> NewChild() const = 0;
  // Children sorted by label values, snapshotted so that rendering holds no lock.
  std::vector<std::pair<const std::vector<std::string>*, const ChildT*>> Snapshot() const;
  // Appends the label set `{a="x",b="y"}` (or nothing), with `extra` (already escaped) last.
  void AppendLabels(const std::vector<std::string>& values, const std::string& extra,
                    std::string* out) const;

 private:
  const std::vector<std::string> label_names_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<ChildT>> children_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ChildT> detached_ ABSL_GUARDED_BY(mu_);
};

}  // namespace metrics_internal

// A monotonically increasing value.
class CounterChild {
 public:
  // Negative and NaN increments are ignored: a counter never goes down.
  void Increment(double v = 1);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// A value that goes up and down.
class GaugeChild {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Increment(double v = 1);
  void Decrement(double v = 1) { Increment(-v); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets, plus their sum.
class HistogramChild {
 public:
  explicit HistogramChild(const std::vector<double>* bounds);
  // NaN observations are ignored: they would poison `_sum` forever.
  void Observe(double v);

  struct Snapshot {
    std::vector<uint64_t> cumulative;  // one per bound, then +Inf (== count)
    double sum = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double>* bounds_;                // finite upper bounds, owned by the family
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_->size() + 1, not cumulative
  std::atomic<double> sum_{0};
};

class Counter : public metrics_internal::LabeledFamily<CounterChild> {
 public:
  Counter(std::string name, std::string help, std::vector<std::string> label_names)
      : LabeledFamily(std::move(name), std::move(help), std::move(label_names)) {}
  void Render(std::string* out) const override;

 private:
  std::unique_ptr<CounterChild> NewChild() const override;
};

class Gauge : public metrics_internal::LabeledFamily<GaugeChild> {
 public:
  Gauge(std::string name, std::string help, std::vector<std::string> label_names)
      : LabeledFamily(std::move(name), std::move(help), std::move(label_names)) {}
  void Render(std::string* out) const override;

 private:
  std::unique_ptr<GaugeChild> NewChild() const override;
};

class Histogram : public metrics_internal::LabeledFamily<HistogramChild> {
 public:
  // `bounds`: strictly increasing and finite (validated by the registry).
  Histogram(std::string name, std::string help, std::vector<std::string> label_names,
            std::vector<double> bounds);
  void Render(std::string* out) const override;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  std::unique_ptr<HistogramChild> NewChild() const override;
  const std::vector<double> bounds_;
  std::vector<std::string> le_labels_;  // `le="..."` for each bound, then +Inf
};

class MetricsRegistry {
 public:
  MetricsRegistry() = default;
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Each returns InvalidArgument for a bad metric or label name, and AlreadyExists when the
  // name (or a series name it produces, such as a histogram's `_count`) is taken. A family
  // without labels exports its single child (at 0) from the start.
  absl::StatusOr<Counter*> AddCounter(const std::string& name, const std::string& help,
                                      const std::vector<std::string>& label_names);
  absl::StatusOr<Gauge*> AddGauge(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& label_names);
  // `bounds`: finite upper bounds, strictly increasing; a trailing +Inf is accepted and
  // implied anyway. The label name `le` is reserved.
  absl::StatusOr<Histogram*> AddHistogram(const std::string& name, const std::string& help,
                                          const std::vector<std::string>& label_names,
                                          std::vector<double> bounds);
  // A gauge whose value is `fn()` at scrape time. `fn` runs on the scraping thread with no
  // registry lock held, possibly on several threads at once, so it must be thread-safe.
  absl::Status AddCallbackGauge(const std::string& name, const std::string& help,
                                std::function<double()> fn);
  // The same for a counter kept elsewhere (process_cpu_seconds_total): `fn` must never
  // decrease.
  absl::Status AddCallbackCounter(const std::string& name, const std::string& help,
                                  std::function<double()> fn);

  // The whole registry in the text exposition format: families sorted by name, children by
  // label values. Increments are never blocked; registrations only while the family list
  // is copied.
  std::string Render() const;

 private:
  // Validates `name` and `label_names`, reserves every series name the family produces.
  absl::Status Reserve(const std::string& name, const std::vector<std::string>& label_names,
                       const std::vector<std::string>& suffixes, bool is_counter)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<metrics_internal::Family>> families_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> series_owner_ ABSL_GUARDED_BY(mu_);  // series -> family
};

}  // namespace lora

#endif  // LORA_SERVER_METRICS_METRICS_H_
